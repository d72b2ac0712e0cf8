"""Topaz (Bepler et al. 2019) particle picking with a pretrained detector: preprocess, extract, parse.

Topaz picks on a downsampled, normalised copy; `topaz extract` writes a tab-separated table
(image_name, x_coord, y_coord, score) in those downsampled pixels, scaled back here.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.io.errors import ImageFileError

_COLUMNS = ("image_name", "x_coord", "y_coord", "score")


class TopazInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    micrograph_path: str = Field(min_length=1)
    job_dir: str = Field(min_length=1)
    pixel_size_a: float = Field(gt=0)
    particle_diameter_a: float = Field(gt=0)
    scale: int = Field(8, ge=1, le=32, description="Downsampling factor for picking (-s).")
    threshold: float = Field(-3.0, description="Log-likelihood ratio cut-off (-t).")
    model: str = Field("resnet16", description="Pretrained model name or a trained model file (-m).")
    program: str = "topaz"


def preprocessed_path(inputs: TopazInputs) -> Path:
    return Path(inputs.job_dir) / "preprocessed" / Path(inputs.micrograph_path).name


def picks_path(inputs: TopazInputs) -> Path:
    return Path(inputs.job_dir) / f"{Path(inputs.micrograph_path).stem}_topaz.txt"


def preprocess_command(inputs: TopazInputs) -> CommandSpec:
    return CommandSpec(program=inputs.program, cwd=inputs.job_dir, args=[
        "preprocess", "-s", str(inputs.scale), "-o", str(preprocessed_path(inputs).parent), inputs.micrograph_path])


def extract_command(inputs: TopazInputs) -> CommandSpec:
    """Extraction radius = particle radius in downsampled pixels (Topaz's non-maximum suppression)."""
    radius_px = max(1, round(inputs.particle_diameter_a / 2 / inputs.pixel_size_a / inputs.scale))
    return CommandSpec(program=inputs.program, cwd=inputs.job_dir, args=[
        "extract", "-m", inputs.model, "-r", str(radius_px), "-t", f"{inputs.threshold:g}",
        "-o", str(picks_path(inputs)), str(preprocessed_path(inputs))])


def parse_picks(path: str | Path, scale: int) -> dict[str, Any]:
    """Picks in micrograph pixels, strongest first (engine keys coordinates_px, figures_of_merit)."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(path, "Topaz picks file not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader((line for line in handle if not line.startswith("#")), delimiter="\t")
        if reader.fieldnames is None or any(column not in reader.fieldnames for column in _COLUMNS):
            raise ImageFileError(path, f"expected tab-separated columns {', '.join(_COLUMNS)}")
        try:
            rows = [(float(row["x_coord"]), float(row["y_coord"]), float(row["score"])) for row in reader]
        except (TypeError, ValueError):
            raise ImageFileError(path, "non-numeric coordinate or score") from None
    table = np.array(rows, dtype=float).reshape(-1, 3)
    order = np.argsort(-table[:, 2], kind="stable")
    return {"coordinates_px": (table[order, :2] * scale).tolist(), "figures_of_merit": table[order, 2].tolist(),
            "particle_count": int(order.size)}
