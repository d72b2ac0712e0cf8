"""Tomography and ice-thickness tool wrappers: IMOD (newstack, tilt, batchruntomo), membrain-seg, IceBreaker.

None of these programs is installed here. IceBreaker fixtures were captured from real IceBreaker 0.3.9
runs on simulated micrographs; the IMOD fixtures are written to tiltalign's documented output layout
(each fixture says so at its top); membrain-seg's output is written here as it writes it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from airflow_provider_cryoem.io.errors import ImageFileError
from airflow_provider_cryoem.io.mrc import write_mrc
from airflow_provider_cryoem.results import records
from airflow_provider_cryoem.tools import icebreaker, imod, membrain

FIXTURES = Path(__file__).parent / "fixtures" / "tools"
SESSION_DIR = "/data/visit 1; it's"


def flag_values(args: list[str], flag: str, count: int = 1) -> list[str]:
    index = args.index(flag)
    return args[index + 1: index + 1 + count]


# --- IMOD newstack / tilt -----------------------------------------------------------------------
def test_newstack_reads_single_tilts_through_a_file_list_of_section_zero(tmp_path):
    tilts = [f"{SESSION_DIR}/MotionCorr/Position_1_{n:03d}.mrc" for n in (2, 1, 3)]
    inputs = imod.NewstackInputs(input_paths=tilts, output_path=str(tmp_path / "stack dir" / "Position_1.st"),
                                 transform_path=f"{SESSION_DIR}/Position_1.xf", bin_factor=4, linear_interpolation=True)
    list_path = imod.write_file_list(inputs)
    assert list_path.read_text().splitlines() == ["3", tilts[0], "0", tilts[1], "0", tilts[2], "0"]
    spec = imod.newstack_command(inputs)
    assert spec.program == "newstack"
    assert spec.args == ["-fileinlist", str(list_path), "-output", str(tmp_path / "stack dir" / "Position_1.st"),
                         "-xform", f"{SESSION_DIR}/Position_1.xf", "-bin", "4", "-linear"]


def test_newstack_takes_one_stack_whole_without_binning_flags():
    spec = imod.newstack_command(imod.NewstackInputs(input_paths=[f"{SESSION_DIR}/ts.mrc"],
                                                     output_path=f"{SESSION_DIR}/ts_ali.mrc"))
    assert spec.args == ["-input", f"{SESSION_DIR}/ts.mrc", "-output", f"{SESSION_DIR}/ts_ali.mrc"]


def test_tilt_command_is_weighted_back_projection_with_comma_joined_pairs():
    spec = imod.tilt_command(imod.TiltInputs(
        aligned_stack_path=f"{SESSION_DIR}/ts_ali.mrc", tomogram_path=f"{SESSION_DIR}/ts_full_rec.mrc",
        tilt_file_path=f"{SESSION_DIR}/ts.tlt", thickness_unbinned_px=1200, stack_binning=4,
        full_image_px=(4096, 4096), gpu_id=0))
    assert spec.args[:4] == ["-input", f"{SESSION_DIR}/ts_ali.mrc", "-output", f"{SESSION_DIR}/ts_full_rec.mrc"]
    assert flag_values(spec.args, "-TILTFILE") == [f"{SESSION_DIR}/ts.tlt"]
    assert flag_values(spec.args, "-THICKNESS") == ["1200"] and flag_values(spec.args, "-IMAGEBINNED") == ["4"]
    assert flag_values(spec.args, "-RADIAL") == ["0.35,0.035"] and flag_values(spec.args, "-FULLIMAGE") == ["4096,4096"]
    assert flag_values(spec.args, "-UseGPU") == ["0"] and spec.gpus == 1 and "-FakeSIRTiterations" not in spec.args


# --- IMOD batchruntomo --------------------------------------------------------------------------
def brt_inputs(tmp_path: Path, **overrides) -> imod.BatchRunTomoInputs:
    return imod.BatchRunTomoInputs(stack_path=str(tmp_path / "Tomograms job 1" / "Position_1.mrc"),
                                   tilt_angles_deg=[-50 + 10 * i for i in range(11)], pixel_size_a=1.35, **overrides)


def directive_map(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_batchruntomo_patch_tracking_directives_and_command(tmp_path):
    inputs = brt_inputs(tmp_path, cpus=8, output_binning=4, thickness_unbinned_px=1200)
    directives = directive_map(imod.write_directive_file(inputs))
    folder = tmp_path / "Tomograms job 1"
    assert directives["setupset.datasetDirectory"] == str(folder)
    assert directives["setupset.copyarg.name"] == "Position_1" and directives["setupset.copyarg.pixel"] == "0.135"
    assert directives["runtime.Fiducials.any.trackingMethod"] == "1"  # 1 = patch tracking
    assert directives["comparam.xcorr_pt.tiltxcorr.SizeOfPatchesXandY"] == "200,200"
    assert directives["runtime.AlignedStack.any.binByFactor"] == "4"
    assert directives["comparam.tilt.tilt.THICKNESS"] == "1200"
    assert directives["runtime.Reconstruction.any.useSirt"] == "0"
    assert not any(key.startswith("comparam.track.beadtrack") for key in directives)
    assert (folder / "Position_1.rawtlt").read_text().splitlines()[:2] == ["-50.00", "-40.00"]
    spec = imod.batchruntomo_command(inputs)
    assert spec.args == ["-directive", str(folder / "batchDirective.adoc"), "-cpus", "8"]
    assert spec.cwd == str(folder) and imod.tomogram_path(inputs) == folder / "Position_1_rec.mrc"


def test_batchruntomo_fiducial_sirt_directives(tmp_path):
    directives = directive_map(imod.write_directive_file(brt_inputs(
        tmp_path, alignment="fiducials", reconstruction="sirt", fiducial_diameter_nm=250, fiducial_count=4,
        sirt_leave_iterations=8)))
    assert directives["runtime.Fiducials.any.trackingMethod"] == "0"  # 0 = beads
    assert directives["setupset.copyarg.gold"] == "250"
    assert directives["comparam.autofidseed.autofidseed.TargetNumberOfBeads"] == "4"
    assert directives["runtime.Reconstruction.any.useSirt"] == "1"
    assert directives["comparam.sirtsetup.sirtsetup.LeaveIterations"] == "8"
    assert "comparam.xcorr_pt.tiltxcorr.SizeOfPatchesXandY" not in directives


def test_batchruntomo_refuses_repeated_tilt_angles(tmp_path):
    inputs = brt_inputs(tmp_path).model_copy(update={"tilt_angles_deg": [-3.0, 0.0, 0.0, 3.0]})
    with pytest.raises(ValueError, match="repeated tilt angles"):
        imod.write_directive_file(inputs)


def test_align_log_gives_global_residual_tilt_axis_and_refined_tilts():
    result = imod.parse_align_log(FIXTURES / "imod_4.11_align.log")
    assert (result["residual_error_mean_nm"], result["residual_error_sd_nm"]) == (0.642, 0.358)  # not the local area
    assert result["tilt_axis_deg"] == 85.41
    assert result["views"] == list(range(1, 12))
    assert result["tilt_angles_deg"][0] == -49.9 and result["tilt_angles_deg"][5] == 0.0
    assert result["view_residual_nm"][-1] == 0.97


def test_align_log_in_pixels_needs_the_pixel_size(tmp_path):
    log = tmp_path / "align.log"
    log.write_text((FIXTURES / "imod_4.11_align.log").read_text()
                   .replace("0.358 nm", "0.358 pixels").replace("resid-nm", "mean resid"))
    with pytest.raises(ImageFileError, match="pixel_size_a"):
        imod.parse_align_log(log)
    result = imod.parse_align_log(log, pixel_size_a=20.0)
    assert result["residual_error_mean_nm"] == pytest.approx(1.284)
    assert result["view_residual_nm"][0] == pytest.approx(1.82)


def test_align_log_without_solution_names_the_file(tmp_path):
    log = tmp_path / "align.log"
    log.write_text(" Tiltalign: Version 4.11.24\n ERROR: TILTALIGN - TOO FEW FIDUCIALS\n")
    with pytest.raises(ImageFileError, match=r"align\.log.*Residual error mean and sd"):
        imod.parse_align_log(log)
    with pytest.raises(ImageFileError, match="not found"):
        imod.parse_align_log(tmp_path / "absent.log")


def test_xf_and_tlt_give_per_view_specimen_shifts_tilt_axis_and_angles(tmp_path):
    xf = imod.parse_xf(FIXTURES / "imod_4.11_position_1.xf")
    assert len(xf["specimen_shifts_px"]) == 11 and xf["translations_px"][0] == [12.5, -3.2]
    assert xf["tilt_axis_deg"][0] == pytest.approx(85.3, abs=1e-4)  # the log's per-view rotation
    a11, a12, a21, a22, dx, dy = xf["transforms"][0]
    sx, sy = xf["specimen_shifts_px"][0]
    # the content at the specimen shift lands on the aligned image's centre: A·s + D = 0
    assert (a11 * sx + a12 * sy + dx, a21 * sx + a22 * sy + dy) == (pytest.approx(0, abs=1e-9),
                                                                      pytest.approx(0, abs=1e-9))
    tilts = imod.parse_tlt(FIXTURES / "imod_4.11_position_1.tlt")
    assert len(tilts) == 11 and tilts[0] == -49.88 and tilts == sorted(tilts)
    bad = tmp_path / "short.xf"
    bad.write_text("1.0 0.0 0.0 1.0 2.5\n")
    with pytest.raises(ImageFileError, match=r"short\.xf.*line 1: 5 values, expected 6"):
        imod.parse_xf(bad)


def test_batchruntomo_result_combines_log_tilts_shifts_and_binned_tomogram(tmp_path):
    inputs = brt_inputs(tmp_path, output_binning=4, thickness_unbinned_px=1200)
    folder = Path(inputs.stack_path).parent
    with pytest.raises(ImageFileError, match="Position_1_rec.mrc.*no tomogram"):
        imod.parse_result(inputs)
    folder.mkdir(parents=True)
    (folder / "Position_1_rec.mrc").write_bytes(b"\0")
    for source, target in [("imod_4.11_align.log", "align.log"), ("imod_4.11_position_1.xf", "Position_1.xf"),
                           ("imod_4.11_position_1.tlt", "Position_1.tlt")]:
        (folder / target).write_text((FIXTURES / source).read_text())
    result = imod.parse_result(inputs)
    assert result["tilt_angles_deg"][0] == -49.88
    assert result["shifts_px"] == imod.parse_xf(folder / "Position_1.xf")["specimen_shifts_px"]
    assert (result["pixel_size_a"], result["thickness_px"]) == (pytest.approx(5.4), 300)


# --- membrain-seg -------------------------------------------------------------------------------
def membrain_inputs(tmp_path: Path, **overrides) -> membrain.MembrainInputs:
    settings = {"tomogram_path": f"{SESSION_DIR}/Denoise/Position_1.denoised.mrc",
                "checkpoint_path": "/models/MemBrain_seg_v10_alpha.ckpt", "out_dir": str(tmp_path / "Segmentation job")}
    return membrain.MembrainInputs(**{**settings, **overrides})


def test_membrain_command_passes_paths_whole_and_switches_as_pairs(tmp_path):
    spec = membrain.command(membrain_inputs(tmp_path, in_pixel_size_a=13.4, store_connected_components=True,
                                            connected_component_threshold_voxels=500))
    assert spec.program == "membrain" and spec.args[0] == "segment" and spec.gpus == 1
    assert flag_values(spec.args, "--tomogram-path") == [f"{SESSION_DIR}/Denoise/Position_1.denoised.mrc"]
    assert flag_values(spec.args, "--ckpt-path") == ["/models/MemBrain_seg_v10_alpha.ckpt"]
    assert flag_values(spec.args, "--out-folder") == [str(tmp_path / "Segmentation job")]
    assert {"--rescale-patches", "--no-test-time-augmentation", "--no-store-probabilities",
            "--store-connected-components"} <= set(spec.args)
    assert flag_values(spec.args, "--in-pixel-size") == ["13.4"]
    assert flag_values(spec.args, "--out-pixel-size") == ["10"]
    assert flag_values(spec.args, "--connected-component-thres") == ["500"]
    assert "--segmentation-threshold" not in spec.args
    with pytest.raises(ValueError, match="multiple of 32"):
        membrain_inputs(tmp_path, sliding_window_size_px=100)


def test_membrain_output_name_keeps_checkpoint_token(tmp_path):
    assert membrain.segmentation_path(membrain_inputs(tmp_path)).name == \
        "Position_1.denoised_MemBrain_seg_v10_alpha.ckpt_segmented.mrc"
    trained = membrain_inputs(tmp_path, checkpoint_path="/m/membrain_v2-epoch=999-val_loss=0.52.ckpt")
    assert membrain.segmentation_path(trained).name == "Position_1.denoised_membrain_v2-epoch=999_segmented.mrc"


def test_membrain_segmentation_statistics_from_the_written_volume(tmp_path):
    inputs = membrain_inputs(tmp_path)
    with pytest.raises(ImageFileError, match="segmented.mrc.*not found"):
        membrain.parse_result(inputs)
    labels = np.zeros((16, 32, 32), dtype=np.int8)
    labels[4, :, :] = 1    # a membrane sheet of 32 × 32 voxels
    labels[10:12, 8:24, 5] = 2  # and a second, smaller one
    Path(inputs.out_dir).mkdir()
    write_mrc(membrain.segmentation_path(inputs), labels, pixel_size_a=10.0)
    result = membrain.parse_result(inputs)
    assert result["membrane_voxel_count"] == 32 * 32 + 2 * 16
    assert result["membrane_fraction"] == pytest.approx((32 * 32 + 32) / labels.size)
    assert result["label_count"] == 2 and result["shape_zyx_px"] == [16, 32, 32]
    assert result["voxel_size_a"] == pytest.approx(10.0)
    assert result["membrane_volume_nm3"] == pytest.approx(1056.0)
    assert "scores_path" not in result


def test_membrain_score_map_is_not_taken_for_a_segmentation(tmp_path):
    scores = tmp_path / "Position_1_scores.mrc"
    write_mrc(scores, np.linspace(-2, 2, 8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8), pixel_size_a=10.0)
    with pytest.raises(ImageFileError, match="Position_1_scores.mrc.*non-integer"):
        membrain.parse_segmentation(scores)
    truncated = tmp_path / "truncated_segmented.mrc"
    truncated.write_bytes(scores.read_bytes()[:1500])
    with pytest.raises(ImageFileError, match="truncated_segmented.mrc"):
        membrain.parse_segmentation(truncated)


# --- IceBreaker ---------------------------------------------------------------------------------
def ib_inputs(job: str, micrograph: str, **overrides) -> icebreaker.IceBreakerInputs:
    return icebreaker.IceBreakerInputs(job=job, project_dir=SESSION_DIR, job_dir="IceBreaker/job003",
                                       micrograph_path=micrograph, **overrides)


MIC = "MotionCorr/job002/Movies/Foil Hole_1_Data_2_3.mrc"


def test_icebreaker_group_and_flatten_commands_run_in_the_project(tmp_path):
    group = icebreaker.command(ib_inputs("micrographs", MIC, cpus=4))
    assert group.program == "ib_job" and group.cwd == SESSION_DIR
    assert group.args == ["--j", "4", "--single_mic", MIC, "--o", "IceBreaker/job003", "--mode", "group"]
    assert group.log_path == f"{SESSION_DIR}/IceBreaker/job003/run.out"
    flatten = icebreaker.command(ib_inputs("enhancecontrast", MIC, program_dir="/opt/ib/bin"))
    assert flatten.program == "/opt/ib/bin/ib_job" and flatten.args[-2:] == ["--mode", "flatten"]
    assert icebreaker.output_micrograph_path(ib_inputs("micrographs", MIC)) == \
        Path(SESSION_DIR) / "IceBreaker/job003/Movies/Foil Hole_1_Data_2_3_grouped.mrc"


def test_icebreaker_summary_and_particles_commands():
    grouped = "IceBreaker/job003/Movies/mic_grouped.mrc"
    assert icebreaker.command(ib_inputs("summary", grouped)).args == \
        ["--j", "1", "--single_mic", grouped, "--o", "IceBreaker/job003"]
    particles = icebreaker.command(ib_inputs("particles", "IceBreaker/job003/grouped_micrographs.star",
                                             particles_star="Select/job009/particles_split1.star"))
    assert particles.program == "ib_group"
    assert flag_values(particles.args, "--in_mics") == ["IceBreaker/job003/grouped_micrographs.star"]
    assert flag_values(particles.args, "--in_parts") == ["Select/job009/particles_split1.star"]
    with pytest.raises(ValueError, match="particles_star"):
        icebreaker.command(ib_inputs("particles", "IceBreaker/job003/grouped_micrographs.star"))
    with pytest.raises(ValueError, match="relative to project_dir"):
        ib_inputs("micrographs", f"{SESSION_DIR}/{MIC}")


def test_icebreaker_five_figures_from_real_ib_5fig_output_fit_the_results_store():
    text = (FIXTURES / "icebreaker_0.3.9_ib_5fig_stdout.txt").read_text()
    result = icebreaker.parse_five_figures(text)
    assert [result[key] for key in icebreaker.FIVE_FIGURE_KEYS] == [67675, 80344, 81137, 82944, 86738]
    assert result["micrograph_path"].endswith("FoilHole_1_Data_2_3_20240101_090000_fractions_grouped.mrc")
    assert set(records.RELATIVE_ICE_THICKNESS) == set(icebreaker.FIVE_FIGURE_KEYS)


def test_icebreaker_five_figures_csv_keys_rows_by_micrograph():
    summaries = icebreaker.parse_five_figures_csv(FIXTURES / "icebreaker_0.3.9_five_figs_test.csv")
    assert list(summaries) == ["FoilHole_1_Data_2_3_20240101_090000_fractions_grouped",
                               "FoilHole_1_Data_2_4_20240101_090010_fractions_grouped"]
    assert summaries["FoilHole_1_Data_2_4_20240101_090010_fractions_grouped"] == \
        {"minimum": 65617, "q1": 70672, "median": 73001, "q3": 75949, "maximum": 81331}


def test_icebreaker_missing_or_malformed_summary_is_a_clear_error(tmp_path):
    with pytest.raises(ImageFileError, match="no 'Results:"):
        icebreaker.parse_five_figures("Done five figures\n", source=tmp_path / "run.out")
    with pytest.raises(ImageFileError, match="min ≤ q1"):
        icebreaker.parse_five_figures("Results: /p/mic_grouped.mrc 5 4 3 2 1\n")
    bad = tmp_path / "five_figs_test.csv"
    bad.write_text("path,min,q1,q2=median,q3,max\n/p/mic_grouped,1,2,3\n")
    with pytest.raises(ImageFileError, match=r"five_figs_test\.csv.*row with 4 values"):
        icebreaker.parse_five_figures_csv(bad)
    with pytest.raises(ImageFileError, match="not found"):
        icebreaker.parse_five_figures_csv(tmp_path / "absent.csv")


def test_icebreaker_particle_ice_groups_from_real_ib_group_output(tmp_path):
    groups = icebreaker.parse_particle_ice_groups(FIXTURES / "icebreaker_0.3.9_particles.star")
    assert groups["particle_count"] == len(groups["ice_groups"]) > 0
    assert sum(groups["ice_group_counts"].values()) == groups["particle_count"]
    assert groups["ice_groups"][:4] == [67675, 67675, 67675, 73359]
    plain = tmp_path / "particles.star"
    plain.write_text("data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n10.0 20.0\n")
    with pytest.raises(ImageFileError, match="rlnHelicalTubeID"):
        icebreaker.parse_particle_ice_groups(plain)


def test_icebreaker_results_are_read_from_the_job_directory(tmp_path):
    summary = ib_inputs("summary", "IceBreaker/job003/Movies/mic_grouped.mrc").model_copy(
        update={"project_dir": str(tmp_path), "job_dir": "IceBreaker/job005"})
    with pytest.raises(ImageFileError, match=r"job005/run\.out.*not found"):
        icebreaker.parse_result(summary)
    icebreaker.log_path(summary).parent.mkdir(parents=True)
    icebreaker.log_path(summary).write_text((FIXTURES / "icebreaker_0.3.9_ib_5fig_stdout.txt").read_text())
    assert icebreaker.parse_result(summary)["median"] == 81137
    group = summary.model_copy(update={"job": "micrographs", "micrograph_path": MIC, "job_dir": "IceBreaker/job003"})
    with pytest.raises(ImageFileError, match="Foil Hole_1_Data_2_3_grouped.mrc.*wrote no micrograph"):
        icebreaker.parse_result(group)
