"""Noise2noise denoising on half tomograms, end to end on simulated data with ground truth: each tilt's even- and
odd-frame sums from the built-in motion correction, two half tomograms with the series' alignment, their Relion
5 columns, and Topaz trained on the halves (the runner with `topaz denoise3d`'s flags) against the clean volume.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import starfile
from scipy import ndimage

from airflow_provider_cryoem.config import SessionConfig
from airflow_provider_cryoem.engines.motion import half_sum_paths
from airflow_provider_cryoem.engines.tomo_align import TiltAlignmentInputs, align_tilt_series
from airflow_provider_cryoem.io import read_mrc, write_mrc
from airflow_provider_cryoem.pipeline.stages import MovieContext, run_motioncorr
from airflow_provider_cryoem.pipeline.tomograms import _half_tomograms, _reconstruct
from airflow_provider_cryoem.recipes.stages import (
    DenoiseParams,
    MotionCorrectionParams,
    Noise2NoiseParams,
    TomogramParams,
)
from airflow_provider_cryoem.relion_project import (
    CtfValues,
    OpticsGroup,
    RelionProject,
    TiltAlignmentValues,
    tomo_preprocessing,
)
from airflow_provider_cryoem.simulate import GAIN_REFERENCE_NAME, TomoSimulationSettings, write_tomo_session
from airflow_provider_cryoem.simulate.tilt_series import TiltSeriesSimulation
from airflow_provider_cryoem.simulate.tomo_volumes import correlation, noisy_and_clean_tomogram
from airflow_provider_cryoem.tools import topaz

from .test_relion_tomo_files import check_labels_and_types

SETTINGS = TomoSimulationSettings(n_series=1, image_size_px=256, n_frames=6, tilt_min_deg=-45, tilt_max_deg=45,
                                  tilt_step_deg=15, thickness_nm=60, vesicle_radius_min_a=120,
                                  vesicle_radius_max_a=220, seed=4)
BINNING = 4


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict:
    """One simulated series, every tilt motion-corrected by the stage with even_odd_sums, aligned and
    reconstructed, with its half tomograms; and the stage's time per tilt with and without the halves."""
    root = tmp_path_factory.mktemp("n2n")
    watch_dir = root / "raw"
    truth = write_tomo_session(SETTINGS, watch_dir)
    config = SessionConfig(pixel_size_a=SETTINGS.pixel_size_a, dose_per_frame_e_a2=SETTINGS.dose_per_frame_e_a2,
                           gain_reference_path=str(watch_dir / GAIN_REFERENCE_NAME), thickness_nm=SETTINGS.thickness_nm,
                           tomogram_binning=BINNING, tilt_axis_deg=SETTINGS.tilt_axis_deg)
    optics = OpticsGroup.from_session(config)
    project = RelionProject(root / "relion", "relion5", optics)
    project.reserve_jobs(tomo_preprocessing("builtin"))
    seconds = {}
    tilts = []
    for tilt in truth.series[0].tilts:
        item = {"watch_dir": str(watch_dir), "movie": tilt.movie_name, "experiment": "tomography"}
        for halves in (False, True):
            started = time.perf_counter()
            result = run_motioncorr(MovieContext(item, config, MotionCorrectionParams(
                patches_x=1, patches_y=1, even_odd_sums=halves), {}, project))
            seconds.setdefault(halves, []).append(time.perf_counter() - started)
        tilts.append({"movie": tilt.movie_name, "micrograph": result["micrograph"], "result": result,
                      "tilt_angle_deg": tilt.tilt_angle_deg, "defocus_u_a": tilt.defocus_um * 1e4,
                      "defocus_v_a": tilt.defocus_um * 1e4, "truth": tilt})
    name = truth.series[0].name
    alignment = align_tilt_series(TiltAlignmentInputs(
        micrograph_paths=[t["micrograph"] for t in tilts], tilt_angles_deg=[t["tilt_angle_deg"] for t in tilts],
        aligned_stack_path=str(project.job("aligntiltseries_builtin").path / "stacks" / f"{name}_aligned.mrc"),
        pixel_size_a=SETTINGS.pixel_size_a, tilt_axis_deg=SETTINGS.tilt_axis_deg, binning=BINNING,
        thickness_nm=SETTINGS.thickness_nm, projection_matching_iterations=1))
    params = TomogramParams(half_tomograms=True)
    record = {"name": name, "tilts": tilts}
    tomogram = _reconstruct(config, params, record, alignment, alignment.aligned_stack_path,
                            project.tomogram_path(name))
    halves = _half_tomograms(config, params, project, record, alignment)
    print(f"\nmotion correction per tilt (median of {len(tilts)}): "
          f"{np.median(seconds[False]):.2f} s, with even/odd sums {np.median(seconds[True]):.2f} s")
    return {"root": root, "watch_dir": watch_dir, "truth": truth, "tilts": tilts, "project": project,
            "alignment": alignment, "tomogram": tomogram, "halves": halves, "name": name}


