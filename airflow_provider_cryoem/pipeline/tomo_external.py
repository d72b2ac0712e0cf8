"""The tomogram stage with AreTomo2 or IMOD: the tilt stack and angle file they read, the program run where the
recipe places it (this worker or Slurm), its alignment read back into the built-in aligner's result shape.

Both programs get the series' usable tilts (the built-in dark/blank/unreadable checks first) as one MRC stack
in angle order, in `AlignTiltSeries/jobNNN/external/<series>/` as Relion 5 lays out its own AreTomo and IMOD
runs. Their numbers are read as Relion 5 reads them (AlignTiltseriesRunner): AreTomo's .aln rows by 0-based
section, shifts TX/TY in stack pixels; IMOD's .xf as specimen shifts -A⁻¹·D. The tomogram is moved to where
the Tomograms job keeps it, and a binned aligned stack is drawn from the shifts for the montage and movie.
"""
from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SessionConfig
from ..engines.tomo_align import (
    TiltAlignment,
    TiltAlignmentResult,
    TiltAlignmentSettings,
    exclusion_reasons,
    read_tilt_images,
)
from ..engines.tomo_projection import to_axis_frame
from ..engines.tomo_reconstruct import TomogramResult
from ..execution import Execute
from ..io import read_mrc_pixel_size_a, read_mrc_shape, write_mrc
from ..io._atomic import write_text_atomic
from ..io.errors import ImageFileError
from ..recipes.stages import TomogramParams
from ..relion_project import RelionProject
from ..tools import aretomo, imod
from .external import placement_threads, stage_executor

# A refined tilt may differ from the nominal one by one offset for the whole series (AreTomo's -TiltCor);
# rows further than this from that offset belong to another stack.
_TILT_MISMATCH_DEG = 1.0
# The built-in aligner's dark and blank limits, applied before a program sees the stack.
_DEFAULTS = TiltAlignmentSettings.model_fields


@dataclass(frozen=True)
class TiltStack:
    """The stack a program reads: `members[k]` is the series tilt of section k, angles ascending."""

    folder: Path
    name: str
    path: Path
    members: list[int]
    angles_deg: list[float]
    images: np.ndarray
    excluded: dict[int, str]


@dataclass(frozen=True)
class ProgramAlignment:
    """What a program reported, per section of the stack it read."""

    tilt_axis_deg: float
    refined_tilt_deg: dict[int, float]
    shifts_px: dict[int, tuple[float, float]]
    residual_px: dict[int, float]
    dropped: dict[int, str]
    mean_residual_px: float | None
    tomogram_path: Path
    weighting: str


def write_tilt_stack(series: dict[str, Any], folder: Path, stack_name: str, pixel_size_a: float) -> TiltStack:
    """The series' usable tilts, in angle order, as one MRC stack; the rest with their reasons."""
    tilts = series["tilts"]
    images, problems = read_tilt_images([tilt["micrograph"] for tilt in tilts], binning=1)
    reasons = [problem or reason for problem, reason in zip(problems, exclusion_reasons(
        images, _DEFAULTS["dark_fraction"].default, _DEFAULTS["blank_fraction"].default))]
    members = sorted((i for i, reason in enumerate(reasons) if reason is None),
                     key=lambda i: tilts[i]["tilt_angle_deg"])
    if len(members) < 3:
        raise ValueError(f"only {len(members)} usable tilts: {[reason for reason in reasons if reason]}")
    folder.mkdir(parents=True, exist_ok=True)
    path = write_mrc(folder / f"{stack_name}.mrc", images[members], pixel_size_a, is_stack=True)
    return TiltStack(folder=folder, name=series["name"], path=path, members=members,
                     angles_deg=[float(tilts[i]["tilt_angle_deg"]) for i in members], images=images[members],
                     excluded={i: reason for i, reason in enumerate(reasons) if reason is not None})


def _placement_gpus(runs_on: str | dict[str, Any]) -> list[int]:
    return list(range(max(1, int(runs_on["gpus"])))) if isinstance(runs_on, dict) else [0]


