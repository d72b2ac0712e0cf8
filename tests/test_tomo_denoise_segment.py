"""Tomogram denoising (Topaz) and membrane segmentation (membrain-seg) as stages: Topaz's real pretrained 3D
model on a small simulated tomogram with its clean phantom, the cube tiling that bounds memory, the memory
budget, the command lines where each program runs (this worker, Slurm with a GPU), and bad input: a missing
or unreadable checkpoint, a corrupt tomogram, a tomogram over the budget.

The end-to-end run (tilt movies to denoised tomograms and segmentations through tomo_live) is in
test_tomo_live_dag.py; the Slurm path on the local test cluster in test_slurm.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from airflow_provider_cryoem.config import SessionConfig
from airflow_provider_cryoem.execution import CommandSpec
from airflow_provider_cryoem.io import ImageFileError, read_mrc, read_mrc_pixel_size_a, write_mrc
from airflow_provider_cryoem.pipeline.tomo_postprocess import (
    StageSettingError,
    checkpoint_of,
    denoise_cube_bytes,
    denoise_patch_px,
    denoise_program,
)
from airflow_provider_cryoem.recipes.stages import DenoiseParams, SegmentationParams
from airflow_provider_cryoem.simulate.tomo_settings import TomoSimulationSettings
from airflow_provider_cryoem.simulate.tomo_volumes import correlation, noisy_and_clean_tomogram
from airflow_provider_cryoem.tools import topaz
from airflow_provider_cryoem.tools.topaz_denoise3d import MIN_EXTENT_PX, cube_windows, denoise_file

GIB = 1024**3


def noisy_phantom_tomogram(folder: Path) -> tuple[Path, np.ndarray]:
    """A small tomogram reconstructed from noisy projections of the simulator's phantom (20 Å voxels,
    30 × 64 × 96), and the same reconstruction without noise: what the denoiser should approach."""
    settings = TomoSimulationSettings(image_size_px=128, pixel_size_a=10.0, phantom_binning=2, thickness_nm=60,
                                      vesicle_radius_min_a=120, vesicle_radius_max_a=220, n_vesicles=4,
                                      n_particles=20, tilt_min_deg=-60, tilt_max_deg=60, tilt_step_deg=4, seed=5)
    case = noisy_and_clean_tomogram(settings, snr=0.3, crop_yx_px=(64, 96))
    return write_mrc(folder / "rec_TS_01.mrc", case.noisy, case.voxel_size_a), case.clean


def test_topaz_pretrained_3d_model_brings_a_noisy_tomogram_closer_to_the_clean_one(tmp_path):
    pytest.importorskip("topaz")
    tomogram, clean = noisy_phantom_tomogram(tmp_path)
    out = denoise_file(str(tomogram), str(tmp_path / "Denoise"), ".denoised", "unet-3d-20a", patch=64, padding=16)
    denoised, noisy = read_mrc(out), read_mrc(tomogram)
    assert out.name == "rec_TS_01.denoised.mrc" and denoised.shape == noisy.shape
    assert read_mrc_pixel_size_a(out) == pytest.approx(20.0)
    before, after = correlation(noisy, clean), correlation(denoised, clean)
    assert after > before + 0.05, (before, after)


def test_cubes_tile_the_volume_exactly_once_and_are_never_smaller_than_the_network_takes():
    shape = (40, 100, 70)
    covered = np.zeros(shape, dtype=int)
    for window, inner in cube_windows(shape, patch=32, padding=8):
        assert all(w.stop - w.start >= min(MIN_EXTENT_PX, n) for w, n in zip(window, shape))
        covered[tuple(slice(w.start + i.start, w.start + i.stop) for w, i in zip(window, inner))] += 1
    assert (covered == 1).all()


def test_the_local_cube_shrinks_to_the_memory_budget_and_is_refused_below_it(tmp_path):
    tomogram = tmp_path / "rec_TS_01.mrc"
    shape = (300, 1024, 1024)
    assert denoise_patch_px(tomogram, shape, DenoiseParams(memory_budget_gb=16)) == 96
    fitted = denoise_patch_px(tomogram, shape, DenoiseParams(memory_budget_gb=4))
    assert fitted < 96 and denoise_cube_bytes(shape, fitted, 48) <= 4 * GIB
    with pytest.raises(StageSettingError) as refused:
        denoise_patch_px(tomogram, shape, DenoiseParams(memory_budget_gb=1))
    message = str(refused.value)
    assert str(tomogram) in message and "stages.denoise.params.memory_budget_gb" in message
    # a thin tomogram's cubes are clipped to it: the budget follows the tomogram, not Topaz's full cube
    assert denoise_cube_bytes((40, 64, 64), 96, 48) < denoise_cube_bytes((300, 1024, 1024), 96, 48) / 10


def test_the_slurm_command_is_topaz_denoise3d_as_cryoem_services_runs_it(tmp_path):
    program, launch = denoise_program(None, {"slurm_conn_id": "cluster", "gpus": 1})
    spec = topaz.denoise3d_command(topaz.TopazDenoiseInputs(
        tomogram_path="/p/Tomograms/job006/tomograms/rec_TS_01.mrc", out_dir="/p/Denoise/job007/tomograms",
        model="unet-3d-10a", device=0, program=program, launch=launch))
    assert spec.program == "topaz" and spec.gpus == 1
    assert spec.args == ["denoise3d", "/p/Tomograms/job006/tomograms/rec_TS_01.mrc", "-o", "/p/Denoise/job007/tomograms",
                         "--suffix", ".denoised", "-m", "unet-3d-10a", "-s", "96", "-p", "48", "-d", "0", "-j", "0"]
    python = denoise_program("/opt/topaz/bin/python3", {"slurm_conn_id": "cluster", "gpus": 1})
    assert python == ("/opt/topaz/bin/python3", "bounded_runner")


def test_the_local_command_runs_the_bounded_runner_in_airflows_python():
    pytest.importorskip("topaz")
    program, launch = denoise_program(None, "local")
    spec = topaz.denoise3d_command(topaz.TopazDenoiseInputs(tomogram_path="/t/rec.mrc", out_dir="/d", program=program,
                                                            launch=launch))
    assert spec.program == sys.executable and spec.gpus == 0
    assert spec.args[:3] == ["-m", "airflow_provider_cryoem.tools.topaz_denoise3d", "/t/rec.mrc"]


def test_the_pretrained_model_follows_the_voxel_size():
    assert topaz.pretrained_3d_model(8.0) == "unet-3d-10a"
    assert topaz.pretrained_3d_model(13.0) == "unet-3d-10a"
    assert topaz.pretrained_3d_model(17.0) == "unet-3d-20a"


def test_a_missing_checkpoint_names_both_settings():
    with pytest.raises(StageSettingError) as missing:
        checkpoint_of(SessionConfig(), SegmentationParams(), "local")
    assert "membrain_checkpoint_path" in str(missing.value)
    assert "stages.segment.params.checkpoint_path" in str(missing.value)


def test_an_unreadable_checkpoint_names_the_file_and_the_setting(tmp_path):
    absent = tmp_path / "MemBrain_seg_v10_alpha.ckpt"
    with pytest.raises(StageSettingError) as unreadable:
        checkpoint_of(SessionConfig(), SegmentationParams(checkpoint_path=str(absent)), "local")
    assert str(absent) in str(unreadable.value) and "stages.segment.params.checkpoint_path" in str(unreadable.value)
    # on Slurm the checkpoint lives on the cluster's file system: not checked here
    placement = {"slurm_conn_id": "cluster", "gpus": 1}
    assert checkpoint_of(SessionConfig(), SegmentationParams(checkpoint_path=str(absent)), placement) == str(absent)


def test_a_corrupt_tomogram_is_refused_by_the_runner_naming_it(tmp_path):
    pytest.importorskip("topaz")
    broken = tmp_path / "rec_TS_02.mrc"
    write_mrc(broken, np.zeros((40, 64, 64), np.float32), 10.0)
    broken.write_bytes(broken.read_bytes()[:5000])
    from airflow_provider_cryoem.tools.topaz_denoise3d import main

    assert main([str(broken), "-o", str(tmp_path / "out"), "-s", "32", "-p", "8"]) == 2
    assert not (tmp_path / "out" / "rec_TS_02.denoised.mrc").exists()
    with pytest.raises(ImageFileError, match="rec_TS_02"):
        topaz.parse_denoised(topaz.TopazDenoiseInputs(tomogram_path=str(broken), out_dir=str(tmp_path / "out")))


def test_segmentation_command_carries_the_stage_settings(tmp_path):
    from airflow_provider_cryoem.tools import membrain

    params = SegmentationParams(checkpoint_path="/m/x.ckpt", sliding_window_size_px=64, test_time_augmentation=True)
    spec: CommandSpec = membrain.command(membrain.MembrainInputs(
        tomogram_path=str(tmp_path / "rec.denoised.mrc"), checkpoint_path="/m/x.ckpt", out_dir=str(tmp_path),
        sliding_window_size_px=params.sliding_window_size_px, test_time_augmentation=params.test_time_augmentation,
        store_connected_components=params.connected_components))
    assert "--test-time-augmentation" in spec.args and "--store-connected-components" in spec.args
    assert spec.args[spec.args.index("--sliding-window-size") + 1] == "64"