def _binned(image: np.ndarray, factor: int = 4) -> np.ndarray:
    ny, nx = (n // factor * factor for n in image.shape)
    return image[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).mean(axis=(1, 3))


def test_the_even_and_odd_sums_hold_the_tilts_signal_with_independent_noise(series):
    tilt = series["tilts"][0]  # the first tilt collected (0°)
    even_path, odd_path = half_sum_paths(tilt["micrograph"])
    assert (tilt["result"]["micrograph_even"], tilt["result"]["micrograph_odd"]) == (str(even_path), str(odd_path))
    assert even_path.name.endswith("_EVN.mrc") and odd_path.name.endswith("_ODD.mrc")
    simulated = next(TiltSeriesSimulation(SETTINGS, 0).tilts())
    assert simulated.truth.movie_name == tilt["movie"]
    # the sums are aligned to frame 0, which is the clean image moved by the tilt's tracking shift
    dx, dy = simulated.truth.shift_px
    clean = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(simulated.clean), (dy, dx))).real
    even, odd, full = (_binned(read_mrc(path, mmap=False)) for path in (even_path, odd_path, tilt["micrograph"]))
    reference = _binned(clean)

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a[4:-4, 4:-4].ravel(), b[4:-4, 4:-4].ravel())[0, 1])

    signal = {"even": corr(even, reference), "odd": corr(odd, reference), "full": corr(full, reference)}
    print(f"\ncorrelation with the clean tilt (binned 4): {signal}, even-odd vs clean "
          f"{corr(even - odd, reference):.3f}, even vs odd {corr(even, odd):.3f}")
    assert signal["even"] > 0.2 and signal["odd"] > 0.2 and abs(signal["even"] - signal["odd"]) < 0.1
    assert signal["full"] > max(signal["even"], signal["odd"])  # twice the frames: less noise, same signal
    assert abs(corr(even - odd, reference)) < 0.05  # the difference is noise only
    assert corr(even + odd, full) > 0.95


def test_half_tomograms_share_the_tomograms_alignment_and_differ_in_noise(series):
    full = read_mrc(series["tomogram"].tomogram_path, mmap=False)
    half1, half2 = (read_mrc(path, mmap=False) for path in series["halves"])
    assert [Path(path).name for path in series["halves"]] == [f"rec_{series['name']}_half1.mrc",
                                                              f"rec_{series['name']}_half2.mrc"]
    assert half1.shape == half2.shape == full.shape
    between, with_full = correlation(half1, half2), correlation(half1 + half2, full)
    print(f"\nhalf 1 vs half 2 {between:.3f}; their sum vs the tomogram {with_full:.3f}")
    assert 0.2 < between < 0.95  # shared signal, independent noise
    assert with_full > 0.95  # same tilts, shifts, axis and reconstruction as the tomogram


def test_a_series_without_even_odd_sums_gets_no_half_tomograms(series, tmp_path):
    record = {"name": series["name"], "tilts": [{**tilt, "micrograph": str(tmp_path / Path(tilt["micrograph"]).name)}
                                                for tilt in series["tilts"]]}
    config = SessionConfig(pixel_size_a=SETTINGS.pixel_size_a, tomogram_binning=BINNING)
    assert _half_tomograms(config, TomogramParams(half_tomograms=True), series["project"], record,
                           series["alignment"]) is None


