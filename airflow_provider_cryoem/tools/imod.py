"""IMOD (Kremer et al. 1996; Mastronarde & Held 2017): newstack, tilt and batchruntomo commands, alignment parsers.

Command lines use IMOD's PIP options (short names, several values comma-separated on a command line);
the batchruntomo directive file follows cryoem-services' sxt-imod recipes (notes §6). Parsers read what
tiltalign writes, per its format statements: `align.log` ("Residual error mean and sd: <mean> <sd> nm",
"At minimum tilt, rotation angle is <deg>", the per-view table view/rotation/tilt/deltilt/mag/dmag/
skew/resid), `.xf` (A11 A12 A21 A22 DX DY per view) and `.tlt` (one refined tilt angle per line).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.io._atomic import write_text_atomic
from airflow_provider_cryoem.io.errors import ImageFileError

_RESIDUAL = re.compile(r"Residual error mean and sd:\s+(\S+)\s+(\S+)\s*(\S*)")
_ROTATION = re.compile(r"At minimum tilt, rotation angle is\s+(\S+)")
_VIEW_TABLE_HEADER = re.compile(r"^\s*view\s+rotation\s+tilt\s+deltilt\s+mag\s+dmag\s+skew")
_REORIENT = {"none": 0, "flip": 1, "rotate": 2}


# --- newstack -----------------------------------------------------------------------------------
class NewstackInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_paths: list[str] = Field(min_length=1, description="One stack, or single-image tilts in stack order.")
    output_path: str = Field(min_length=1)
    transform_path: str | None = Field(None, description="-xform: .xf file, one line per output section.")
    bin_factor: int = Field(1, ge=1, le=16)
    linear_interpolation: bool = Field(False, description="-linear: faster, used for binned aligned stacks.")
    program: str = "newstack"


def file_list_path(inputs: NewstackInputs) -> Path:
    output = Path(inputs.output_path)
    return output.with_name(f"{output.stem}_filelist.txt")


def write_file_list(inputs: NewstackInputs) -> Path:
    """newstack's -fileinlist: the number of files, then per file its name and the sections to take (0)."""
    path = file_list_path(inputs)
    lines = [str(len(inputs.input_paths))]
    for image in inputs.input_paths:
        lines += [image, "0"]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def newstack_command(inputs: NewstackInputs) -> CommandSpec:
    """One input file is taken whole (-input); several are read through the file list (write_file_list)."""
    if len(inputs.input_paths) == 1:
        args = ["-input", inputs.input_paths[0]]
    else:
        args = ["-fileinlist", str(file_list_path(inputs))]
    args += ["-output", inputs.output_path]
    if inputs.transform_path:
        args += ["-xform", inputs.transform_path]
    if inputs.bin_factor > 1:
        args += ["-bin", str(inputs.bin_factor)]
    if inputs.linear_interpolation:
        args.append("-linear")
    return CommandSpec(program=inputs.program, args=args, cwd=str(Path(inputs.output_path).parent))


# --- tilt ---------------------------------------------------------------------------------------
class TiltInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    aligned_stack_path: str = Field(min_length=1)
    tomogram_path: str = Field(min_length=1)
    tilt_file_path: str = Field(min_length=1, description="-TILTFILE: .tlt, one angle (°) per section.")
    thickness_unbinned_px: int = Field(ge=1, description="-THICKNESS; in unbinned pixels when the stack is binned.")
    stack_binning: int = Field(1, ge=1, le=16, description="-IMAGEBINNED: binning of the aligned stack.")
    full_image_px: tuple[int, int] | None = Field(None, description="-FULLIMAGE: unbinned image size (x, y).")
    radial_cutoff: float = Field(0.35, gt=0, le=0.5, description="-RADIAL weighting filter cutoff (cycles/px).")
    radial_falloff: float = Field(0.035, ge=0, le=0.5, description="-RADIAL Gaussian falloff (σ, cycles/px).")
    x_axis_tilt_deg: float = 0.0
    sirt_like_iterations: int | None = Field(None, ge=1, description="-FakeSIRTiterations: SIRT-like filter.")
    gpu_id: int | None = Field(None, ge=0, description="-UseGPU (0 = best available).")
    program: str = "tilt"


