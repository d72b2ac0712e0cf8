"""Tool wrappers whose programs cannot run here: command lines, and parsers on realistic output files.

Fixtures in tests/fixtures/tools/ are written to the documented formats (each says so at its top);
relion_postprocess's output there was captured from a real Relion 3.1.3 run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from airflow_provider_cryoem.io.errors import ImageFileError
from airflow_provider_cryoem.tools import (
    aretomo,
    cryolo,
    ctffind,
    motioncor2,
    relion_postprocess,
    relion_refine,
    topaz,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tools"
SESSION_DIR = "/data/visit 1; it's"


def flag_values(args: list[str], flag: str, count: int = 1) -> list[str]:
    index = args.index(flag)
    return args[index + 1: index + 1 + count]


# --- MotionCor2 ---------------------------------------------------------------------------------
def mc2_inputs(movie: str, **overrides) -> motioncor2.MotionCor2Inputs:
    return motioncor2.MotionCor2Inputs(movie_path=movie, output_path=f"{SESSION_DIR}/MotionCorr/mic.mrc",
                                       pixel_size_a=0.83, dose_per_frame_e_a2=1.2, **overrides)


def test_motioncor2_command_carries_session_settings_as_separate_arguments():
    spec = motioncor2.command(mc2_inputs(f"{SESSION_DIR}/movie.tiff", gain_reference_path=f"{SESSION_DIR}/gain.mrc",
                                         gain_rotation=1, gain_flip=2, patches_x=7, patches_y=5, gpu_ids=[0, 1]))
    args = spec.args
    assert spec.program == "MotionCor2" and spec.gpus == 2
    assert flag_values(args, "-InTiff") == [f"{SESSION_DIR}/movie.tiff"]
    assert flag_values(args, "-Gain") == [f"{SESSION_DIR}/gain.mrc"]
    assert flag_values(args, "-RotGain") == ["1"] and flag_values(args, "-FlipGain") == ["2"]
    assert flag_values(args, "-Patch", 2) == ["7", "5"] and flag_values(args, "-Gpu", 2) == ["0", "1"]
    assert flag_values(args, "-PixSize") == ["0.83"] and flag_values(args, "-FmDose") == ["1.2"]
    assert flag_values(args, "-Kv") == ["300"] and "-FmIntFile" not in args


def test_motioncor2_picks_input_flag_by_movie_type_and_rejects_unknown_types():
    eer = motioncor2.command(mc2_inputs("/d/m.eer", eer_frame_file="/d/fm.txt")).args
    assert flag_values(eer, "-InEer") == ["/d/m.eer"] and flag_values(eer, "-FmIntFile") == ["/d/fm.txt"]
    assert "-InMrc" in motioncor2.command(mc2_inputs("/d/m.mrc")).args
    with pytest.raises(ValueError, match="movie_path"):
        motioncor2.command(mc2_inputs("/d/m.dm4"))


def test_motioncor2_v16_table_gives_full_frame_shifts_and_motion_statistics(tmp_path):
    log = (FIXTURES / "motioncor2_1.6.4.log").read_text()
    shifts = motioncor2.parse_shifts(log)
    assert shifts.shape == (8, 2)  # the patch table after the blank line is not taken
    np.testing.assert_allclose(shifts[-1], [5.35, -2.20])  # specimen displacement = minus the log's shift
    inputs = mc2_inputs("/d/m.tiff").model_copy(update={"output_path": str(tmp_path / "mic.mrc")})
    (tmp_path / "mic_DW.mrc").write_bytes(b"")
    result = motioncor2.parse_result(log, inputs)
    steps = np.hypot(*np.diff(shifts, axis=0).T) * 0.83
    assert result["total_motion_a"] == pytest.approx(steps.sum())
    assert result["early_motion_a"] == pytest.approx(steps[:2].sum())  # frames before 4 e/Å² at 1.2 e/Å²/frame
    assert result["late_motion_a"] == pytest.approx(steps[2:].sum())
    assert result["micrograph"] == str(tmp_path / "mic_DW.mrc") and result["shifts_px"][0] == [0.0, 0.0]


def test_motioncor2_v14_frame_lines_stop_at_patch_block():
    shifts = motioncor2.parse_shifts((FIXTURES / "motioncor2_1.4.0.log").read_text())
    np.testing.assert_allclose(shifts, -np.array([[0, 0], [0.8, -0.4], [1.4, -0.7], [1.8, -0.9]]))


def test_motioncor2_log_without_shifts_is_an_error():
    with pytest.raises(ValueError, match="no full-frame shifts"):
        motioncor2.parse_shifts("MotionCor2 version 1.6.4\nError: GPU 0 is not available\n")


# --- CTFFIND ------------------------------------------------------------------------------------
def ctf_inputs(**overrides) -> ctffind.CtffindInputs:
    return ctffind.CtffindInputs(micrograph_path=f"{SESSION_DIR}/mic.mrc", output_path=f"{SESSION_DIR}/mic.ctf",
                                 pixel_size_a=0.83, **overrides)


def test_ctffind4_answers_follow_the_prompt_order():
    spec = ctffind.command(ctf_inputs(min_defocus_a=2000, max_defocus_a=90000))
    assert spec.program == "ctffind" and spec.args == []
    assert spec.stdin_text.splitlines() == [f"{SESSION_DIR}/mic.mrc", f"{SESSION_DIR}/mic.ctf", "0.83", "300", "2.7",
                                            "0.1", "512", "30", "5", "2000", "90000", "100", "no", "no", "no", "no",
                                            "no"]
    assert spec.log_path == f"{SESSION_DIR}/mic_ctffind4.log"


def test_ctffind5_adds_tilt_and_thickness_answers_and_needs_version_5():
    lines = ctffind.command(ctf_inputs(version=5, determine_thickness=True)).stdin_text.splitlines()
    assert lines[16:] == ["no", "yes", "yes", "yes", "30", "3", "no", "no", "no"]
    assert ctffind.command(ctf_inputs(version=5)).program == "ctffind5"
    with pytest.raises(ValueError, match="CTFFIND 5"):
        ctffind.command(ctf_inputs(determine_tilt=True))


def test_ctffind4_result_line_maps_to_engine_keys_with_angle_in_0_180():
    result = ctffind.parse_output_txt(FIXTURES / "ctffind4_mic.txt")
    assert result["defocus_u_a"] == pytest.approx(15234.123047)
    assert result["defocus_v_a"] == pytest.approx(14890.567383)
    assert result["astigmatism_angle_deg"] == pytest.approx(180 - 37.41235)
    assert (result["cc"], result["fit_resolution_a"], result["phase_shift_deg"]) == \
        pytest.approx((0.087654, 3.912345, 0.0))


def test_ctffind5_result_keeps_u_the_larger_defocus_and_reads_thickness():
    result = ctffind.parse_output_txt(FIXTURES / "ctffind5_mic.txt")
    assert (result["defocus_u_a"], result["defocus_v_a"]) == pytest.approx((38710.25, 38120.5))
    assert result["astigmatism_angle_deg"] == pytest.approx(102.5)
    assert result["phase_shift_deg"] == pytest.approx(30.0, abs=1e-3)
    assert (result["tilt_angle_deg"], result["sample_thickness_a"]) == pytest.approx((-26.8, 1512.0))


def test_ctffind_rotational_average_has_six_equal_rows(tmp_path):
    avrot = ctffind.parse_avrot(FIXTURES / "ctffind4_mic_avrot.txt")
    assert len(avrot) == 6 and {len(row) for row in avrot.values()} == {256}
    assert avrot["spatial_frequency_per_a"][-1] == pytest.approx(0.5 / 0.83, rel=1e-5)
    truncated = tmp_path / "bad_avrot.txt"
    truncated.write_text("\n".join((FIXTURES / "ctffind4_mic_avrot.txt").read_text().splitlines()[:-2]))
    with pytest.raises(ImageFileError, match="6 equally long rows"):
        ctffind.parse_avrot(truncated)


def test_ctffind_missing_or_short_result_file_names_the_file(tmp_path):
    with pytest.raises(ImageFileError, match="not found"):
        ctffind.parse_output_txt(tmp_path / "absent.txt")
    short = tmp_path / "short.txt"
    short.write_text("# header\n1.0 15000.0 14000.0\n")
    with pytest.raises(ImageFileError, match="short.txt.*at least 7 columns"):
        ctffind.parse_output_txt(short)


# --- crYOLO -------------------------------------------------------------------------------------
def cryolo_inputs(tmp_path: Path, **overrides) -> cryolo.CryoloInputs:
    return cryolo.CryoloInputs(micrograph_path=f"{SESSION_DIR}/mic.mrc", job_dir=str(tmp_path / "AutoPick job"),
                               weights_path="/models/gmodel_phosnet_202005_N63_c17.h5", **overrides)


def test_cryolo_command_and_config_follow_the_session_box_size(tmp_path):
    inputs = cryolo_inputs(tmp_path, box_size_px=180, threshold=0.15, min_distance_px=40)
    config = json.loads(cryolo.write_config(inputs).read_text())
    assert config["model"]["anchors"] == [180, 180] and config["model"]["architecture"] == "PhosaurusNet"
    args = cryolo.command(inputs).args
    assert flag_values(args, "-i") == [f"{SESSION_DIR}/mic.mrc"]
    assert flag_values(args, "--conf") == [str(tmp_path / "AutoPick job" / "cryolo_config.json")]
    assert flag_values(args, "--threshold") == ["0.15"] and flag_values(args, "--distance") == ["40"]


def test_cryolo_cbox_gives_box_centres_most_confident_first(tmp_path):
    picks = cryolo.parse_cbox(FIXTURES / "cryolo_mic.cbox", threshold=0.3)
    assert picks["coordinates_px"] == [[300.0, 198.0], [1880.0, 720.0], [1112.5, 2490.0]]
    assert picks["figures_of_merit"] == pytest.approx([0.9305, 0.6877, 0.412])
    assert picks["particle_count"] == 3


# --- relion_refine (command lines; the real runs are in test_tools_relion.py) -------------------
def test_refine3d_command_runs_mpi_with_split_half_sets():
    inputs = relion_refine.Refine3DInputs(project_dir="/tmp", particles_star="Select/job9/particles.star",
                                          job_dir="Refine3D/job011", mask_diameter_a=154, reference_path="ref.mrc",
                                          symmetry="D2", mpirun_args=["--oversubscribe"], gpu_ids="0:1")
    spec = relion_refine.refine3d_command(inputs)
    assert spec.program == "mpirun" and spec.args[:4] == ["-n", "3", "--oversubscribe", "relion_refine_mpi"]
    assert {"--auto_refine", "--split_random_halves", "--ctf"} <= set(spec.args)
    assert flag_values(spec.args, "--sym") == ["D2"] and flag_values(spec.args, "--gpu") == ["0:1"]
    assert flag_values(spec.args, "--o") == ["Refine3D/job011/run"]


def test_class3d_command_carries_reference_classes_and_lowpass(tmp_path):
    spec = relion_refine.class3d_command(relion_refine.Class3DInputs(
        project_dir=str(tmp_path), particles_star="p.star", job_dir="Class3D/job012", mask_diameter_a=154,
        reference_path="InitialModel/job011/initial_model.mrc", classes=4, iterations=25))
    assert spec.program == "relion_refine"
    assert flag_values(spec.args, "--ref") == ["InitialModel/job011/initial_model.mrc"]
    assert (flag_values(spec.args, "--K"), flag_values(spec.args, "--ini_high")) == (["4"], ["40"])


# --- relion_postprocess -------------------------------------------------------------------------
def test_postprocess_output_gives_final_resolution_and_bfactor():
    text = (FIXTURES / "relion_postprocess_3.1.3_stdout.txt").read_text()
    assert relion_postprocess.parse_stdout(text) == {"final_resolution_a": 8.53333, "bfactor_a2": -1360.42}
    with pytest.raises(ValueError, match="FINAL RESOLUTION"):
        relion_postprocess.parse_stdout("== Reading input half-reconstructions:\n")


def test_postprocess_command_needs_a_half1_map(tmp_path):
    inputs = relion_postprocess.PostProcessInputs(project_dir=str(tmp_path), half_map_path="R/run_class001.mrc",
                                                  mask_path="m.mrc", pixel_size_a=1.1)
    with pytest.raises(ValueError, match="half1"):
        relion_postprocess.command(inputs)


# --- Topaz --------------------------------------------------------------------------------------
def topaz_inputs(tmp_path: Path) -> topaz.TopazInputs:
    return topaz.TopazInputs(micrograph_path=f"{SESSION_DIR}/mic.mrc", job_dir=str(tmp_path), pixel_size_a=1.0,
                             particle_diameter_a=160, scale=8, threshold=0)


def test_topaz_commands_preprocess_then_extract_with_radius_in_downsampled_pixels(tmp_path):
    inputs = topaz_inputs(tmp_path)
    preprocess = topaz.preprocess_command(inputs).args
    extract = topaz.extract_command(inputs).args
    assert preprocess[:3] == ["preprocess", "-s", "8"] and preprocess[-1] == f"{SESSION_DIR}/mic.mrc"
    assert extract[0] == "extract" and flag_values(extract, "-r") == ["10"]  # 80 Å radius / 1 Å / 8
    assert extract[-1] == str(tmp_path / "preprocessed" / "mic.mrc")


def test_topaz_picks_are_scaled_back_to_micrograph_pixels_strongest_first():
    picks = topaz.parse_picks(FIXTURES / "topaz_picks.txt", scale=8)
    assert picks["coordinates_px"] == [[320.0, 2400.0], [1864.0, 1208.0], [960.0, 704.0]]
    assert picks["figures_of_merit"] == pytest.approx([2.875, 0.734, -0.512])


# --- AreTomo2 -----------------------------------------------------------------------------------
def test_aretomo_command_carries_tilt_axis_thickness_and_dose():
    inputs = aretomo.AreTomoInputs(stack_path=f"{SESSION_DIR}/ts.mrc", angle_file_path=f"{SESSION_DIR}/ts.tlt",
                                   tomogram_path=f"{SESSION_DIR}/ts_rec.mrc", pixel_size_a=1.35,
                                   dose_per_tilt_e_a2=3.0, tilt_axis_deg=84.7, volume_z_px=1600)
    args = aretomo.command(inputs).args
    assert flag_values(args, "-InMrc") == [f"{SESSION_DIR}/ts.mrc"]
    assert flag_values(args, "-TiltAxis", 2) == ["84.7", "1"] and flag_values(args, "-VolZ") == ["1600"]
    assert flag_values(args, "-FmDose") == ["3"] and aretomo.aln_path(inputs).name == "ts_rec.aln"


def test_aretomo_aln_gives_per_tilt_alignment_and_dark_tilts():
    alignment = aretomo.parse_aln(FIXTURES / "aretomo2_position_1.aln")
    assert [t["tilt_deg"] for t in alignment["tilts"]] == [-45, -30, -15, 0, 15, 30, 45]
    assert alignment["dark_tilts_deg"] == [-60.0, 60.0] and alignment["dark_sections"] == [0, 8]
    assert alignment["tilt_axis_deg"] == pytest.approx(85.312)
    assert (alignment["tilts"][0]["shift_x_px"], alignment["tilts"][0]["shift_y_px"]) == (12.345, -3.21)
