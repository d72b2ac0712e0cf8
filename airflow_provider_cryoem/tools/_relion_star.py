"""The small input STAR files Relion 3.1 programs need (one optics group, one or more images)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from airflow_provider_cryoem.io import read_star
from airflow_provider_cryoem.io.errors import ImageFileError
from airflow_provider_cryoem.io.star import write_star


def write_optics_star(path: str | Path, block: str, name_column: str, paths: list[str], pixel_size_a: float,
                      voltage_kv: float, cs_mm: float, amplitude_contrast: float,
                      micrograph_pixel_size: bool) -> Path:
    """`data_optics` + one `data_<block>` loop naming the images (movies or micrographs)."""
    optics = {"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
              "rlnMicrographOriginalPixelSize": [pixel_size_a], "rlnVoltage": [voltage_kv],
              "rlnSphericalAberration": [cs_mm], "rlnAmplitudeContrast": [amplitude_contrast]}
    if micrograph_pixel_size:
        optics["rlnMicrographPixelSize"] = [pixel_size_a]
    images = pd.DataFrame({name_column: paths, "rlnOpticsGroup": [1] * len(paths)})
    return write_star(path, {"optics": pd.DataFrame(optics), block: images})


def output_for(job_dir: str | Path, image_path: str, suffix: str) -> Path:
    """Where Relion puts the per-image output: the input's relative path inside the job folder,
    without the `<JobType>/jobNNN/` prefix when the input is itself a job's output."""
    if Path(image_path).is_absolute():
        raise ValueError(f"{image_path}: Relion needs paths relative to the project folder")
    relative = Path(re.sub(r"^[^/]+/job\d+/", "", image_path))
    return Path(job_dir) / relative.with_suffix("").with_name(relative.stem + suffix)


def loop_block(path: str | Path, block: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """One loop block with the columns a parser needs; ImageFileError naming the file otherwise."""
    blocks = read_star(path)
    if block not in blocks:
        raise ImageFileError(path, f"no data_{block} block (found {sorted(blocks)})")
    table = blocks[block]
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ImageFileError(path, f"data_{block} lacks column(s) {', '.join(missing)}")
    return table


def _as_float(value: object) -> float:
    """Python's reading of a number, which takes Relion's `-nan` and `inf` for empty classes (pandas does not)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def _is_nan_text(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower().lstrip("+-") == "nan"


def numeric_column(path: str | Path, table: pd.DataFrame, block: str, column: str) -> np.ndarray:
    """`column` as float64; a non-numeric value names the file, block, column and row, never the value.

    NaN that the file itself holds stays NaN (as `astype(float)` kept it); only text that is no number fails.
    """
    raw = table[column]
    values = np.array([_as_float(value) for value in raw], dtype=float)
    bad = np.flatnonzero(np.isnan(values) & ~raw.isna().to_numpy() & ~raw.map(_is_nan_text).to_numpy(dtype=bool))
    if bad.size:
        raise ImageFileError(path, f"data_{block}: non-numeric _{column} in row {bad[0] + 1} "
                                   f"({bad.size} of {values.size} rows)")
    return values
