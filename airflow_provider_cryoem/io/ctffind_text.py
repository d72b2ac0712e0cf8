"""CTFFIND 4.1's per-micrograph text results: `<output>.txt` (one results line) and `<output>_avrot.txt`.

Both start with comment lines saying how the program was run. `<output>.txt` then holds one line per
micrograph: number, defocus 1 (Å), defocus 2 (Å), azimuth of astigmatism (°), additional phase shift
(rad), cross correlation, resolution of the fitted Thon rings (Å); CTFFIND 5 adds tilt axis (°), tilt
angle (°) and sample thickness (Å). `_avrot.txt` holds six lines per micrograph: spatial frequency
(1/Å), rotational average (assuming no astigmatism), rotational average (astigmatism taken into
account), CTF fit, CC between spectrum and fit, 2σ of the CC expected from noise. CTFFIND 4.1.14 writes
five comment lines before the numbers and some readers count on that, so the writers here do too.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._atomic import atomic_path
from .errors import ImageFileError

AVROT_ROWS = ("spatial_frequency_per_a", "rotational_average_no_astigmatism", "rotational_average", "ctf_fit",
              "fit_cross_correlation", "noise_2sigma")
_RESULT_COLUMNS = ("# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
                   "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; "
                   "#7 - spacing (in Angstroms) up to which CTF rings were fit successfully")
_AVROT_COLUMNS = ("# 6 lines per micrograph: #1 - spatial frequency (1/Angstroms); "
                  "#2 - 1D rotational average of spectrum (assuming no astigmatism); "
                  "#3 - 1D rotational average of spectrum; #4 - CTF fit; "
                  "#5 - cross-correlation between spectrum and CTF fit; "
                  "#6 - 2sigma of expected cross correlation of noise")


def header_lines(program: str, micrograph_path: str | Path, pixel_size_a: float, voltage_kv: float, cs_mm: float,
                 amplitude_contrast: float, box_size_px: int, min_resolution_a: float, max_resolution_a: float,
                 min_defocus_a: float, max_defocus_a: float) -> list[str]:
    """The four comment lines CTFFIND starts both files with (the run's settings)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    # CTFFIND labels the defocus limits "um" although it prints Ångström values; readers expect that text.
    return [f"# Output from {program}, run on {now}",
            f"# Input file: {micrograph_path} ; Number of micrographs: 1",
            f"# Pixel size: {pixel_size_a:.3f} Angstroms ; acceleration voltage: {voltage_kv:.1f} keV ; "
            f"spherical aberration: {cs_mm:.2f} mm ; amplitude contrast: {amplitude_contrast:.2f}",
            f"# Box size: {box_size_px} pixels ; min. res.: {min_resolution_a:.1f} Angstroms ; "
            f"max. res.: {max_resolution_a:.1f} Angstroms ; min. def.: {min_defocus_a:.1f} um; "
            f"max. def. {max_defocus_a:.1f} um"]


def write_output_txt(path: str | Path, header: Sequence[str], defocus_1_a: float, defocus_2_a: float,
                     azimuth_deg: float, phase_shift_rad: float, cc: float, fit_resolution_a: float) -> Path:
    """`<output>.txt`: the header, the column line and micrograph 1's results line."""
    values = (1.0, defocus_1_a, defocus_2_a, azimuth_deg, phase_shift_rad, cc, fit_resolution_a)
    lines = [*header, _RESULT_COLUMNS, " ".join(f"{value:.6f}" for value in values)]
    return _write(path, lines)


def write_avrot(path: str | Path, header: Sequence[str], rows: dict[str, Sequence[float]]) -> Path:
    """`<output>_avrot.txt`: the header, the row description and the six rows of `AVROT_ROWS`."""
    missing = [name for name in AVROT_ROWS if name not in rows]
    if missing or len({len(rows[name]) for name in AVROT_ROWS}) != 1:
        raise ValueError(f"avrot rows must be the six equally long {AVROT_ROWS}; missing {missing}")
    lines = [*header, _AVROT_COLUMNS, *(" ".join(f"{value:.6f}" for value in rows[name]) for name in AVROT_ROWS)]
    return _write(path, lines)


def _write(path: str | Path, lines: list[str]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def _numeric_rows(path: Path) -> list[list[float]]:
    rows = []
    for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                rows.append([float(value) for value in line.split()])
            except ValueError:
                raise ImageFileError(path, f"line {line_number}: non-numeric CTFFIND output") from None
    return rows


def parse_output_txt(path: str | Path) -> dict[str, Any]:
    """CTF result dict (engine keys) from the last line of `<output>.txt`; U ≥ V, angle in [0, 180)."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(path, "CTFFIND result file not found")
    rows = _numeric_rows(path)
    if not rows or len(rows[-1]) < 7:
        raise ImageFileError(path, "expected a CTFFIND result line with at least 7 columns")
    values = rows[-1]
    defocus_1_a, defocus_2_a, azimuth_deg = values[1], values[2], values[3]
    if defocus_2_a > defocus_1_a:  # keep U the larger defocus; its direction turns by 90°
        defocus_1_a, defocus_2_a, azimuth_deg = defocus_2_a, defocus_1_a, azimuth_deg + 90.0
    result: dict[str, Any] = {
        "defocus_u_a": defocus_1_a, "defocus_v_a": defocus_2_a,
        "astigmatism_a": defocus_1_a - defocus_2_a, "astigmatism_angle_deg": azimuth_deg % 180.0,
        "phase_shift_deg": math.degrees(values[4]), "cc": values[5],
        "fit_resolution_a": values[6] if math.isfinite(values[6]) and values[6] > 0 else float("inf"),
    }
    if len(values) >= 10:  # CTFFIND 5
        result.update(tilt_axis_deg=values[7], tilt_angle_deg=values[8], sample_thickness_a=values[9])
    return result


def parse_avrot(path: str | Path) -> dict[str, list[float]]:
    """The six rows of `<output>_avrot.txt` (last micrograph): frequency (1/Å), spectra, fit, CC, noise."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(path, "CTFFIND rotational average file not found")
    rows = _numeric_rows(path)
    if len(rows) < len(AVROT_ROWS) or len({len(row) for row in rows[-6:]}) != 1:
        raise ImageFileError(path, "expected 6 equally long rows per micrograph in the _avrot.txt file")
    return {name: list(row) for name, row in zip(AVROT_ROWS, rows[-6:])}