def run_aretomo(config: SessionConfig, series: dict[str, Any], stack: TiltStack, params: TomogramParams,
                execute: Execute, runs_on: str | dict[str, Any]) -> ProgramAlignment:
    angle_file = stack.folder / f"{stack.name}.tlt"
    write_text_atomic(angle_file, "".join(f"{angle:.2f}\n" for angle in stack.angles_deg))
    pixel_size_a = config.motion_corrected_pixel_size_a
    inputs = aretomo.AreTomoInputs(
        stack_path=str(stack.path), angle_file_path=str(angle_file),
        tomogram_path=str(stack.folder / f"{stack.name}.mrc"), pixel_size_a=pixel_size_a,
        voltage_kv=config.voltage_kv, cs_mm=config.cs_mm, amplitude_contrast=config.amplitude_contrast,
        dose_per_tilt_e_a2=_dose_per_tilt(config, series["tilts"]), tilt_axis_deg=series["tilt_axis_deg"],
        volume_z_px=max(16, round(config.thickness_nm * 10 / pixel_size_a)),
        output_binning=config.tomogram_binning, weighted_back_projection=params.weighting == "ramp",
        gpu_ids=_placement_gpus(runs_on))
    execute(aretomo.command(inputs))
    aln_path = aretomo.aln_path(inputs)
    parsed = aretomo.parse_aln(aln_path)
    sections = [int(row["section"]) for row in parsed["tilts"]]
    _check_sections(aln_path, sections, [row["tilt_deg"] for row in parsed["tilts"]], stack.angles_deg)
    return ProgramAlignment(
        tilt_axis_deg=parsed["tilt_axis_deg"],
        refined_tilt_deg={k: row["tilt_deg"] for k, row in zip(sections, parsed["tilts"])},
        shifts_px={k: (row["shift_x_px"], row["shift_y_px"]) for k, row in zip(sections, parsed["tilts"])},
        residual_px={}, mean_residual_px=None,
        dropped={k: "dark: removed by AreTomo2 (-DarkTol)" for k in parsed["dark_sections"]},
        tomogram_path=Path(inputs.tomogram_path), weighting="ramp" if params.weighting == "ramp" else "sart")


def run_imod(config: SessionConfig, series: dict[str, Any], stack: TiltStack, params: TomogramParams,
             execute: Execute, runs_on: str | dict[str, Any]) -> ProgramAlignment:
    pixel_size_a = config.motion_corrected_pixel_size_a
    inputs = imod.BatchRunTomoInputs(
        stack_path=str(stack.path), tilt_angles_deg=stack.angles_deg, pixel_size_a=pixel_size_a,
        tilt_axis_deg=series["tilt_axis_deg"], alignment=params.imod_alignment,
        reconstruction="sirt" if params.weighting == "sirt" else "wbp",
        thickness_unbinned_px=max(16, round(config.thickness_nm * 10 / pixel_size_a)),
        output_binning=config.tomogram_binning, fiducial_diameter_nm=params.fiducial_diameter_nm,
        cpus=placement_threads(None, runs_on))
    imod.write_directive_file(inputs)
    execute(imod.batchruntomo_command(inputs))
    result = imod.parse_result(inputs)
    xf_path = stack.folder / f"{imod.dataset_name(inputs)}.xf"
    if not len(result["shifts_px"]) == len(result["tilt_angles_deg"]) == len(stack.members):
        raise ImageFileError(xf_path, f"{len(result['shifts_px'])} transforms and {len(result['tilt_angles_deg'])} "
                                      f"tilt angles for a stack of {len(stack.members)} views")
    _check_sections(xf_path, list(range(len(stack.members))), result["tilt_angles_deg"], stack.angles_deg)
    nm_to_px = 10.0 / pixel_size_a
    return ProgramAlignment(
        tilt_axis_deg=result["tilt_axis_deg"], refined_tilt_deg=dict(enumerate(result["tilt_angles_deg"])),
        shifts_px={k: (shift[0], shift[1]) for k, shift in enumerate(result["shifts_px"])},
        residual_px={view - 1: residual * nm_to_px
                     for view, residual in zip(result["views"], result["view_residual_nm"])},
        dropped={}, mean_residual_px=result["residual_error_mean_nm"] * nm_to_px,
        tomogram_path=Path(result["tomogram_path"]), weighting=inputs.reconstruction.replace("wbp", "ramp"))


PROGRAMS = {"aretomo2": run_aretomo, "imod": run_imod}


