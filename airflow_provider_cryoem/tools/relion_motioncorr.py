"""Relion's own motion correction (relion_run_motioncorr --use_own) on one movie.

Relion 3.1 reads a movies STAR file, so the command comes with the one-movie STAR it needs. Shifts
come from the per-movie STAR's `global_shift` block; measured on simulated movies, Relion reports
the shift that aligns each frame, the negative of the specimen displacement used here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cryoem.execution.spec import CommandSpec

from ._motion import motion_result
from ._relion_star import loop_block, numeric_column, output_for, write_optics_star


class RelionMotionInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_dir: str = Field(min_length=1, description="Relion project folder (the working directory).")
    movie_path: str = Field(min_length=1, description="Movie, relative to the project folder.")
    job_dir: str = Field("MotionCorr/job002", description="Output job folder, relative to the project.")
    pixel_size_a: float = Field(gt=0)
    dose_per_frame_e_a2: float = Field(gt=0)
    voltage_kv: float = Field(300.0, ge=60, le=400)
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    pre_exposure_e_a2: float = Field(0.0, ge=0)
    gain_reference_path: str | None = None
    gain_rotation: Literal[0, 1, 2, 3] = 0
    gain_flip: Literal[0, 1, 2] = 0
    defect_file_path: str | None = None
    eer_grouping: int = Field(20, ge=1)
    bin_factor: Literal[1, 2] = 1
    bfactor_a2: float = Field(150.0, ge=0)
    patches_x: int = Field(5, ge=1, le=20)
    patches_y: int = Field(5, ge=1, le=20)
    threads: int = Field(1, ge=1)
    program: str = "relion_run_motioncorr"


def movies_star_path(inputs: RelionMotionInputs) -> Path:
    return Path(inputs.project_dir) / inputs.job_dir / "movie_input.star"


def command(inputs: RelionMotionInputs) -> CommandSpec:
    """Write the one-movie input STAR and return the relion_run_motioncorr command for it."""
    star = movies_star_path(inputs)
    write_optics_star(star, "movies", "rlnMicrographMovieName", [inputs.movie_path], inputs.pixel_size_a,
                      inputs.voltage_kv, inputs.cs_mm, inputs.amplitude_contrast, micrograph_pixel_size=False)
    args = ["--i", str(star.relative_to(inputs.project_dir)), "--o", inputs.job_dir.rstrip("/") + "/",
            "--use_own", "--j", str(inputs.threads), "--bin_factor", str(inputs.bin_factor),
            "--bfactor", f"{inputs.bfactor_a2:g}", "--dose_per_frame", f"{inputs.dose_per_frame_e_a2:g}",
            "--preexposure", f"{inputs.pre_exposure_e_a2:g}", "--patch_x", str(inputs.patches_x),
            "--patch_y", str(inputs.patches_y), "--eer_grouping", str(inputs.eer_grouping),
            "--dose_weighting"]
    if inputs.gain_reference_path:
        args += ["--gainref", inputs.gain_reference_path, "--gain_rot", str(inputs.gain_rotation),
                 "--gain_flip", str(inputs.gain_flip)]
    if inputs.defect_file_path:
        args += ["--defect_file", inputs.defect_file_path]
    return CommandSpec(program=inputs.program, args=args, cwd=inputs.project_dir, threads=inputs.threads)


def parse_result(inputs: RelionMotionInputs) -> dict[str, Any]:
    """Motion result from `<job>/<movie>.star` (block global_shift); micrograph path is absolute."""
    job_dir = Path(inputs.project_dir) / inputs.job_dir
    star = output_for(job_dir, inputs.movie_path, ".star")
    shifts = loop_block(star, "global_shift", ("rlnMicrographShiftX", "rlnMicrographShiftY"))
    displacement_px = -np.column_stack([numeric_column(star, shifts, "global_shift", column)
                                        for column in ("rlnMicrographShiftX", "rlnMicrographShiftY")])
    # Relion writes shifts in unbinned movie pixels.
    return motion_result(displacement_px, inputs.pixel_size_a, inputs.dose_per_frame_e_a2,
                         str(output_for(job_dir, inputs.movie_path, ".mrc")))
