"""Stand-ins for AreTomo2 and IMOD's batchruntomo, which cannot be installed here (no GPU, no IMOD package).

They read what the pipeline wrote (stack, angle file, directive file) and write output in the programs' own
layouts (AreTomo2 .aln as its CSaveAlignFile prints it; IMOD align.log, .xf, .tlt, <name>_rec.mrc) with
known numbers, so a test can check that every number lands on the right tilt with the right sign and unit:
  shift of the tilt at angle a:  (SHIFT_X_PER_DEG · a, SHIFT_Y_PER_DEG · a) px
  refined tilt angle:            a + TILT_OFFSET_DEG
  AreTomo2 drops the lowest-angle section as dark; IMOD's view residual is RESIDUAL_NM.
Run as `python fake_tomo_programs.py AreTomo2|batchruntomo <the program's arguments>`.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import mrcfile
import numpy as np

SHIFT_X_PER_DEG = 0.25
SHIFT_Y_PER_DEG = -0.1
TILT_OFFSET_DEG = 0.3
TILT_AXIS_DEG = 84.2
RESIDUAL_NM = 0.8


def _flags(args: list[str]) -> dict[str, list[str]]:
    flags: dict[str, list[str]] = {}
    current = None
    for arg in args:
        if arg.startswith("-") and not _is_number(arg):
            current = arg
            flags[current] = []
        elif current is not None:
            flags[current].append(arg)
    return flags


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _write_volume(path: Path, shape: tuple[int, int, int], voxel_a: float) -> None:
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel_a


def aretomo2(args: list[str]) -> None:
    flags = _flags(args)
    stack, out = Path(flags["-InMrc"][0]), Path(flags["-OutMrc"][0])
    angles = [float(line) for line in Path(flags["-AngFile"][0]).read_text().split()]
    binning, vol_z, pixel_a = int(flags["-OutBin"][0]), int(flags["-VolZ"][0]), float(flags["-PixSize"][0])
    with mrcfile.open(stack, permissive=True) as mrc:
        n, ny, nx = mrc.data.shape
    assert n == len(angles), f"stack has {n} sections, angle file {len(angles)}"
    dark = 0  # the lowest tilt
    lines = ["# AreTomo Alignment / Priims bprmMn ", f"# RawSize = {nx} {ny} {n}", "# NumPatches = 0",
             f"# DarkFrame =  {0:4d} {dark:4d} {angles[dark]:8.2f}",
             "# SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT"]
    for section, angle in enumerate(angles):
        if section != dark:
            lines.append(f"{section:5d}  {TILT_AXIS_DEG:9.4f}  {1.0:9.5f}  {SHIFT_X_PER_DEG * angle:9.3f}  "
                         f"{SHIFT_Y_PER_DEG * angle:9.3f}  {1.0:7.2f}  {1.0:7.2f}  {1.0:7.2f}  {0.0:7.2f}  "
                         f"{angle + TILT_OFFSET_DEG:8.2f}")
    out.with_suffix(".aln").write_text("\n".join(lines) + "\n")
    _write_volume(out, (vol_z // binning, ny // binning, nx // binning), pixel_a * binning)


def batchruntomo(args: list[str]) -> None:
    directives = dict(line.split("=", 1) for line in Path(_flags(args)["-directive"][0]).read_text().splitlines())
    folder, name = Path(directives["setupset.datasetDirectory"]), directives["setupset.copyarg.name"]
    pixel_a = float(directives["setupset.copyarg.pixel"]) * 10
    binning = int(directives["runtime.AlignedStack.any.binByFactor"])
    thickness = int(directives["comparam.tilt.tilt.THICKNESS"])
    angles = [float(line) for line in (folder / f"{name}.rawtlt").read_text().split()]
    with mrcfile.open(folder / f"{name}.mrc", permissive=True) as mrc:
        n, ny, nx = mrc.data.shape
    assert n == len(angles), f"stack has {n} sections, rawtlt {len(angles)}"
    rotation = math.radians(-TILT_AXIS_DEG)
    a = np.array([[math.cos(rotation), -math.sin(rotation)], [math.sin(rotation), math.cos(rotation)]])
    xf, table = [], []
    for view, angle in enumerate(angles, start=1):
        d = -a @ np.array([SHIFT_X_PER_DEG * angle, SHIFT_Y_PER_DEG * angle])  # A·s + D = 0
        xf.append(f"{a[0, 0]:12.7f}{a[0, 1]:12.7f}{a[1, 0]:12.7f}{a[1, 1]:12.7f}{d[0]:12.3f}{d[1]:12.3f}")
        table.append(f"{view:4d}{TILT_AXIS_DEG:10.1f}{angle + TILT_OFFSET_DEG:10.1f}{TILT_OFFSET_DEG:10.2f}"
                     f"{1.0:10.4f}{0.0:10.4f}{0.0:10.2f}{RESIDUAL_NM:10.2f}")
    (folder / f"{name}.xf").write_text("\n".join(xf) + "\n")
    (folder / f"{name}.tlt").write_text("".join(f"{angle + TILT_OFFSET_DEG:.2f}\n" for angle in angles))
    (folder / "align.log").write_text("\n".join([
        " Tiltalign: Version 4.11.24", f" Residual error mean and sd:   {RESIDUAL_NM:7.3f} {0.1:7.3f} nm    (Global)",
        f" At minimum tilt, rotation angle is {TILT_AXIS_DEG:7.2f}", "",
        " view   rotation    tilt    deltilt     mag      dmag      skew    resid-nm", *table, ""]))
    _write_volume(folder / f"{name}_rec.mrc", (thickness // binning, ny // binning, nx // binning), pixel_a * binning)


if __name__ == "__main__":
    {"AreTomo2": aretomo2, "batchruntomo": batchruntomo}[sys.argv[1]](sys.argv[2:])