def program_tomogram(config: SessionConfig, params: TomogramParams, project: RelionProject, series: dict[str, Any],
                     tool: str, aligner_kind: str, runs_on: str | dict[str, Any]
                     ) -> tuple[TiltAlignmentResult, TomogramResult]:
    """Align and reconstruct the series with `tool`; results shaped as the built-in path's."""
    folder = project.job(aligner_kind).path / "external" / series["name"]
    stack = write_tilt_stack(series, folder, f"{series['name']}_tilts" if tool == "aretomo2" else series["name"],
                             config.motion_corrected_pixel_size_a)
    execute = stage_executor("tomogram", tool, runs_on, str(folder))
    reported = PROGRAMS[tool](config, series, stack, params, execute, runs_on)
    alignment = _alignment_result(config, series, stack, reported, folder / f"{series['name']}_aligned.mrc")
    tomogram_path = project.tomogram_path(series["name"])
    tomogram_path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(reported.tomogram_path, tomogram_path)
    nz, ny, nx = read_mrc_shape(tomogram_path)
    pixel_size_a = read_mrc_pixel_size_a(tomogram_path) or \
        config.motion_corrected_pixel_size_a * config.tomogram_binning
    return alignment, TomogramResult(
        tomogram_path=str(tomogram_path), shape=(nz, ny, nx), pixel_size_a=pixel_size_a, thickness_px=nz,
        n_tilts=len(alignment.aligned_tilt_angles_deg), weighting=reported.weighting, ctf_phase_flipped=False)


def _dose_per_tilt(config: SessionConfig, tilts: Sequence[dict[str, Any]]) -> float:
    if config.dose_per_tilt_e_a2:
        return config.dose_per_tilt_e_a2
    return config.dose_per_frame_e_a2 * statistics.median(tilt["frame_count"] for tilt in tilts)


def _check_sections(path: Path, sections: Sequence[int], refined_deg: Sequence[float],
                    stack_angles_deg: Sequence[float]) -> None:
    """Refuse output that cannot belong to the stack given: unknown sections, or refined tilts that do not
    follow the stack's angles up to one offset."""
    if any(not 0 <= k < len(stack_angles_deg) for k in sections):
        raise ImageFileError(path, f"sections {sorted(sections)} outside the stack's 0..{len(stack_angles_deg) - 1}")
    offsets = [refined - stack_angles_deg[k] for k, refined in zip(sections, refined_deg)]
    offset = statistics.median(offsets)
    if any(abs(value - offset) > _TILT_MISMATCH_DEG for value in offsets):
        raise ImageFileError(path, "refined tilt angles do not follow the stack's tilt angles: not this stack's "
                                   "alignment")


def _alignment_result(config: SessionConfig, series: dict[str, Any], stack: TiltStack, reported: ProgramAlignment,
                      aligned_stack_path: Path) -> TiltAlignmentResult:
    """Per series tilt: the program's numbers for its section, or why it was left out; and the aligned,
    binned stack of the kept sections drawn from them (the montage and movie are made from it)."""
    section_of = {member: k for k, member in enumerate(stack.members)}
    kept = [k for k in range(len(stack.members)) if k in reported.shifts_px and k not in reported.dropped]
    if len(kept) < 3:
        raise ValueError(f"the program kept {len(kept)} tilts of {len(stack.members)}")
    binning = config.tomogram_binning
    aligned = np.stack([to_axis_frame(stack.images[k], reported.tilt_axis_deg, reported.shifts_px[k],
                                      binning=binning) for k in kept])
    pixel_size_a = config.motion_corrected_pixel_size_a * binning
    write_mrc(aligned_stack_path, aligned, pixel_size_a, is_stack=True)
    position = {k: index for index, k in enumerate(kept)}
    tilts = []
    for i, tilt in enumerate(series["tilts"]):
        nominal = float(tilt["tilt_angle_deg"])
        k = section_of.get(i)
        reason = stack.excluded.get(i) or (reported.dropped.get(k, "not in the program's alignment")
                                           if k not in position else None)
        tilts.append(TiltAlignment(
            nominal_tilt_angle_deg=nominal,
            refined_tilt_angle_deg=reported.refined_tilt_deg.get(k, nominal) if k is not None else nominal,
            shift_px=reported.shifts_px.get(k, (0.0, 0.0)) if k is not None else (0.0, 0.0),
            residual_px=reported.residual_px.get(k) if k is not None else None, excluded=reason is not None,
            exclusion_reason=reason, stack_index=position.get(k) if k is not None else None,
            micrograph_path=tilt["micrograph"]))
    return TiltAlignmentResult(
        tilts=tilts, nominal_tilt_axis_deg=series["tilt_axis_deg"], tilt_axis_deg=reported.tilt_axis_deg,
        aligned_tilt_angles_deg=[stack.angles_deg[k] for k in kept], aligned_pixel_size_a=pixel_size_a,
        mean_residual_px=reported.mean_residual_px, aligned_stack_path=str(aligned_stack_path))
