"""Relion's Laplacian-of-Gaussian picker (relion_autopick --LoG) on micrographs of a project."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cryoem.execution.spec import CommandSpec

from ._relion_star import loop_block, numeric_column, output_for, write_optics_star


class RelionAutopickInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_dir: str = Field(min_length=1)
    micrograph_paths: list[str] = Field(min_length=1, description="Relative to the project folder.")
    job_dir: str = "AutoPick/job004"
    pixel_size_a: float = Field(gt=0)
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    min_diameter_a: float = Field(gt=0)
    max_diameter_a: float = Field(gt=0)
    threshold_adjust: float = Field(0.0, description="--LoG_adjust_threshold (higher = fewer picks).")
    upper_threshold: float = Field(999.0, description="--LoG_upper_threshold (drops very strong blobs).")
    lowpass_a: float = Field(20.0, gt=0)
    threads: int = Field(1, ge=1)
    program: str = "relion_autopick"


def command(inputs: RelionAutopickInputs) -> CommandSpec:
    """Write the micrographs STAR and return the LoG picking command."""
    star = Path(inputs.project_dir) / inputs.job_dir / "micrographs_input.star"
    write_optics_star(star, "micrographs", "rlnMicrographName", inputs.micrograph_paths, inputs.pixel_size_a,
                      inputs.voltage_kv, inputs.cs_mm, inputs.amplitude_contrast, micrograph_pixel_size=True)
    args = ["--i", str(star.relative_to(inputs.project_dir)), "--odir", inputs.job_dir.rstrip("/") + "/",
            "--pickname", "autopick", "--LoG", "--LoG_diam_min", f"{inputs.min_diameter_a:g}",
            "--LoG_diam_max", f"{inputs.max_diameter_a:g}", "--LoG_adjust_threshold", f"{inputs.threshold_adjust:g}",
            "--LoG_upper_threshold", f"{inputs.upper_threshold:g}", "--lowpass", f"{inputs.lowpass_a:g}",
            "--shrink", "0", "--j", str(inputs.threads)]
    return CommandSpec(program=inputs.program, args=args, cwd=inputs.project_dir, threads=inputs.threads)


def coordinates_path(inputs: RelionAutopickInputs, micrograph_path: str) -> Path:
    return output_for(Path(inputs.project_dir) / inputs.job_dir, micrograph_path, "_autopick.star")


def parse_coordinates(path: str | Path) -> dict[str, Any]:
    """Picks of one micrograph, strongest first (engine keys coordinates_px, figures_of_merit)."""
    table = loop_block(path, "", ("rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"))
    merit = numeric_column(path, table, "", "rlnAutopickFigureOfMerit")
    order = np.argsort(-merit, kind="stable")
    coordinates = np.column_stack([numeric_column(path, table, "", column)
                                   for column in ("rlnCoordinateX", "rlnCoordinateY")])[order]
    return {"coordinates_px": coordinates.tolist(), "figures_of_merit": merit[order].tolist(),
            "particle_count": int(order.size), "coordinates_star": str(path)}