def tilt_command(inputs: TiltInputs) -> CommandSpec:
    """Weighted back-projection; tilt writes slices perpendicular to Y (rotate about X to view XY slices)."""
    args = ["-input", inputs.aligned_stack_path, "-output", inputs.tomogram_path,
            "-TILTFILE", inputs.tilt_file_path, "-THICKNESS", str(inputs.thickness_unbinned_px),
            "-IMAGEBINNED", str(inputs.stack_binning),
            "-RADIAL", f"{inputs.radial_cutoff:g},{inputs.radial_falloff:g}", "-FalloffIsTrueSigma", "1",
            "-XAXISTILT", f"{inputs.x_axis_tilt_deg:g}"]
    if inputs.full_image_px:
        args += ["-FULLIMAGE", ",".join(map(str, inputs.full_image_px))]
    if inputs.sirt_like_iterations:
        args += ["-FakeSIRTiterations", str(inputs.sirt_like_iterations)]
    if inputs.gpu_id is not None:
        args += ["-UseGPU", str(inputs.gpu_id)]
    return CommandSpec(program=inputs.program, args=args, cwd=str(Path(inputs.tomogram_path).parent),
                       gpus=int(inputs.gpu_id is not None))


# --- batchruntomo -------------------------------------------------------------------------------
class BatchRunTomoInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stack_path: str = Field(min_length=1, description="Tilt stack (.mrc) in the data set's own folder.")
    tilt_angles_deg: list[float] = Field(min_length=3, description="Per section; written as <stem>.rawtlt.")
    pixel_size_a: float = Field(gt=0)
    tilt_axis_deg: float = 85.0
    alignment: Literal["patch", "fiducials"] = "patch"
    reconstruction: Literal["wbp", "sirt"] = "wbp"
    thickness_unbinned_px: int = Field(700, ge=16)
    output_binning: int = Field(1, ge=1, le=16)
    fiducial_diameter_nm: float = Field(10.0, gt=0, description="Gold bead size (fiducial alignment).")
    fiducial_count: int = Field(20, ge=1, description="Beads autofidseed aims for.")
    patch_size_px: int = Field(200, ge=16)
    patch_overlap: float = Field(0.5, ge=0, lt=1)
    local_alignment: bool = False
    sirt_leave_iterations: int = Field(5, ge=1)
    reorient: Literal["none", "flip", "rotate"] = Field("flip", description="Trimvol: how Z becomes the slow axis.")
    cpus: int = Field(4, ge=1, le=256)
    program: str = "batchruntomo"


def dataset_name(inputs: BatchRunTomoInputs) -> str:
    return Path(inputs.stack_path).stem


def directive_path(inputs: BatchRunTomoInputs) -> Path:
    return Path(inputs.stack_path).parent / "batchDirective.adoc"


def tomogram_path(inputs: BatchRunTomoInputs) -> Path:
    return Path(inputs.stack_path).parent / f"{dataset_name(inputs)}_rec.mrc"


