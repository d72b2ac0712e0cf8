"""Topaz (Bepler et al. 2019) particle picking with a pretrained detector: preprocess, extract, parse.

Topaz picks on a downsampled, normalised copy (`topaz preprocess -s`); `topaz extract` writes a
tab-separated table (image_name, x_coord, y_coord, score) in those downsampled pixels, scaled back here.
The score is a log-likelihood ratio: 0 is even odds of a particle, -6 (Topaz's default cut-off) p ≈ 0.0025.

The downsampling factor and extraction radius follow Relion's Topaz wrapper (autopicker.cpp): the model's
receptive field (71 px for resnet8/resnet16) should hold twice the particle diameter, so the factor is
max(4, round(2 × diameter / pixel size / 71)); the radius is the particle radius in downsampled pixels.

Topaz runs either through its `topaz` entry point or, as `python -m topaz.commands.<command>`, through the
command modules alone (`module_python`): the entry point also imports Topaz's training code and with it
torchvision, which PyPI's torchvision wheel cannot load beside the CPU build of torch; picking needs neither.
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
RECEPTIVE_FIELD_PX = 71  # resnet8 and resnet16, Topaz's pretrained detectors


def relion_downscale(particle_diameter_a: float, pixel_size_a: float) -> int:
    """Relion's default Topaz downsampling: 2 × the particle diameter within the receptive field, at least 4."""
    return max(4, round(2 * particle_diameter_a / pixel_size_a / RECEPTIVE_FIELD_PX))


class TopazInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    micrograph_path: str = Field(min_length=1)
    job_dir: str = Field(min_length=1)
    pixel_size_a: float = Field(gt=0)
    particle_diameter_a: float = Field(gt=0)
    scale: int = Field(8, ge=1, le=32, description="Downsampling factor for picking (-s).")
    radius_px: int | None = Field(None, ge=1, description="Extraction radius in downsampled pixels (-r); "
                                                           "default: the particle radius.")
    threshold: float = Field(-3.0, description="Log-likelihood ratio cut-off (-t).")
    model: str = Field("resnet16", description="Pretrained model name or a trained model file (-m).")
    device: int = Field(-1, ge=-1, description="GPU index (-d); -1: the CPU.")
    threads: int = Field(0, ge=0, description="torch threads (-j); 0: torch's default.")
    patch_size_px: int = Field(0, ge=0, description="Score the downsampled micrograph in patches of this size "
                                                    "(-p; bounds memory); 0: whole.")
    program: str = "topaz"
    module_python: bool = Field(False, description=(
        "`program` is a Python interpreter: run `program -m topaz.commands.preprocess|extract`."))


def preprocessed_path(inputs: TopazInputs) -> Path:
    return Path(inputs.job_dir) / "preprocessed" / Path(inputs.micrograph_path).name


def picks_path(inputs: TopazInputs) -> Path:
    return Path(inputs.job_dir) / f"{Path(inputs.micrograph_path).stem}_topaz.txt"


def extraction_radius_px(inputs: TopazInputs) -> int:
    """The particle radius in downsampled pixels (Topaz's non-maximum suppression radius)."""
    if inputs.radius_px is not None:
        return inputs.radius_px
    return max(1, round(inputs.particle_diameter_a / 2 / inputs.pixel_size_a / inputs.scale))


def _command(inputs: TopazInputs, command: str, args: list[str]) -> CommandSpec:
    head = ["-m", f"topaz.commands.{command}"] if inputs.module_python else [command]
    return CommandSpec(program=inputs.program, cwd=inputs.job_dir, args=[*head, *args],
                       threads=max(1, inputs.threads), gpus=1 if inputs.device >= 0 else 0)


def preprocess_command(inputs: TopazInputs) -> CommandSpec:
    """Downsample by `scale` and normalise (Topaz's two-component Gaussian mixture) into preprocessed/."""
    return _command(inputs, "preprocess", [
        "-s", str(inputs.scale), "-d", str(inputs.device), "-j", str(inputs.threads),
        "-o", str(preprocessed_path(inputs).parent), inputs.micrograph_path])


def extract_command(inputs: TopazInputs) -> CommandSpec:
    return _command(inputs, "extract", [
        "-m", inputs.model, "-r", str(extraction_radius_px(inputs)), "-t", f"{inputs.threshold:g}",
        "-d", str(inputs.device), "-j", str(inputs.threads), "-p", str(inputs.patch_size_px),
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