def test_relion5_files_carry_the_half_sums_and_half_tomograms_down_the_chain(series):
    project, name, watch_dir = series["project"], series["name"], series["watch_dir"]
    for tilt in series["tilts"]:
        movie = watch_dir / tilt["movie"]
        project.add_tilt_movie(name, movie, SETTINGS.n_frames, tilt["tilt_angle_deg"], SETTINGS.tilt_axis_deg,
                               tilt["truth"].pre_exposure_e_a2, SETTINGS.defocus_um)
        project.add_motion_corrected_tilt(name, movie, tilt["micrograph"], 1.0, 0.5, 0.5,
                                          half_sum_paths(tilt["micrograph"]))
        project.add_tilt_ctf(name, movie, CtfValues(defocus_u_a=tilt["defocus_u_a"], defocus_v_a=tilt["defocus_v_a"],
                                                    astigmatism_angle_deg=0.0, figure_of_merit=0.1,
                                                    max_resolution_a=10.0), Path(tilt["micrograph"]).with_suffix(".ctf"))
    project.select_tilts(name, [watch_dir / tilt["movie"] for tilt in series["tilts"]])
    project.add_aligned_tilt_series(name, [TiltAlignmentValues(
        movie=str(watch_dir / tilt["movie"]), y_tilt_deg=tilt["tilt_angle_deg"], z_rot_deg=SETTINGS.tilt_axis_deg,
        x_shift_a=0.0, y_shift_a=0.0) for tilt in series["tilts"]], aligner="builtin")
    shape = series["tomogram"].shape
    project.add_tomogram(name, series["tomogram"].tomogram_path, BINNING, [shape[2], shape[1], shape[0]],
                         series["halves"])
    denoised = project.denoised_tomogram_dir() / f"rec_{name}.denoised.mrc"
    project.add_denoised_tomogram(name, denoised)
    root = project.root
    for job in ("MotionCorr", "CtfFind", "ExcludeTiltImages", "AlignTiltSeries", "Tomograms", "Denoise"):
        rows = starfile.read(next(root.glob(f"{job}/job*/tilt_series/{name}.star")))
        check_labels_and_types({name: rows})
        columns = list(rows.columns)
        assert columns[columns.index("rlnMicrographName") - 2:columns.index("rlnMicrographName")] == [
            "rlnMicrographNameEven", "rlnMicrographNameOdd"], job
        for tilt, even, odd in zip(series["tilts"], rows["rlnMicrographNameEven"], rows["rlnMicrographNameOdd"]):
            assert [root / even, root / odd] == list(half_sum_paths(tilt["micrograph"])), job
    for job in ("Tomograms", "Denoise"):
        table = starfile.read(next(root.glob(f"{job}/job*/tomograms.star")), always_dict=True)
        check_labels_and_types(table)
        row = table["global"].iloc[0]
        columns = list(table["global"].columns)
        at = columns.index("rlnTomoReconstructedTomogram")
        assert columns[at + 1:at + 3] == ["rlnTomoReconstructedTomogramHalf1", "rlnTomoReconstructedTomogramHalf2"]
        assert [str(root / row["rlnTomoReconstructedTomogramHalf1"]), str(root / row["rlnTomoReconstructedTomogramHalf2"])
                ] == series["halves"], job
    assert "do_even_odd_split" in (next(root.glob("MotionCorr/job*/job.star"))).read_text()
    job_star = next(root.glob("Tomograms/job*/job.star")).read_text()
    assert any(line.split()[:2] == ["generate_split_tomograms", "Yes"] for line in job_star.splitlines())


