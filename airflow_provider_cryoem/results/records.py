"""From an engine's result (dict or pydantic model) to the column values of one results row.

Each stage has a field map `column -> Field(result key, required, default)`; values are checked and
converted to the column's Python type here, so a bad result fails with the stage and key named before
any SQL runs (numpy scalars and Paths become plain floats, ints and strings).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Table

from .errors import ResultsInputError

ResultLike = Mapping[str, Any] | BaseModel


@dataclass(frozen=True)
class Field:
    key: str
    required: bool = True
    default: Any = None


def _opt(key: str, default: Any = None) -> Field:
    return Field(key, required=False, default=default)


MOTION_CORRECTION = {
    "first_frame": _opt("first_frame", 1),
    "last_frame": Field("n_frames"),
    "dose_per_frame_e_a2": _opt("dose_per_frame_e_a2"),
    "total_motion_a": Field("total_motion_a"),
    "early_motion_a": Field("early_motion_a"),
    "late_motion_a": Field("late_motion_a"),
    "average_motion_per_frame_a": Field("average_motion_per_frame_a"),
    "micrograph_full_path": Field("micrograph"),
    "drift_plot_full_path": _opt("drift_plot"),
    "micrograph_snapshot_full_path": _opt("snapshot"),
    "patches_used_x": _opt("patches_used_x"),
    "patches_used_y": _opt("patches_used_y"),
}
CTF = {
    "defocus_u_a": Field("defocus_u_a"),
    "defocus_v_a": Field("defocus_v_a"),
    "astigmatism_angle_deg": Field("astigmatism_angle_deg"),
    "astigmatism_a": Field("astigmatism_a"),
    "estimated_resolution_a": Field("fit_resolution_a"),
    "cc_value": _opt("cc"),
    "amplitude_contrast": _opt("amplitude_contrast"),
    "ice_ring_density": _opt("ice_ring_density"),
    "fft_theoretical_full_path": _opt("diagnostic_image"),
}
PARTICLE_PICKER = {
    "number_of_particles": Field("particle_count"),
    "particle_diameter_a": _opt("diameter_a"),
    "particle_picking_template": _opt("picking_template"),
    "summary_image_full_path": _opt("summary_image"),
    "coordinates_full_path": _opt("coordinates_star"),
}
RELATIVE_ICE_THICKNESS = {name: Field(name) for name in ("minimum", "q1", "median", "q3", "maximum")}
PARTICLE_CLASSIFICATION_GROUP = {
    "type": Field("type"),
    "batch_number": Field("batch_number"),
    "number_of_particles_per_batch": Field("particles_per_batch"),
    "number_of_classes_per_batch": Field("classes_per_batch"),
    "symmetry": _opt("symmetry", "C1"),
    "binned_pixel_size_a": _opt("binned_pixel_size_a"),
}
PARTICLE_CLASSIFICATION = {
    "class_number": Field("class_number"),
    "class_image_full_path": _opt("image"),
    "particles_per_class": Field("particles_per_class"),
    "class_distribution": Field("class_distribution"),
    "rotation_accuracy_deg": _opt("rotation_accuracy_deg"),
    "translation_accuracy_a": _opt("translation_accuracy_a"),
    "estimated_resolution_a": _opt("estimated_resolution_a"),
    "overall_fourier_completeness": _opt("overall_fourier_completeness"),
    "selected": _opt("selected", False),
}
CRYOEM_INITIAL_MODEL = {
    "resolution_a": Field("resolution_a"),
    "number_of_particles": Field("number_of_particles"),
}
REFINEMENT = {
    "symmetry": _opt("symmetry", "C1"),
    "class_number": _opt("class_number"),
    "estimated_resolution_a": Field("resolution_a"),
    "b_factor_a2": _opt("bfactor_a2"),
    "number_of_particles": Field("number_of_particles"),
    "map_full_path": _opt("map"),
    "pixel_size_a": _opt("pixel_size_a"),
}
BFACTOR_FIT = {
    "number_of_particles": Field("number_of_particles"),
    "resolution_a": Field("resolution_a"),
    "particle_batch_size": _opt("particle_batch_size"),
    "pixel_size_a": _opt("pixel_size_a"),
}
TOMOGRAM = {
    "volume_file": Field("volume"),
    "stack_file": _opt("stack"),
    "size_x_px": _opt("size_x_px"),
    "size_y_px": _opt("size_y_px"),
    "size_z_px": _opt("size_z_px"),
    "pixel_size_a": Field("pixel_size_a"),
    "tilt_axis_deg": _opt("tilt_axis_deg"),
    "tilt_angle_offset_deg": _opt("tilt_angle_offset_deg"),
    "residual_error_mean_px": _opt("mean_residual_px"),
    "residual_error_sd_px": _opt("residual_sd_px"),
    "central_slice_image": _opt("central_slice"),
    "projection_xy_image": _opt("projection_xy"),
    "projection_xz_image": _opt("projection_xz"),
    "tilt_series_movie": _opt("movie"),
    "alignment_plot": _opt("alignment_plot"),
}
PROCESSED_TOMOGRAM = {
    "processing_type": Field("processing_type"),
    "file_path": Field("path"),
    "central_slice_image": _opt("central_slice"),
    "projection_xy_image": _opt("projection_xy"),
}
# Shifts as tools/aretomo.parse_aln names them; an excluded tilt may leave the alignment values out.
TILT_IMAGE_ALIGNMENT = {
    "movie_id": Field("movie_id"),
    "refined_tilt_angle_deg": _opt("refined_tilt_angle_deg"),
    "refined_tilt_axis_deg": _opt("tilt_axis_deg"),
    "shift_x_px": _opt("shift_x_px"),
    "shift_y_px": _opt("shift_y_px"),
    "residual_error_px": _opt("residual_px"),
    "excluded": _opt("excluded", False),
    "exclusion_reason": _opt("exclusion_reason"),
}


def as_mapping(result: ResultLike) -> Mapping[str, Any]:
    """A pydantic model as its field dict; a mapping as it is."""
    return result.model_dump() if isinstance(result, BaseModel) else result


def row_values(stage: str, table: Table, result: ResultLike, fields: Mapping[str, Field]) -> dict[str, Any]:
    """The checked column values for `table` taken from `result` (keys not in `fields` are ignored)."""
    data = as_mapping(result)
    if not isinstance(data, Mapping):
        raise ResultsInputError(stage, "*", f"expected a dict or pydantic model, got {type(result).__name__}")
    values: dict[str, Any] = {}
    for column, field in fields.items():
        raw = data.get(field.key)
        if raw is None:
            if field.required:
                raise ResultsInputError(stage, field.key, "missing")
            values[column] = field.default
            continue
        values[column] = _convert(stage, field.key, raw, table.c[column].type.python_type)
    return values


def _convert(stage: str, key: str, raw: Any, python_type: type) -> Any:
    if python_type is str:
        if not isinstance(raw, (str, PurePath)):
            raise ResultsInputError(stage, key, f"expected a path or text, got {type(raw).__name__}")
        return str(raw)
    if python_type is bool:
        if not isinstance(raw, bool) and raw not in (0, 1):
            raise ResultsInputError(stage, key, f"expected true/false, got {raw!r}")
        return bool(raw)
    try:
        number = float(raw)
    except (TypeError, ValueError):
        raise ResultsInputError(stage, key, f"expected a number, got {raw!r}") from None
    if not math.isfinite(number):
        raise ResultsInputError(stage, key, f"not a finite number: {raw!r}")
    if python_type is int:
        if number != int(number):
            raise ResultsInputError(stage, key, f"expected a whole number, got {raw!r}")
        return int(number)
    return number