def directives(inputs: BatchRunTomoInputs) -> list[str]:
    """The key=value lines: data set setup, tracking (patches or beads), tiltalign, aligned stack, reconstruction."""
    patch = inputs.alignment == "patch"
    lines = [f"setupset.datasetDirectory={Path(inputs.stack_path).parent}",
             f"setupset.copyarg.name={dataset_name(inputs)}", "setupset.copyarg.stackext=mrc",
             "setupset.copyarg.userawtlt=1", "setupset.copyarg.dual=0",
             f"setupset.copyarg.pixel={inputs.pixel_size_a / 10:g}",
             f"setupset.copyarg.gold={inputs.fiducial_diameter_nm:g}",
             f"setupset.copyarg.rotation={inputs.tilt_axis_deg:g}", "setupset.copyarg.extract=0",
             "runtime.Preprocessing.any.removeXrays=1",
             f"runtime.Fiducials.any.trackingMethod={int(patch)}", "runtime.Fiducials.any.seedingMethod=1"]
    if patch:
        size, overlap = inputs.patch_size_px, f"{inputs.patch_overlap:g}"
        lines += ["comparam.prenewst.newstack.BinByFactor=2",
                  f"comparam.xcorr_pt.tiltxcorr.SizeOfPatchesXandY={size},{size}",
                  f"comparam.xcorr_pt.tiltxcorr.OverlapOfPatchesXandY={overlap},{overlap}",
                  "comparam.xcorr_pt.tiltxcorr.IterateCorrelations=1", "runtime.PatchTracking.any.adjustTiltAngles=1"]
    else:
        lines += ["comparam.track.beadtrack.LightBeads=0", "comparam.track.beadtrack.LocalAreaTracking=1",
                  "comparam.track.beadtrack.SobelFilterCentering=1", "comparam.track.beadtrack.KernelSigmaForSobel=1.5",
                  "runtime.BeadTracking.any.numberOfRuns=2",
                  f"comparam.autofidseed.autofidseed.TargetNumberOfBeads={inputs.fiducial_count}",
                  "comparam.autofidseed.autofidseed.AdjustSizes=1", "comparam.autofidseed.autofidseed.TwoSurfaces=0"]
    sirt = inputs.reconstruction == "sirt"
    lines += ["comparam.align.tiltalign.SurfacesToAnalyze=1",
              f"comparam.align.tiltalign.LocalAlignments={int(inputs.local_alignment)}",
              "comparam.align.tiltalign.MagOption=3", "comparam.align.tiltalign.TiltOption=5",
              "comparam.align.tiltalign.RotOption=3", "comparam.align.tiltalign.RobustFitting=1",
              "comparam.restrictalign.restrictalign.UseCrossValidation=0",
              "runtime.AlignedStack.any.linearInterpolation=1",
              f"runtime.AlignedStack.any.binByFactor={inputs.output_binning}",
              f"comparam.tilt.tilt.THICKNESS={inputs.thickness_unbinned_px}", "comparam.tilt.tilt.LOG=",
              f"runtime.Reconstruction.any.useSirt={int(sirt)}", "runtime.Reconstruction.any.doBackprojAlso=0"]
    if sirt:
        lines.append(f"comparam.sirtsetup.sirtsetup.LeaveIterations={inputs.sirt_leave_iterations}")
    lines.append(f"runtime.Trimvol.any.reorient={_REORIENT[inputs.reorient]}")
    return lines


def write_directive_file(inputs: BatchRunTomoInputs) -> Path:
    """The directive file and the <stem>.rawtlt it points to (userawtlt=1), beside the stack."""
    if len(inputs.tilt_angles_deg) != len(set(inputs.tilt_angles_deg)):
        raise ValueError("tilt_angles_deg: repeated tilt angles (drop the re-collected tilt first)")
    folder = Path(inputs.stack_path).parent
    folder.mkdir(parents=True, exist_ok=True)
    rawtlt = folder / f"{dataset_name(inputs)}.rawtlt"
    write_text_atomic(rawtlt, "".join(f"{angle:.2f}\n" for angle in inputs.tilt_angles_deg))
    return write_text_atomic(directive_path(inputs), "\n".join(directives(inputs)) + "\n")


def batchruntomo_command(inputs: BatchRunTomoInputs) -> CommandSpec:
    return CommandSpec(program=inputs.program, args=["-directive", str(directive_path(inputs)),
                                                     "-cpus", str(inputs.cpus)],
                       cwd=str(Path(inputs.stack_path).parent), threads=inputs.cpus,
                       log_path=str(Path(inputs.stack_path).parent / "batchruntomo.log"))


# --- alignment outputs --------------------------------------------------------------------------
def _numeric_lines(path: Path, what: str, columns: int) -> list[list[float]]:
    if not path.is_file():
        raise ImageFileError(path, f"IMOD {what} file not found")
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = [float(value) for value in line.split()]
        except ValueError:
            raise ImageFileError(path, f"line {number}: non-numeric {what} entry") from None
        if len(row) != columns:
            raise ImageFileError(path, f"line {number}: {len(row)} values, expected {columns} per {what} line")
        rows.append(row)
    if not rows:
        raise ImageFileError(path, f"no {what} lines")
    return rows


def parse_tlt(path: str | Path) -> list[float]:
    """Tilt angles (°) of a .tlt/.rawtlt file, one per section."""
    return [row[0] for row in _numeric_lines(Path(path), "tilt angle", 1)]


