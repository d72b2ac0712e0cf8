"""crYOLO (Wagner et al. 2019) particle picking: config, cryolo_predict.py command, CBOX parser.

The config and flags follow cryoem-services (notes §3). CBOX files are STAR tables whose
_CoordinateX/_CoordinateY are the box's lower-left corner; picks are returned as box centres.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile
from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.io._atomic import write_text_atomic
from airflow_provider_cryoem.io.errors import ImageFileError

_CBOX_COLUMNS = ("CoordinateX", "CoordinateY", "Width", "Height", "Confidence")


class CryoloInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    micrograph_path: str = Field(min_length=1)
    job_dir: str = Field(min_length=1, description="Output folder (crYOLO writes CBOX/, STAR/, EMAN/ there).")
    weights_path: str = Field(min_length=1, description="Model weights (.h5), e.g. the general PhosaurusNet model.")
    box_size_px: int = Field(160, ge=8)
    threshold: float = Field(0.3, ge=0, le=1)
    min_distance_px: int | None = Field(None, ge=0)
    gpu_ids: list[int] = Field(default_factory=lambda: [0])
    cpus: int = Field(1, ge=1)
    prediction_batch_size: int = Field(3, ge=1)
    program: str = "cryolo_predict.py"


def config_path(inputs: CryoloInputs) -> Path:
    return Path(inputs.job_dir) / "cryolo_config.json"


def write_config(inputs: CryoloInputs) -> Path:
    """The model configuration cryoem-services writes once per job (PhosaurusNet, low-pass filter 0.1)."""
    config = {"model": {"architecture": "PhosaurusNet", "input_size": 1024, "max_box_per_image": 600,
                        "norm": "STANDARD", "num_patches": 1, "anchors": [inputs.box_size_px, inputs.box_size_px],
                        "filter": [0.1, "filtered"]},
              "other": {"log_path": "logs/"}}
    return write_text_atomic(config_path(inputs), json.dumps(config, indent=2))


def command(inputs: CryoloInputs) -> CommandSpec:
    args = ["-i", inputs.micrograph_path, "--conf", str(config_path(inputs)), "-o", inputs.job_dir,
            "--weights", inputs.weights_path, "--threshold", f"{inputs.threshold:g}", "--otf",
            "-g", *[str(gpu) for gpu in inputs.gpu_ids], "--num_cpu", str(inputs.cpus),
            "--prediction_batch_size", str(inputs.prediction_batch_size)]
    if inputs.min_distance_px is not None:
        args += ["--distance", str(inputs.min_distance_px)]
    return CommandSpec(program=inputs.program, args=args, cwd=inputs.job_dir, gpus=len(inputs.gpu_ids),
                       threads=inputs.cpus)


def cbox_path(inputs: CryoloInputs) -> Path:
    return Path(inputs.job_dir) / "CBOX" / f"{Path(inputs.micrograph_path).stem}.cbox"


def _read_cbox(path: Path) -> pd.DataFrame:
    """The data_cryolo table; read with starfile directly because CBOX rows hold `<NA>` for the
    tomography-only columns, which the project's STAR reader takes for a truncated row."""
    if not path.is_file():
        raise ImageFileError(path, "crYOLO CBOX file not found")
    try:
        table = starfile.read(path, always_dict=True).get("cryolo")
    except (ValueError, KeyError, IndexError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ImageFileError(path, f"malformed CBOX file ({type(exc).__name__}: {exc})") from None
    if not isinstance(table, pd.DataFrame):
        raise ImageFileError(path, "no data_cryolo loop in the CBOX file")
    missing = [column for column in _CBOX_COLUMNS if column not in table.columns]
    if missing:
        raise ImageFileError(path, f"data_cryolo lacks column(s) {', '.join(missing)}")
    values = table[list(_CBOX_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    if values.isna().any().any():
        raise ImageFileError(path, "non-numeric coordinate, size or confidence in data_cryolo")
    return values


def parse_cbox(path: str | Path, threshold: float = 0.0) -> dict[str, Any]:
    """Picks at or above `threshold`, most confident first (engine keys coordinates_px, figures_of_merit)."""
    table = _read_cbox(Path(path))
    confidence = table["Confidence"].to_numpy(dtype=float)
    centres = (table[["CoordinateX", "CoordinateY"]].to_numpy(dtype=float)
               + table[["Width", "Height"]].to_numpy(dtype=float) / 2)
    keep = np.flatnonzero(confidence >= threshold)
    order = keep[np.argsort(-confidence[keep], kind="stable")]
    return {"coordinates_px": centres[order].round(2).tolist(), "figures_of_merit": confidence[order].tolist(),
            "particle_count": int(order.size)}


def parse_result(inputs: CryoloInputs) -> dict[str, Any]:
    return {**parse_cbox(cbox_path(inputs), inputs.threshold), "micrograph_path": inputs.micrograph_path}
