"""Per-movie stage steps with the built-in engines: session settings + recipe params + upstream results in,
the engine's result (as a JSON-able dict) out, files written into the session's Relion project jobs."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..config import SessionConfig
from ..engines.ctf import CtfInputs, run_ctf_estimation
from ..engines.extract import ExtractionInputs, run_extraction
from ..engines.motion import MotionCorrectionInputs, run_motion_correction
from ..engines.picking import PickingInputs, run_picking
from ..relion_project import RelionProject


# A tilt's per-movie outputs go to the tomography jobs of the same programs.
_TOMO_TWINS = {"motioncorr": "tomo_motioncorr", "ctffind": "tomo_ctffind"}


@dataclass(frozen=True)
class MovieContext:
    """What one stage needs to process one movie."""

    item: dict[str, Any]
    config: SessionConfig
    params: BaseModel
    upstream: dict[str, dict[str, Any]]
    project: RelionProject
    runs_on: str | dict[str, Any] = "local"  # where the stage's programs run: "local" or a Slurm placement

    @property
    def movie_path(self) -> Path:
        return Path(self.item["watch_dir"]) / self.item["movie"]

    def output(self, job_kind: str, suffix: str) -> Path:
        """Where a stage writes its file for this movie in the Relion job `job_kind` (its tomography twin for
        a tilt), mirroring the movie's sub-folders below the watched folder (as cryoem-services does)."""
        if self.item["experiment"] == "tomography":
            job_kind = _TOMO_TWINS.get(job_kind, job_kind)
        return self.project.job(job_kind).file_for(self.movie_path, suffix, source_root=self.item["watch_dir"])


def available_cores() -> int:
    """Cores this worker may use (its CPU affinity, e.g. a Slurm or container allocation)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_motioncorr(ctx: MovieContext) -> dict[str, Any]:
    config, params = ctx.config, ctx.params
    inputs = MotionCorrectionInputs(
        movie_path=str(ctx.movie_path),
        output_path=str(ctx.output("motioncorr", ".mrc")),
        pixel_size_a=config.pixel_size_a,
        dose_per_frame_e_a2=config.dose_per_frame_e_a2,
        voltage_kv=config.voltage_kv,
        gain_reference_path=config.gain_reference_path,
        gain_rotation=config.gain_rotation,
        gain_flip=config.gain_flip,
        defect_file_path=config.defect_file_path,
        eer_grouping=config.eer_grouping,
        bin_factor=2 if config.super_resolution else 1,
        patches_x=params.patches_x,
        patches_y=params.patches_y,
        bfactor_a2=params.bfactor_a2,
        iterations=params.iterations,
        tolerance_px=params.tolerance_px,
        threads=available_cores(),
        even_odd_sums=params.even_odd_sums and ctx.item["experiment"] == "tomography",
    )
    return run_motion_correction(inputs).model_dump(mode="json")


def run_ctf(ctx: MovieContext) -> dict[str, Any]:
    config, params = ctx.config, ctx.params
    inputs = CtfInputs(
        micrograph_path=ctx.upstream["motioncorr"]["micrograph"],
        diagnostic_path=str(ctx.output("ctffind", ".ctf")),
        pixel_size_a=config.motion_corrected_pixel_size_a,
        voltage_kv=config.voltage_kv,
        cs_mm=config.cs_mm,
        amplitude_contrast=config.amplitude_contrast,
        box_size_px=params.tile_size_px,
        min_resolution_a=params.min_resolution_a,
        max_resolution_a=params.max_resolution_a,
        min_defocus_a=params.min_defocus_a,
        max_defocus_a=params.max_defocus_a,
        find_phase_shift=params.find_phase_shift,
        fft_workers=available_cores(),
    )
    return run_ctf_estimation(inputs).model_dump(mode="json")


def run_pick(ctx: MovieContext) -> dict[str, Any]:
    config, params = ctx.config, ctx.params
    inputs = PickingInputs(
        micrograph_path=ctx.upstream["motioncorr"]["micrograph"],
        pixel_size_a=config.motion_corrected_pixel_size_a,
        particle_diameter_a=config.particle_diameter_a,
        threshold=params.threshold,
        adaptive_threshold=params.adaptive_threshold,
        min_distance_a=params.min_distance_a,
        edge_exclusion_a=params.edge_exclusion_a,
        max_particles=params.max_particles,
        summary_image_path=str(ctx.output("autopick", "_picks.jpg")),
    )
    return run_picking(inputs).model_dump(mode="json")


def run_extract(ctx: MovieContext) -> dict[str, Any]:
    config, params = ctx.config, ctx.params
    ctf = ctx.upstream["ctf"]
    inputs = ExtractionInputs(
        micrograph_path=ctx.upstream["motioncorr"]["micrograph"],
        coordinates_star_path=ctx.upstream["pick"]["coordinates_star"],
        pixel_size_a=config.motion_corrected_pixel_size_a,
        box_px=config.extraction_box_px,
        downscaled_box_px=config.downscaled_box_px,
        invert_contrast=params.invert_contrast,
        normalise=params.normalise,
        phase_flip=params.phase_flip,
        voltage_kv=config.voltage_kv,
        cs_mm=config.cs_mm,
        amplitude_contrast=config.amplitude_contrast,
        defocus_u_a=ctf["defocus_u_a"],
        defocus_v_a=ctf["defocus_v_a"],
        defocus_angle_deg=ctf["astigmatism_angle_deg"],
        phase_shift_deg=ctf["phase_shift_deg"],
        ctf_max_resolution_a=ctf["fit_resolution_a"],
        ctf_figure_of_merit=ctf["cc"],
        output_stack_path=str(ctx.output("extract", ".mrcs")),
        output_star_path=str(ctx.output("extract", "_extract.star")),
        relion_project_dir=str(ctx.project.root),
    )
    return run_extraction(inputs).model_dump(mode="json")


BUILTIN_RUNNERS: dict[str, Callable[[MovieContext], dict[str, Any]]] = {
    "motioncorr": run_motioncorr,
    "ctf": run_ctf,
    "pick": run_pick,
    "extract": run_extract,
}