def parse_xf(path: str | Path) -> dict[str, Any]:
    """Per-view 2D transforms of an .xf file (X' = A·X + D maps a raw view onto the aligned one).

    `specimen_shifts_px` is where each view's content sits in the raw image, -A⁻¹·D, the shift Relion 5
    writes as rlnTomoX/YShiftAngst (× pixel size) when it reads IMOD's alignment; `tilt_axis_deg` is the
    view's tilt axis from the Y axis, the rotation A undoes (−atan2(A21, A11)).
    """
    path = Path(path)
    rows = _numeric_lines(path, "transform", 6)
    shifts = []
    for number, (a11, a12, a21, a22, dx, dy) in enumerate(rows, start=1):
        determinant = a11 * a22 - a12 * a21
        if abs(determinant) < 1e-6:
            raise ImageFileError(path, f"transform {number}: matrix is singular")
        shifts.append([-(a22 * dx - a12 * dy) / determinant, -(-a21 * dx + a11 * dy) / determinant])
    return {"transforms": rows, "translations_px": [[row[4], row[5]] for row in rows], "specimen_shifts_px": shifts,
            "tilt_axis_deg": [-math.degrees(math.atan2(row[2], row[0])) for row in rows]}


def _nm_per_unit(unit: str, path: Path, pixel_size_a: float | None) -> float:
    """tiltalign prints residuals in nm once it knows the pixel size, in pixels (or unlabelled) before."""
    if unit == "nm":
        return 1.0
    if pixel_size_a is None:
        raise ImageFileError(path, f"residual error given in {unit or 'pixels'}, not nm: pass pixel_size_a")
    return pixel_size_a / 10


def _view_table(lines: list[str], start: int) -> list[list[float]]:
    rows = []
    for line in lines[start:]:
        fields = line.split()
        if not fields and not rows:
            continue
        try:
            row = [float(value) for value in fields]
        except ValueError:
            break
        if len(row) != 8:
            break
        rows.append(row)
    return rows


def parse_align_log(path: str | Path, pixel_size_a: float | None = None) -> dict[str, Any]:
    """Global residual error (nm), tilt axis at minimum tilt and per-view solution of tiltalign's log."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(path, "IMOD alignment log (align.log) not found")
    lines = path.read_text(errors="replace").splitlines()
    residual = next((match for line in lines if "Local area" not in line
                     for match in [_RESIDUAL.search(line)] if match), None)
    rotation = next((match for line in lines for match in [_ROTATION.search(line)] if match), None)
    header = next((index for index, line in enumerate(lines) if _VIEW_TABLE_HEADER.match(line)), None)
    if residual is None or rotation is None or header is None:
        raise ImageFileError(path, "not a complete tiltalign log: expected 'Residual error mean and sd', "
                                   "'At minimum tilt, rotation angle is' and the per-view solution table")
    try:
        mean, sd, tilt_axis_deg = float(residual.group(1)), float(residual.group(2)), float(rotation.group(1))
    except ValueError:
        raise ImageFileError(path, "non-numeric residual error or rotation angle") from None
    nm_per_unit = _nm_per_unit(residual.group(3), path, pixel_size_a)
    table = _view_table(lines, header + 1)
    if not table:
        raise ImageFileError(path, "per-view solution table has no rows")
    view_nm_per_unit = 1.0 if "resid-nm" in lines[header] else nm_per_unit  # older tiltalign: 'mean resid'
    return {"residual_error_mean_nm": mean * nm_per_unit, "residual_error_sd_nm": sd * nm_per_unit,
            "tilt_axis_deg": tilt_axis_deg,
            "views": [int(row[0]) for row in table], "view_rotation_deg": [row[1] for row in table],
            "tilt_angles_deg": [row[2] for row in table], "tilt_angle_change_deg": [row[3] for row in table],
            "view_residual_nm": [row[7] * view_nm_per_unit for row in table]}


def parse_result(inputs: BatchRunTomoInputs) -> dict[str, Any]:
    """Alignment statistics (align.log), refined tilts (.tlt), shifts (.xf) and the tomogram written."""
    folder = Path(inputs.stack_path).parent
    name = dataset_name(inputs)
    tomogram = tomogram_path(inputs)
    if not tomogram.is_file():
        raise ImageFileError(tomogram, "batchruntomo wrote no tomogram (see batchruntomo.log)")
    result = parse_align_log(folder / "align.log", inputs.pixel_size_a)
    xf = parse_xf(folder / f"{name}.xf")
    result.update(tilt_angles_deg=parse_tlt(folder / f"{name}.tlt"), shifts_px=xf["specimen_shifts_px"],
                  tomogram_path=str(tomogram), pixel_size_a=inputs.pixel_size_a * inputs.output_binning,
                  thickness_px=inputs.thickness_unbinned_px // inputs.output_binning)
    return result
