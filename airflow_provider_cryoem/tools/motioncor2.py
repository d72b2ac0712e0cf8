"""MotionCor2 (Zheng et al. 2017): command line from the session settings, shifts from its log.

Flags as cryoem-services passes them (reference/cryoem-services-notes.md §3). Shift sign: MotionCor2
and Relion report the same quantity (Relion's motioncorr reads MotionCor2 shifts into the same STAR
columns), the shift that aligns a frame, which is minus the specimen displacement used here.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.io.errors import ImageFileError

from ._motion import motion_result

_FRAME_LINE = re.compile(r"^\.+\s*Frame\s*\(\s*(\d+)\)\s*shift:\s*(\S+)\s+(\S+)")
_INPUT_FLAGS = {".mrc": "-InMrc", ".mrcs": "-InMrc", ".tif": "-InTiff", ".tiff": "-InTiff", ".eer": "-InEer"}


class MotionCor2Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    movie_path: str = Field(min_length=1)
    output_path: str = Field(min_length=1, description="-OutMrc; MotionCor2 adds <stem>_DW.mrc when dose-weighting.")
    pixel_size_a: float = Field(gt=0)
    dose_per_frame_e_a2: float = Field(gt=0)
    voltage_kv: float = Field(300.0, ge=60, le=400)
    pre_exposure_e_a2: float = Field(0.0, ge=0)
    gain_reference_path: str | None = None
    gain_rotation: Literal[0, 1, 2, 3] = 0
    gain_flip: Literal[0, 1, 2] = 0
    defect_file_path: str | None = None
    patches_x: int = Field(5, ge=1, le=20)
    patches_y: int = Field(5, ge=1, le=20)
    iterations: int = Field(10, ge=1, le=100)
    tolerance_px: float = Field(0.5, gt=0)
    bin_factor: Literal[1, 2] = 1
    bfactor_a2: tuple[float, float] | None = Field(None, description="-Bft global local")
    eer_sampling: Literal[1, 2, 3] = 1
    eer_frame_file: str | None = Field(None, description="-FmIntFile (EER frame grouping).")
    gpu_ids: list[int] = Field(default_factory=lambda: [0])
    program: str = "MotionCor2"


def command(inputs: MotionCor2Inputs) -> CommandSpec:
    suffix = Path(inputs.movie_path).suffix.lower()
    if suffix not in _INPUT_FLAGS:
        raise ValueError(f"movie_path: MotionCor2 reads .mrc, .tif(f) or .eer movies, not {inputs.movie_path!r}")
    args = [_INPUT_FLAGS[suffix], inputs.movie_path, "-OutMrc", inputs.output_path,
            "-PixSize", f"{inputs.pixel_size_a:g}", "-Kv", f"{inputs.voltage_kv:g}",
            "-FmDose", f"{inputs.dose_per_frame_e_a2:g}", "-Patch", str(inputs.patches_x), str(inputs.patches_y),
            "-Iter", str(inputs.iterations), "-Tol", f"{inputs.tolerance_px:g}", "-FtBin", str(inputs.bin_factor),
            "-FmRef", "0", "-Gpu", *[str(gpu) for gpu in inputs.gpu_ids]]
    if inputs.pre_exposure_e_a2:
        args += ["-InitDose", f"{inputs.pre_exposure_e_a2:g}"]
    if inputs.gain_reference_path:
        args += ["-Gain", inputs.gain_reference_path, "-RotGain", str(inputs.gain_rotation),
                 "-FlipGain", str(inputs.gain_flip)]
    if inputs.defect_file_path:
        args += ["-DefectFile", inputs.defect_file_path]
    if inputs.bfactor_a2:
        args += ["-Bft", *[f"{value:g}" for value in inputs.bfactor_a2]]
    if suffix == ".eer":
        args += ["-EerSampling", str(inputs.eer_sampling)]
        if inputs.eer_frame_file:
            args += ["-FmIntFile", inputs.eer_frame_file]
    return CommandSpec(program=inputs.program, args=args, cwd=str(Path(inputs.output_path).parent),
                       gpus=len(inputs.gpu_ids))


def _shift(source: str | Path, line_number: int, x: str, y: str) -> tuple[float, float]:
    """One frame's (x, y) shift; a malformed value is an error naming the log and line, not a crash."""
    try:
        shift = float(x), float(y)
    except ValueError:
        raise ImageFileError(source, f"line {line_number}: non-numeric frame shift") from None
    if not all(math.isfinite(value) for value in shift):
        raise ImageFileError(source, f"line {line_number}: frame shift is NaN or infinite")
    return shift


def parse_shifts(log_text: str, source: str | Path = "MotionCor2 log") -> np.ndarray:
    """Full-frame shifts from the log: v1.4 '...... Frame (  n) shift: x y' lines or the v1.6 table
    under a '... x Shift ... y Shift' header (ends at a blank line); the first block only (patch
    alignment prints more blocks later). Returned as specimen displacement (minus the log's values).
    A malformed line raises ImageFileError naming `source` and the line number (a cut-off log, say)."""
    rows: list[tuple[float, float]] = []
    in_table = False
    for line_number, line in enumerate(log_text.splitlines(), start=1):
        stripped = line.strip()
        frame_line = _FRAME_LINE.match(stripped)
        if frame_line:
            if rows and frame_line.group(1) == "1":
                break
            rows.append(_shift(source, line_number, frame_line.group(2), frame_line.group(3)))
        elif "x Shift" in line and "y Shift" in line:
            if rows:
                break
            in_table = True
        elif in_table:
            if not stripped:
                break
            fields = stripped.split()
            if len(fields) < 3:
                raise ImageFileError(source, f"line {line_number}: shift table row has {len(fields)} value(s), "
                                             "expected frame, x shift and y shift")
            rows.append(_shift(source, line_number, fields[1], fields[2]))
    if not rows:
        raise ImageFileError(source, "no full-frame shifts found in the MotionCor2 log (expected '...... Frame' "
                                     "lines or an 'x Shift  y Shift' table)")
    return -np.array(rows)


def parse_result(log_text: str, inputs: MotionCor2Inputs) -> dict[str, Any]:
    """Motion result; the micrograph is the dose-weighted sum when MotionCor2 wrote one. The log's
    shifts are taken to be in input (unbinned) pixels, as Relion reads them."""
    output = Path(inputs.output_path)
    dose_weighted = output.with_name(f"{output.stem}_DW{output.suffix}")
    micrograph = dose_weighted if dose_weighted.exists() else output
    source = f"MotionCor2 output for {inputs.movie_path}"
    return motion_result(parse_shifts(log_text, source), inputs.pixel_size_a,
                         inputs.dose_per_frame_e_a2, str(micrograph))
