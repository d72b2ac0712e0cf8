"""After the tomogram: denoising with Topaz and membrane segmentation with membrain-seg, one tilt series each.

Both follow the tomogram stage's shape: the program runs where the recipe places it (this worker or Slurm),
its output is checked, pictured, recorded as an ISPyB-shaped processed tomogram and listed in the Relion 5
project (Denoise/jobNNN with its tomograms.star, Segmentation/jobNNN). A series whose tomogram is missing,
unreadable, too large for the memory budget, or whose program fails is recorded as a failed step named after
the stage and series (`denoise TS_01`) and passed on with `skipped`; the session goes on. Segmentation takes
the denoised tomogram when the series has one, else the tomogram.

Memory on this worker: the Topaz runner holds one padded cube (tools/topaz_denoise3d), so the budget bounds
the cube, never the tomogram; membrain-seg holds the whole tomogram, so the budget bounds the tomogram.

With `noise2noise` and a series that has half tomograms (the tomogram stage's half_tomograms), Topaz first
trains on the pair, starting from the stage's model, and denoises the tomogram with the trained model, which is
kept beside the denoised tomogram (`<tomogram>_noise2noise_epochN.sav`). Training holds both halves in memory
(Topaz's dataset reads them whole), which the local budget check counts.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from ..config import SessionConfig, check_under_roots
from ..engines.tomo_images import denoising_comparison, mask_projection, segmentation_overlay
from ..io import read_mrc, read_mrc_pixel_size_a, read_mrc_shape
from ..io.memory_budget import BUDGET_ENV, max_decoded_bytes
from ..recipes.stages import DenoiseParams, Noise2NoiseParams, SegmentationParams
from ..relion_project import OpticsGroup, RelionProject
from ..relion_project.job_types import NodeType
from ..tools import membrain, topaz
from .batch_outcome import run_or_skip
from .external import TOPAZ_EXTRA, ToolChoiceError, placement_threads, stage_executor
from .stores import relion_project, results_store

# Peak memory of Topaz's 3D U-net per voxel of the padded cube on the CPU, and the interpreter, torch and
# the model besides (measured: 1.29 GB at 96³, 0.69 GB at 64³, 0.30 GB before the first cube).
DENOISE_BYTES_PER_VOXEL = 1600
DENOISE_BASE_BYTES = 400 * 1024**2
DENOISE_PATCH_CHOICES_PX = (96, 80, 64, 48, 32, 16)
# membrain-seg keeps the tomogram, its normalised copy, the sliding window's sums and the score map in
# memory (measured with the small random-weight network: 0.63 GB loaded, 1.02 GB peak for 256 × 256 × 100
# voxels, about 60 bytes per voxel); the released network's windows take more, so the margin is wide.
SEGMENT_BYTES_PER_VOXEL = 80
SEGMENT_BASE_BYTES = 1024**3


class StageSettingError(ValueError):
    """A setting the stage cannot run with for this series (missing checkpoint, over the memory budget)."""


def _budget_bytes(budget_gb: float | None) -> tuple[int, str]:
    """The memory budget in bytes and the setting that gave it (named in refusals)."""
    if budget_gb is not None:
        return int(budget_gb * 1024**3), "memory_budget_gb"
    return max_decoded_bytes(), f"the worker's budget ({BUDGET_ENV}, else min(8 GiB, half the RAM))"


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1024**3:.1f} GB"


def denoise_cube_bytes(shape_zyx: tuple[int, ...], patch_px: int, padding_px: int) -> int:
    """Peak memory of the Topaz runner for this tomogram: its largest padded cube (clipped to the volume, at
    least the network's 32 voxels a side) times the measured bytes per voxel, plus the model."""
    window = 1
    for n in shape_zyx:
        window *= max(32, min(n, patch_px + 2 * padding_px))
    return DENOISE_BASE_BYTES + window * DENOISE_BYTES_PER_VOXEL


def training_bytes(shape_zyx: tuple[int, ...], patch_px: int, settings: Noise2NoiseParams) -> int:
    """Memory of a noise2noise training run besides the model: both halves as float32, the training and
    validation cubes of both halves, and a batch's activations kept for back-propagation (about three times the
    forward pass's)."""
    cube = patch_px ** 3
    voxels = 1
    for n in shape_zyx:
        voxels *= n
    return (2 * voxels * 4 + 2 * (settings.n_train + settings.n_test) * cube * 4
            + 3 * settings.batch_size * cube * DENOISE_BYTES_PER_VOXEL)


def denoise_patch_px(tomogram: Path, shape_zyx: tuple[int, ...], params: DenoiseParams,
                     training: bool = False) -> int:
    """The cube edge for a local run: the recipe's if it fits the budget, else the largest that fits;
    StageSettingError naming the tomogram and the settings when none does. With `training` (noise2noise), the
    cube is also the training cube and the training's memory counts too."""
    budget, source = _budget_bytes(params.memory_budget_gb)
    choices = [params.patch_size_px] if params.patch_size_px else list(DENOISE_PATCH_CHOICES_PX)

    def need_bytes(patch: int) -> int:
        need = denoise_cube_bytes(shape_zyx, patch, params.padding_px)
        return need + training_bytes(shape_zyx, patch, params.noise2noise) if training and params.noise2noise \
            else need

    for patch in choices:
        if need_bytes(patch) <= budget:
            return patch
    need = need_bytes(choices[-1])
    raise StageSettingError(
        f"{tomogram}: {'training on its halves and ' if training else ''}denoising in {choices[-1]}-voxel cubes "
        f"with {params.padding_px} voxels of padding needs "
        f"about {_gb(need)}, over the {_gb(budget)} budget ({source}); lower stages.denoise.params.patch_size_px "
        f"or padding_px, raise stages.denoise.params.memory_budget_gb, or place the stage on Slurm (runs_on)")


def denoise_program(configured: str | None, runs_on: str | dict[str, Any]) -> tuple[str, str]:
    """(program, launch) for Topaz's denoiser: the memory-bounded runner in the recipe's Python interpreter
    (on this worker by default Airflow's own, when it has topaz-em); on Slurm by default `topaz denoise3d` on
    the node's PATH, as cryoem-services' DenoiseSlurm runs it."""
    if configured:
        if isinstance(runs_on, dict) and not Path(configured).name.startswith("python"):
            return configured, "entry_point"
        return configured, "bounded_runner"
    if isinstance(runs_on, dict):
        return "topaz", "entry_point"
    if importlib.util.find_spec("topaz") is None:
        raise ToolChoiceError(f"Topaz is not installed beside Airflow ({TOPAZ_EXTRA}), and the recipe names no "
                              f"Python environment that has it (stages.denoise.params.program)")
    return sys.executable, "bounded_runner"


def _tomogram_of(item: dict[str, Any]) -> tuple[Path, tuple[int, ...], float]:
    """The series' tomogram, its shape and voxel size (Å); ImageFileError names a missing or broken file."""
    path = Path(item["tomogram"]["path"])
    shape = read_mrc_shape(path)
    if len(shape) != 3:
        raise StageSettingError(f"{path}: not a 3D tomogram (shape {shape})")
    return path, shape, read_mrc_pixel_size_a(path)


def _record(item: dict[str, Any], processing_type: str, values: dict[str, Any]) -> None:
    store = results_store(item["results_conn_id"], item["processing_path"])
    store.record_processed_tomogram(item["processing_job_id"], item["tilt_series"]["tilt_series_id"],
                                    {"processing_type": processing_type, **values})


def _project(config: SessionConfig, item: dict[str, Any]) -> RelionProject:
    return relion_project(item["relion_dir"], OpticsGroup.from_session(config), item["relion_dialect"],
                          "tomography")


def denoise_series(config: SessionConfig, params: DenoiseParams, tool: str, runs_on: str | dict[str, Any],
                   item: dict[str, Any]) -> dict[str, Any]:
    """Denoise the item's tomogram with Topaz; `skipped` with the reason if it cannot (see module docstring)."""
    if "skipped" in item or "tomogram" not in item:
        return item
    series = item["tilt_series"]["name"]

    def work() -> dict[str, Any]:
        tomogram, shape, voxel_a = _tomogram_of(item)
        local = not isinstance(runs_on, dict)
        halves = item["tomogram"].get("half_paths") if params.noise2noise is not None else None
        patch = denoise_patch_px(tomogram, shape, params, halves is not None) if local else params.patch_size_px or 96
        program, launch = denoise_program(params.program, runs_on)
        project = _project(config, item)
        gpus = int(runs_on.get("gpus") or 0) if isinstance(runs_on, dict) else 0
        inputs = topaz.TopazDenoiseInputs(
            tomogram_path=str(tomogram), out_dir=str(project.denoised_tomogram_dir()),
            model=params.model or topaz.pretrained_3d_model(voxel_a or config.motion_corrected_pixel_size_a
                                                            * config.tomogram_binning),
            patch_size_px=patch, padding_px=params.padding_px, device=0 if gpus else -1,
            threads=placement_threads(params.threads, runs_on), program=program, launch=launch,
            half_tomogram_paths=tuple(halves) if halves else None,
            **({"training": params.noise2noise} if params.noise2noise is not None else {}))
        Path(inputs.out_dir).mkdir(parents=True, exist_ok=True)
        stage_executor("denoise", tool, runs_on, inputs.out_dir)(topaz.denoise3d_command(inputs))
        denoised = topaz.parse_denoised(inputs)
        image = denoising_comparison(read_mrc(tomogram), read_mrc(denoised["denoised_path"]),
                                     Path(inputs.out_dir) / "images" / f"{series}_raw_vs_denoised.jpg")
        project.add_denoised_tomogram(series, denoised["denoised_path"])  # files first, then the results row
        _record(item, "Denoised", {"path": denoised["denoised_path"], "central_slice": str(image)})
        return item | {"denoised": {"path": denoised["denoised_path"], "model": denoised["model"],
                                    "noise2noise": halves is not None,
                                    "patch_size_px": patch, "padding_px": params.padding_px,
                                    "comparison_image": str(image)}}

    return run_or_skip(item, f"denoise {series}", work)


def checkpoint_of(config: SessionConfig, params: SegmentationParams, runs_on: str | dict[str, Any]) -> str:
    """The membrain-seg checkpoint: the session's, else the recipe's; StageSettingError names the setting
    when neither is set or (on this worker) the file cannot be read."""
    if config.membrain_checkpoint_path:
        setting, value = "the session's membrain_checkpoint_path", config.membrain_checkpoint_path
        path = check_under_roots(value, "membrain_checkpoint_path")
    elif params.checkpoint_path:
        setting, value = "stages.segment.params.checkpoint_path", params.checkpoint_path
        path = Path(value)
    else:
        raise StageSettingError("membrain-seg needs a trained checkpoint (.ckpt; none ships with it): set the "
                                "session's membrain_checkpoint_path or the recipe's "
                                "stages.segment.params.checkpoint_path")
    if not isinstance(runs_on, dict) and not (path.is_file() and os.access(path, os.R_OK)):
        raise StageSettingError(f"{path}: membrain-seg checkpoint ({setting}) is not a readable file")
    return str(path)


def segment_series(config: SessionConfig, params: SegmentationParams, tool: str, runs_on: str | dict[str, Any],
                   item: dict[str, Any]) -> dict[str, Any]:
    """Segment the membranes of the item's denoised tomogram (else its tomogram) with membrain-seg; `skipped`
    with the reason if it cannot (see module docstring)."""
    if "skipped" in item or "tomogram" not in item:
        return item
    series = item["tilt_series"]["name"]

    def work() -> dict[str, Any]:
        checkpoint = checkpoint_of(config, params, runs_on)
        source = Path(item["denoised"]["path"]) if "denoised" in item else _tomogram_of(item)[0]
        shape = read_mrc_shape(source)
        if not isinstance(runs_on, dict):
            budget, where = _budget_bytes(params.memory_budget_gb)
            voxels = 1
            for n in shape:
                voxels *= n
            need = SEGMENT_BASE_BYTES + voxels * SEGMENT_BYTES_PER_VOXEL
            if need > budget:
                raise StageSettingError(
                    f"{source}: membrain-seg holds the whole tomogram ({' × '.join(map(str, shape[::-1]))} voxels) "
                    f"and needs about {_gb(need)}, over the {_gb(budget)} budget ({where}); raise "
                    f"stages.segment.params.memory_budget_gb or place the stage on Slurm (runs_on)")
        project = _project(config, item)
        out_dir = project.segmentation_dir("denoise" if "denoised" in item else "tomograms")
        out_dir.mkdir(parents=True, exist_ok=True)
        inputs = membrain.MembrainInputs(
            tomogram_path=str(source), checkpoint_path=checkpoint, out_dir=str(out_dir),
            rescale_patches=params.rescale_patches, out_pixel_size_a=params.out_pixel_size_a,
            test_time_augmentation=params.test_time_augmentation,
            store_connected_components=params.connected_components,
            connected_component_threshold_voxels=params.connected_component_threshold_voxels,
            segmentation_threshold=params.segmentation_threshold,
            sliding_window_size_px=params.sliding_window_size_px, program=params.program or "membrain")
        stage_executor("segment", tool, runs_on, str(out_dir))(membrain.command(inputs))
        result = membrain.parse_result(inputs)
        labels = read_mrc(result["segmentation_path"])
        if labels.shape != tuple(shape):
            raise StageSettingError(f"{result['segmentation_path']}: segmentation is {labels.shape}, the "
                                    f"tomogram {tuple(shape)}")
        images = out_dir / "images"
        overlay = segmentation_overlay(read_mrc(source), labels, images / f"{series}_membranes.jpg")
        projection = mask_projection(labels, images / f"{series}_membranes_xy.png")
        project.job("segment").add_output(result["segmentation_path"], NodeType.MASK)
        _record(item, "Segmented", {"path": result["segmentation_path"], "central_slice": str(overlay),
                                    "projection_xy": str(projection)})
        keys = ("segmentation_path", "membrane_fraction", "label_count", "membrane_volume_nm3")
        return item | {"segmentation": {**{key: result[key] for key in keys}, "source": str(source),
                                        "overlay_image": str(overlay), "projection_image": str(projection)}}

    return run_or_skip(item, f"segment {series}", work)
