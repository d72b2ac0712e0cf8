"""membrain-seg (Lamm et al. 2024) membrane segmentation of a tomogram: `membrain segment` and its output.

Flags are membrain-seg's typer CLI (boolean options come as --x / --no-x pairs, as cryoem-services
passes them, notes §1). The output is `<out>/<tomogram stem>_<checkpoint token>_segmented.mrc`, the
token being the checkpoint file name cut before '-val_loss' (so it keeps '.ckpt' otherwise): a binary
int8 volume, or connected-component labels 1..n with --store-connected-components; probabilities
go to `<stem>_scores.mrc` with --store-probabilities.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.recipes.stages import checked_window_px
from airflow_provider_cryoem.io.errors import ImageFileError
from airflow_provider_cryoem.io.mrc import read_mrc, read_mrc_pixel_size_a


class MembrainInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tomogram_path: str = Field(min_length=1)
    checkpoint_path: str = Field(min_length=1, description="Trained model (.ckpt), e.g. MemBrain_seg_v10_alpha.ckpt.")
    out_dir: str = Field(min_length=1)
    rescale_patches: bool = Field(True, description="Rescale patches to out_pixel_size_a on the fly (cryoem-services "
                                                    "default; membrain's own default is off).")
    in_pixel_size_a: float | None = Field(None, gt=0, description="Default: the tomogram header's voxel size.")
    out_pixel_size_a: float = Field(10.0, gt=0, description="Pixel size the network was trained at (10 Å).")
    test_time_augmentation: bool = Field(False, description="8-fold mirroring: slightly better, 8× slower.")
    store_probabilities: bool = False
    store_connected_components: bool = False
    connected_component_threshold_voxels: int | None = Field(None, ge=1,
                                                             description="Drop components smaller than this.")
    segmentation_threshold: float | None = Field(None, description="Membrane score cut-off (membrain default 0).")
    sliding_window_size_px: int = Field(160, ge=32, le=1024)
    program: str = "membrain"

    @field_validator("sliding_window_size_px")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        return checked_window_px(value)


def _switch(name: str, on: bool) -> str:
    return f"--{name}" if on else f"--no-{name}"


def command(inputs: MembrainInputs) -> CommandSpec:
    args = ["segment", "--tomogram-path", inputs.tomogram_path, "--ckpt-path", inputs.checkpoint_path,
            "--out-folder", inputs.out_dir, _switch("rescale-patches", inputs.rescale_patches),
            "--out-pixel-size", f"{inputs.out_pixel_size_a:g}",
            "--sliding-window-size", str(inputs.sliding_window_size_px),
            _switch("test-time-augmentation", inputs.test_time_augmentation),
            _switch("store-probabilities", inputs.store_probabilities),
            _switch("store-connected-components", inputs.store_connected_components)]
    if inputs.in_pixel_size_a is not None:
        args += ["--in-pixel-size", f"{inputs.in_pixel_size_a:g}"]
    if inputs.connected_component_threshold_voxels is not None:
        args += ["--connected-component-thres", str(inputs.connected_component_threshold_voxels)]
    if inputs.segmentation_threshold is not None:
        args += ["--segmentation-threshold", f"{inputs.segmentation_threshold:g}"]
    return CommandSpec(program=inputs.program, args=args, cwd=inputs.out_dir, gpus=1,
                       log_path=str(Path(inputs.out_dir) / f"{Path(inputs.tomogram_path).stem}_membrain.log"))


def segmentation_path(inputs: MembrainInputs) -> Path:
    checkpoint_token = Path(inputs.checkpoint_path).name.split("-val_loss")[0]
    return Path(inputs.out_dir) / f"{Path(inputs.tomogram_path).stem}_{checkpoint_token}_segmented.mrc"


def scores_path(inputs: MembrainInputs) -> Path:
    return Path(inputs.out_dir) / f"{Path(inputs.tomogram_path).stem}_scores.mrc"


def parse_segmentation(path: str | Path) -> dict[str, Any]:
    """Membrane voxel count and fraction of a segmentation volume, and its number of non-zero labels (1 for a
    binary segmentation, the number of connected components with --store-connected-components)."""
    path = Path(path)
    volume = read_mrc(path)
    if volume.ndim != 3:
        raise ImageFileError(path, f"expected a 3D segmentation volume, got shape {volume.shape}")
    if not np.issubdtype(volume.dtype, np.integer) and not np.array_equal(volume, np.round(volume)):
        raise ImageFileError(path, f"not a segmentation: non-integer {volume.dtype} values (a score map?)")
    if volume.min() < 0:
        raise ImageFileError(path, "not a segmentation: negative labels")
    membrane_voxels = int(np.count_nonzero(volume))
    labels = np.unique(volume)
    voxel_size_a = read_mrc_pixel_size_a(path)
    return {"segmentation_path": str(path), "shape_zyx_px": list(volume.shape),
            "membrane_voxel_count": membrane_voxels, "membrane_fraction": membrane_voxels / volume.size,
            "label_count": int(np.count_nonzero(labels)), "voxel_size_a": voxel_size_a,
            "membrane_volume_nm3": membrane_voxels * (voxel_size_a / 10) ** 3 if voxel_size_a > 0 else None}


def parse_result(inputs: MembrainInputs) -> dict[str, Any]:
    """The expected segmentation's statistics; a missing file names the path membrain-seg should have written."""
    path = segmentation_path(inputs)
    if not path.is_file():
        raise ImageFileError(path, "membrain-seg segmentation not found (did `membrain segment` finish?)")
    result = parse_segmentation(path)
    if scores_path(inputs).is_file():
        result["scores_path"] = str(scores_path(inputs))
    return result
