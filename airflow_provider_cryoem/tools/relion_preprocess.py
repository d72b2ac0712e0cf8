"""Relion particle extraction (relion_preprocess --extract) from picked coordinates."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.io import read_star
from airflow_provider_cryoem.io.errors import ImageFileError

from ._relion_star import loop_block, numeric_column, write_optics_star


class RelionExtractInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_dir: str = Field(min_length=1)
    micrograph_paths: list[str] = Field(min_length=1, description="Relative to the project folder.")
    coordinates_dir: str = Field(description="Picking job folder, e.g. AutoPick/job004/.")
    coordinates_suffix: str = "_autopick.star"
    job_dir: str = "Extract/job005"
    pixel_size_a: float = Field(gt=0)
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    box_px: int = Field(ge=16, le=4096)
    downscaled_box_px: int | None = Field(None, ge=16, le=4096)
    bg_radius_px: int | None = Field(None, ge=1, description="In the final box; default round(0.375 × box).")
    invert_contrast: bool = True
    normalise: bool = True
    program: str = "relion_preprocess"

    @model_validator(mode="after")
    def _even_boxes(self) -> "RelionExtractInputs":
        for name in ("box_px", "downscaled_box_px"):
            value = getattr(self, name)
            if value is not None and value % 2:
                raise ValueError(f"{name} must be even, got {value}")
        return self


def command(inputs: RelionExtractInputs) -> CommandSpec:
    """Write the micrographs STAR (Relion 3.1 --coord_dir/--coord_suffix form) and the extraction command."""
    star = Path(inputs.project_dir) / inputs.job_dir / "micrographs_input.star"
    write_optics_star(star, "micrographs", "rlnMicrographName", inputs.micrograph_paths, inputs.pixel_size_a,
                      inputs.voltage_kv, inputs.cs_mm, inputs.amplitude_contrast, micrograph_pixel_size=True)
    final_box_px = inputs.downscaled_box_px or inputs.box_px
    job = inputs.job_dir.rstrip("/") + "/"
    args = ["--i", str(star.relative_to(inputs.project_dir)), "--coord_dir", inputs.coordinates_dir.rstrip("/") + "/",
            "--coord_suffix", inputs.coordinates_suffix, "--part_star", f"{job}particles.star", "--part_dir", job,
            "--extract", "--extract_size", str(inputs.box_px)]
    if inputs.downscaled_box_px:
        args += ["--scale", str(inputs.downscaled_box_px)]
    if inputs.normalise:
        args += ["--norm", "--bg_radius", str(inputs.bg_radius_px or round(0.375 * final_box_px)),
                 "--white_dust", "-1", "--black_dust", "-1"]
    if inputs.invert_contrast:
        args.append("--invert_contrast")
    return CommandSpec(program=inputs.program, args=args, cwd=inputs.project_dir)


def parse_particles(path: str | Path) -> dict[str, Any]:
    """Count, stacks, final pixel size and box of an extraction's particles.star (engine keys)."""
    particles = loop_block(path, "particles", ("rlnImageName", "rlnCoordinateX", "rlnCoordinateY"))
    optics = read_star(path).get("optics")
    if optics is None or optics.empty or "rlnImagePixelSize" not in optics or "rlnImageSize" not in optics:
        raise ImageFileError(path, "data_optics lacks rlnImagePixelSize / rlnImageSize")
    pixel_size_a, box_px = (numeric_column(path, optics, "optics", column)[0]
                            for column in ("rlnImagePixelSize", "rlnImageSize"))
    if not (math.isfinite(pixel_size_a) and math.isfinite(box_px)):
        raise ImageFileError(path, "data_optics: rlnImagePixelSize or rlnImageSize is NaN or infinite")
    names = particles["rlnImageName"].astype(str)
    unnamed = np.flatnonzero(~names.str.contains("@", regex=False).to_numpy())
    if unnamed.size:
        raise ImageFileError(path, f"data_particles: _rlnImageName in row {unnamed[0] + 1} is not "
                                   "'<index>@<stack>'")
    stacks = sorted({name.split("@", 1)[1] for name in names})
    return {"particle_count": len(particles), "star": str(path), "stacks": stacks,
            "image_pixel_size_a": float(pixel_size_a), "box_px": int(box_px)}


def parse_result(inputs: RelionExtractInputs) -> dict[str, Any]:
    return parse_particles(Path(inputs.project_dir) / inputs.job_dir / "particles.star")