def test_topaz_trained_on_the_halves_brings_the_tomogram_closer_to_the_clean_one(tmp_path):
    pytest.importorskip("topaz")
    settings = TomoSimulationSettings(image_size_px=128, pixel_size_a=10.0, phantom_binning=2, thickness_nm=70,
                                      vesicle_radius_min_a=120, vesicle_radius_max_a=220, n_vesicles=4,
                                      n_particles=20, tilt_min_deg=-60, tilt_max_deg=60, tilt_step_deg=4, seed=5)
    # 35 × 48 × 128 voxels: Topaz keeps its training cubes clear of two validation regions, which needs one
    # side of more than about 3.75 cubes (here x) or it finds no training cube
    case = noisy_and_clean_tomogram(settings, snr=0.1, crop_yx_px=(48, 128), halves=True)
    full, half1, half2 = (write_mrc(tmp_path / f"rec_TS_01{tag}.mrc", volume, case.voxel_size_a)
                          for tag, volume in (("", case.noisy), ("_half1", case.half1), ("_half2", case.half2)))
    training = Noise2NoiseParams(num_epochs=1, n_train=8, n_test=2, batch_size=2, learning_rate=0.0001)
    assert DenoiseParams(noise2noise=training).noise2noise == training
    inputs = topaz.TopazDenoiseInputs(tomogram_path=str(full), out_dir=str(tmp_path / "Denoise"), model="unet-3d-20a",
                                      patch_size_px=32, padding_px=8, threads=2, launch="bounded_runner",
                                      half_tomogram_paths=(str(half1), str(half2)), training=training)
    spec = topaz.denoise3d_command(inputs)
    from airflow_provider_cryoem.tools.topaz_denoise3d import main

    np.random.seed(3)  # Topaz draws its training cubes from numpy's global generator
    started = time.perf_counter()
    assert main(spec.args[2:]) == 0  # the runner, in this process, with the stage's command line
    seconds = time.perf_counter() - started
    parsed = topaz.parse_denoised(inputs)
    assert parsed["model"] == str(tmp_path / "Denoise" / "rec_TS_01_noise2noise_epoch1.sav")
    denoised = read_mrc(parsed["denoised_path"])
    raw, trained = correlation(case.noisy, case.clean), correlation(denoised, case.clean)
    print(f"\ncorrelation with the clean reconstruction: raw {raw:.3f}, noise2noise {trained:.3f} "
          f"({seconds:.0f} s training and denoising); halves vs clean {correlation(case.half1, case.clean):.3f}")
    assert trained > raw + 0.05, (raw, trained)


def test_the_slurm_command_trains_with_topaz_denoise3d_flags():
    inputs = topaz.TopazDenoiseInputs(
        tomogram_path="/p/Tomograms/job006/tomograms/rec_TS_01.mrc", out_dir="/p/Denoise/job007/tomograms",
        model="unet-3d-10a", device=0,
        half_tomogram_paths=("/p/Tomograms/job006/tomograms/rec_TS_01_half1.mrc",
                             "/p/Tomograms/job006/tomograms/rec_TS_01_half2.mrc"),
        training=Noise2NoiseParams(num_epochs=20, n_train=500, n_test=100, batch_size=8, optimizer="adam"))
    spec = topaz.denoise3d_command(inputs)
    assert spec.program == "topaz" and spec.gpus == 1
    assert spec.args[spec.args.index("-j") + 2:] == [
        "-a", "/p/Tomograms/job006/tomograms/rec_TS_01_half1.mrc", "-b", "/p/Tomograms/job006/tomograms/rec_TS_01_half2.mrc",
        "--N-train", "500", "--N-test", "100", "--batch-size", "8", "--num-epochs", "20", "--optim", "adam",
        "--lr", "0.0001", "--criteria", "L2", "--save-interval", "20",
        "--save-prefix", "/p/Denoise/job007/tomograms/rec_TS_01_noise2noise"]
    plain = topaz.denoise3d_command(inputs.model_copy(update={"half_tomogram_paths": None}))
    assert "-a" not in plain.args and plain.args[-2:] == ["-j", "0"]


def test_halves_and_training_are_off_unless_the_recipe_asks():
    assert MotionCorrectionParams().even_odd_sums is False
    assert TomogramParams().half_tomograms is False
    assert DenoiseParams().noise2noise is None


