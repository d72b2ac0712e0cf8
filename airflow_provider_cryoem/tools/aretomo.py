"""AreTomo2 (Zheng et al. 2022) tilt-series alignment and reconstruction: command and .aln parser.

Flags as cryoem-services passes them (notes §6). The .aln file lists per tilt: SEC ROT GMAG TX TY
SMEAN SFIT SCALE BASE TILT, after `# DarkFrame = <index> <sec> <tilt>` lines for removed tilts. As Relion 5
reads it (AlignTiltseriesRunner::readAreTomoResults): SEC and a dark frame's <sec> are 0-based sections of
the input stack, TX/TY are pixels of that stack (× pixel size = rlnTomoX/YShiftAngst), ROT is the tilt axis
(rlnTomoZRot) and TILT the refined tilt angle (rlnTomoYTilt).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.io.errors import ImageFileError

_ALN_COLUMNS = ("SEC", "ROT", "GMAG", "TX", "TY", "SMEAN", "SFIT", "SCALE", "BASE", "TILT")
_DARK_FRAME = re.compile(r"^#\s*DarkFrame\s*=\s*(\d+)\s+(\d+)\s+(\S+)")


class AreTomoInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stack_path: str = Field(min_length=1, description="Tilt stack (MRC), tilts in the order of the angle file.")
    angle_file_path: str = Field(min_length=1, description="Text file, one tilt angle (°) per line.")
    tomogram_path: str = Field(min_length=1)
    pixel_size_a: float = Field(gt=0)
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    dose_per_tilt_e_a2: float = Field(gt=0)
    tilt_axis_deg: float = 85.0
    volume_z_px: int = Field(1200, ge=16, description="Thickness of the reconstruction (unbinned px).")
    output_binning: int = Field(4, ge=1)
    dark_tolerance: float = Field(0.7, ge=0, le=1)
    weighted_back_projection: bool = Field(False, description="-Wbp 1: weighted back-projection, else SART.")
    gpu_ids: list[int] = Field(default_factory=lambda: [0])
    program: str = "AreTomo2"


def command(inputs: AreTomoInputs) -> CommandSpec:
    args = ["-InMrc", inputs.stack_path, "-OutMrc", inputs.tomogram_path, "-AngFile", inputs.angle_file_path,
            "-TiltAxis", f"{inputs.tilt_axis_deg:g}", "1", "-TiltCor", "1", "-VolZ", str(inputs.volume_z_px),
            "-OutBin", str(inputs.output_binning), "-FlipVol", "1", "-PixSize", f"{inputs.pixel_size_a:g}",
            "-Kv", f"{inputs.voltage_kv:g}", "-Cs", f"{inputs.cs_mm:g}", "-AmpContrast", f"{inputs.amplitude_contrast:g}",
            "-FmDose", f"{inputs.dose_per_tilt_e_a2:g}", "-DarkTol", f"{inputs.dark_tolerance:g}", "-OutImod", "1",
            "-Gpu", *[str(gpu) for gpu in inputs.gpu_ids]]
    if inputs.weighted_back_projection:
        args += ["-Wbp", "1"]
    return CommandSpec(program=inputs.program, args=args, cwd=str(Path(inputs.tomogram_path).parent),
                       gpus=len(inputs.gpu_ids))


def aln_path(inputs: AreTomoInputs) -> Path:
    return Path(inputs.tomogram_path).with_suffix(".aln")


def _number(path: Path, line_number: int, text: str) -> float:
    """A value of the .aln file; a malformed one names the file and line instead of a bare ValueError."""
    try:
        return float(text)
    except ValueError:
        raise ImageFileError(path, f"line {line_number}: non-numeric value") from None


def parse_aln(path: str | Path) -> dict[str, Any]:
    """Per-tilt alignment (tilt axis, shifts in px, refined tilt) and the tilts AreTomo dropped as dark."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(path, "AreTomo alignment (.aln) file not found")
    dark_tilts_deg: list[float] = []
    dark_sections: list[int] = []
    tilts: list[dict[str, float]] = []
    for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        dark = _DARK_FRAME.match(line.strip())
        if dark:
            dark_sections.append(int(dark.group(2)))
            dark_tilts_deg.append(_number(path, line_number, dark.group(3)))
        elif line.strip() and not line.lstrip().startswith("#"):
            fields = line.split()
            if len(fields) < len(_ALN_COLUMNS):
                if tilts:  # local-alignment tables follow the global one
                    break
                raise ImageFileError(path, f"line {line_number}: alignment row with {len(fields)} values, expected "
                                           f"{len(_ALN_COLUMNS)} ({' '.join(_ALN_COLUMNS)})")
            row = dict(zip(_ALN_COLUMNS, (_number(path, line_number, field) for field in fields)))
            if tilts and row["SEC"] <= tilts[-1]["section"]:
                break
            tilts.append({"section": row["SEC"], "tilt_axis_deg": row["ROT"], "shift_x_px": row["TX"],
                          "shift_y_px": row["TY"], "tilt_deg": row["TILT"]})
    if not tilts:
        raise ImageFileError(path, "no per-tilt alignment rows found")
    return {"tilts": tilts, "dark_tilts_deg": dark_tilts_deg, "dark_sections": dark_sections,
            "tilt_axis_deg": sum(t["tilt_axis_deg"] for t in tilts) / len(tilts)}