def test_tomo_live_carries_the_halves_from_motion_correction_to_noise2noise_denoising(tmp_path, airflow_env):
    """The three recipe options through Airflow (`airflow dags test tomo_live`, one series of 7 tilts): the
    Relion columns in every job, the half tomograms, and the denoise stage's command with Topaz's training."""
    import json
    import subprocess

    import yaml

    from airflow_provider_cryoem.simulate.session import END_MARKER_NAME

    from .conftest import AIRFLOW

    watch_dir = tmp_path / "visit" / "raw"
    write_tomo_session(SETTINGS, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "tomo_live.yaml").read_text())
    recipe["stages"]["motioncorr"].setdefault("params", {})["even_odd_sums"] = True
    recipe["stages"]["tomogram"]["params"] = {"half_tomograms": True}
    recipe["stages"]["denoise"] = {"tool": "topaz", "after": ["tomogram"], "params": {
        "patch_size_px": 32, "padding_px": 8,
        "noise2noise": {"num_epochs": 1, "n_train": 4, "n_test": 2, "batch_size": 2, "learning_rate": 0.0001}}}
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "tomo_live.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    conf = {"session_name": "n2n", "watch_dir": str(watch_dir), "pixel_size_a": SETTINGS.pixel_size_a,
            "dose_per_frame_e_a2": SETTINGS.dose_per_frame_e_a2, "tilt_axis_deg": SETTINGS.tilt_axis_deg,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME), "thickness_nm": SETTINGS.thickness_nm,
            "tilt_range_deg": 45, "tomogram_binning": BINNING, "movie_glob": "*.tif"}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(tmp_path), "CRYOEM_RECIPES_DIR": str(tmp_path / "recipes")}
    run = subprocess.run([AIRFLOW, "dags", "test", "tomo_live", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:]
    relion = tmp_path / "visit" / "processing" / "relion"
    for job in ("MotionCorr", "CtfFind", "Tomograms", "Denoise"):
        rows = starfile.read(next(relion.glob(f"{job}/job*/tilt_series/TS_01.star")))
        assert len(rows) == len(SETTINGS.acquisition_order()), job
        assert all((relion / path).is_file() for path in (*rows["rlnMicrographNameEven"], *rows["rlnMicrographNameOdd"]))
    row = starfile.read(next(relion.glob("Denoise/job*/tomograms.star")), always_dict=True)["global"].iloc[0]
    assert row["rlnTomoReconstructedTomogramHalf1"].endswith("tomograms/rec_TS_01_half1.mrc")
    assert (relion / row["rlnTomoReconstructedTomogramHalf2"]).is_file()
    assert (relion / row["rlnTomoReconstructedTomogramDenoised"]).is_file()
    denoise_dir = relion / Path(row["rlnTomoReconstructedTomogramDenoised"]).parent
    assert (denoise_dir / "rec_TS_01_noise2noise_epoch1.sav").is_file()
    assert "# training completed!" in (denoise_dir / "rec_TS_01_topaz_denoise3d.log").read_text()


def test_the_local_budget_counts_training_on_both_halves(tmp_path):
    from airflow_provider_cryoem.pipeline.tomo_postprocess import StageSettingError, denoise_patch_px

    tomogram, shape = tmp_path / "rec_TS_01.mrc", (300, 1024, 1024)  # halves of 1.2 GB each as float32
    params = DenoiseParams(memory_budget_gb=2.5, padding_px=16, noise2noise=Noise2NoiseParams())
    denoise_patch_px(tomogram, shape, params)  # denoising alone fits 2.5 GB
    with pytest.raises(StageSettingError) as refused:
        denoise_patch_px(tomogram, shape, params, training=True)
    assert "training on its halves" in str(refused.value) and str(tomogram) in str(refused.value)
    roomier = params.model_copy(update={"memory_budget_gb": 4})
    assert denoise_patch_px(tomogram, shape, roomier, training=True) < denoise_patch_px(tomogram, shape, roomier)
