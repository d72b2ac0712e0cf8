"""Relion 5 tomography STAR files: one global table per job and one table per tilt series, grown live.

Layout, as Relion 5.0 writes it (verified against its sources, since Relion cannot run here):
- Every tomography job writes a global file (`data_global`, one row per tilt series, `rlnTomoName` first)
  whose `rlnTomoTiltSeriesStarFile` points to `<job>/tilt_series/<name>.star`, a file holding one table
  named after the series (`data_<name>`) with one row per tilt. Sources: `import_tilt_series/serialem.py`
  (starfile.write({'global': ...}), {name: ...}), `TomogramSet::write` in `jaz/tomography/tomogram_set.cpp`
  (each job rewrites the per-series files into its own `tilt_series/` folder) and Relion's own test data
  `tomography_python_programs/_tests/test_project_directory/tilt_series_metadata/`.
- Each job keeps the tilt columns of its input and adds its own, so a CtfFind row still has the movie, the
  nominal angles and the motion (the rows of Relion's test data carry every column up to the alignment).
- Files per job: Import `tilt_series.star`, MotionCorr `corrected_tilt_series.star` (motioncorr_runner.cpp),
  CtfFind `tilt_series_ctf.star` (ctffind_runner.cpp), ExcludeTiltImages `selected_tilt_series.star`,
  AlignTiltSeries `aligned_tilt_series.star` (align_tilt_series/_job_utils.py), Tomograms `tomograms.star`
  with the volumes in `tomograms/rec_<name>.mrc` (reconstruct_tomogram.cpp, getOutputFileName).
- Labels are spelled exactly as in Relion 5.0's `src/metadata_label.h` (tests check them against that list);
  the column sets per job match cryoem-services' `util/tomo_output_files.py`, which writes the same files
  for Murfey-driven live sessions, and Relion's tutorial Import/job001/tilt_series.star (EMPIAR-10164).

Rows are written with aggregate.py: per-tilt files row by row (a retried tilt replaces its row), files
produced once per series (selection, alignment, the tomogram's copy) whole. Callers hold the project lock.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..io import ImageFileError
from .aggregate import replace_rows, upsert_rows
from .job_types import STAR_VERSION
from .models import OpticsGroup
from .star_text import Value, loop_header, parse_star

VERSION = STAR_VERSION["relion5"]  # tomography is Relion 5 only
GLOBAL_BLOCK = "global"
SERIES_FOLDER = "tilt_series"
TOMOGRAM_FOLDER = "tomograms"
NAME_COLUMN = "rlnTomoName"
STAR_FILE_COLUMN = "rlnTomoTiltSeriesStarFile"
MOVIE_COLUMN = "rlnMicrographMovieName"  # the key of per-tilt rows in every job's files

# Global columns: serialem.py's global_df (rlnMtfFileName is optional there and left out here).
IMPORT_GLOBAL = (NAME_COLUMN, STAR_FILE_COLUMN, "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                 "rlnMicrographOriginalPixelSize", "rlnTomoHand", "rlnOpticsGroupName")
# Motion correction sets the pixel size of the corrected tilts (original × binning, motioncorr_runner.cpp).
TILT_SERIES_GLOBAL = IMPORT_GLOBAL + ("rlnTomoTiltSeriesPixelSize",)
# reconstruct_tomogram.cpp: binning, bin-1 size ("Width of a bin-1 tomogram in pixels") and the volume.
TOMOGRAMS_GLOBAL = TILT_SERIES_GLOBAL + ("rlnTomoTomogramBinning", "rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ",
                                         "rlnTomoReconstructedTomogram")
# Relion 5's Denoise job keeps the tomograms.star row and adds the denoised volume (cryoem-services' node
# creator writes the same for its Topaz runs).
DENOISED_COLUMN = "rlnTomoReconstructedTomogramDenoised"
DENOISED_GLOBAL = TOMOGRAMS_GLOBAL + (DENOISED_COLUMN,)

# Per-tilt columns: serialem.py's _generate_tilt_image_dataframe, in its order.
IMPORT_TILT = (MOVIE_COLUMN, "rlnTomoTiltMovieFrameCount", "rlnTomoNominalStageTiltAngle",
               "rlnTomoNominalTiltAxisAngle", "rlnMicrographPreExposure", "rlnTomoNominalDefocus")
# motioncorr_runner.cpp (rlnMicrographMetadata is left out: no Relion per-movie metadata file is written).
MOTIONCORR_TILT = IMPORT_TILT + ("rlnMicrographName", "rlnAccumMotionTotal", "rlnAccumMotionEarly",
                                 "rlnAccumMotionLate")
# ctffind_runner.cpp, in its order.
CTF_TILT = MOTIONCORR_TILT + ("rlnCtfImage", "rlnDefocusU", "rlnDefocusV", "rlnCtfAstigmatism", "rlnDefocusAngle",
                              "rlnCtfFigureOfMerit", "rlnCtfMaxResolution")
# ctffind_runner.cpp also gathers every tilt's fit into one anonymous block, power_spectra_fits.star, "for
# visualisation of Thon ring fits" (the micrograph name deactivated); ccpem-pipeliner's tomography CtfFind
# display reads its defocus and astigmatism from there.
POWER_SPECTRA_FILE = "power_spectra_fits.star"
POWER_SPECTRA_COLUMNS = ("rlnCtfImage", "rlnDefocusU", "rlnDefocusV", "rlnCtfAstigmatism", "rlnDefocusAngle",
                         "rlnCtfFigureOfMerit", "rlnCtfMaxResolution")
# Motion correction with "Save images for denoising?" adds the even- and odd-frame sums before rlnMicrographName
# (motioncorr_runner.cpp), and the reconstruction with "Generate tomograms for denoising?" the half tomograms
# after rlnTomoReconstructedTomogram (reconstruct_tomogram.cpp); later jobs keep both. Present only when written.
HALF_SUM_COLUMNS = ("rlnMicrographNameEven", "rlnMicrographNameOdd")
HALF_TOMOGRAM_COLUMNS = ("rlnTomoReconstructedTomogramHalf1", "rlnTomoReconstructedTomogramHalf2")
# align_tilt_series/{aretomo,imod}/align_tilt_series.py.
ALIGNED_TILT = CTF_TILT + ("rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst", "rlnTomoYShiftAngst")


@dataclass(frozen=True)
class TomoTable:
    """The files one tomography job writes: its global file and the columns of its per-series files."""

    file_name: str
    global_columns: tuple[str, ...]
    tilt_columns: tuple[str, ...]


IMPORT = TomoTable("tilt_series.star", IMPORT_GLOBAL, IMPORT_TILT)
MOTIONCORR = TomoTable("corrected_tilt_series.star", TILT_SERIES_GLOBAL, MOTIONCORR_TILT)
CTFFIND = TomoTable("tilt_series_ctf.star", TILT_SERIES_GLOBAL, CTF_TILT)
SELECTED = TomoTable("selected_tilt_series.star", TILT_SERIES_GLOBAL, CTF_TILT)
ALIGNED = TomoTable("aligned_tilt_series.star", TILT_SERIES_GLOBAL, ALIGNED_TILT)
TOMOGRAMS = TomoTable("tomograms.star", TOMOGRAMS_GLOBAL, ALIGNED_TILT)
DENOISED = TomoTable("tomograms.star", DENOISED_GLOBAL, ALIGNED_TILT)


class TiltAlignmentValues(BaseModel):
    """One tilt's place in the aligned series, in Relion's terms (extrinsic X, Y, Z rotations, shifts in Å).

    Relion's AreTomo and IMOD wrappers write X tilt 0, Y tilt = the refined tilt angle and Z rotation = the
    refined tilt axis; the shifts move the specimen's projection onto the tilt image.
    """

    model_config = ConfigDict(frozen=True)

    movie: str = Field(min_length=1, description="The tilt's movie, as given to add_tilt_movie.")
    x_tilt_deg: float = 0.0
    y_tilt_deg: float
    z_rot_deg: float
    x_shift_a: float
    y_shift_a: float


def _with_optional(columns: tuple[str, ...], values: Mapping[str, Value], optional: tuple[str, ...],
                   anchor: str, after: bool) -> tuple[str, ...]:
    """`columns` with the `optional` ones placed before (or after) `anchor` when `values` has them all."""
    if anchor not in columns or not all(column in values for column in optional):
        return columns
    at = columns.index(anchor) + (1 if after else 0)
    return columns[:at] + optional + columns[at:]


def tilt_columns(table: TomoTable, values: Mapping[str, Value]) -> tuple[str, ...]:
    """The per-tilt columns a row of `table` is written with: with the half sums when it has them."""
    return _with_optional(table.tilt_columns, values, HALF_SUM_COLUMNS, "rlnMicrographName", after=False)


def global_columns(table: TomoTable, values: Mapping[str, Value]) -> tuple[str, ...]:
    """The global columns a series' row of `table` is written with: with the half tomograms when it has them."""
    return _with_optional(table.global_columns, values, HALF_TOMOGRAM_COLUMNS, "rlnTomoReconstructedTomogram",
                          after=True)


def check_series_name(name: str) -> str:
    """A series name names a STAR data block and a file: no whitespace, no folders."""
    if not name or any(ch.isspace() for ch in name) or "/" in name or name.startswith((".", "#", "_")):
        raise ValueError(f"tilt series name {name!r} cannot name a STAR block and file")
    return name


def series_file(job_dir: Path, name: str) -> Path:
    return job_dir / SERIES_FOLDER / f"{name}.star"


def global_row(table: TomoTable, name: str, series_star: str, optics: OpticsGroup,
               extra: Mapping[str, Value] | None = None) -> list[Value]:
    """One series' row of a global file (`series_star`: the project-relative per-series file)."""
    values: dict[str, Value] = {
        NAME_COLUMN: name, STAR_FILE_COLUMN: series_star, "rlnVoltage": optics.voltage_kv,
        "rlnSphericalAberration": optics.cs_mm, "rlnAmplitudeContrast": optics.amplitude_contrast,
        "rlnMicrographOriginalPixelSize": optics.movie_pixel_size_a, "rlnTomoHand": float(optics.tomo_hand),
        "rlnOpticsGroupName": optics.name, "rlnTomoTiltSeriesPixelSize": optics.micrograph_pixel_size_a,
        **(extra or {})}
    return [values[column] for column in global_columns(table, values)]


def import_tilt_values(movie: str, frame_count: int, tilt_angle_deg: float, tilt_axis_deg: float,
                       pre_exposure_e_a2: float, nominal_defocus_um: float) -> dict[str, Value]:
    """Import's columns for one tilt; rlnTomoNominalDefocus is SerialEM's TargetDefocus, negative µm for
    underfocus (ctffind_runner.cpp reads it as `-10000 * value` Å), so the project's positive underfocus flips."""
    return {MOVIE_COLUMN: movie, "rlnTomoTiltMovieFrameCount": int(frame_count),
            "rlnTomoNominalStageTiltAngle": float(tilt_angle_deg), "rlnTomoNominalTiltAxisAngle": float(tilt_axis_deg),
            "rlnMicrographPreExposure": float(pre_exposure_e_a2), "rlnTomoNominalDefocus": -float(nominal_defocus_um)}


def upstream_rows(job_dir: Path, name: str) -> dict[str, dict[str, str]]:
    """The tilts of series `name` as job `job_dir` wrote them, by movie, in file order (empty if none)."""
    path = series_file(job_dir, name)
    if not path.exists():
        return {}
    try:
        block = parse_star(path.read_text())[name]
        key = block.column(MOVIE_COLUMN)
    except (KeyError, ValueError) as exc:
        raise ImageFileError(path, f"not a tilt series table for {name} ({exc})") from None
    return {row[key]: dict(zip(block.columns, row)) for row in block.rows}


def upstream_row(job_dir: Path, name: str, movie: str) -> dict[str, str]:
    """One tilt's row written by the job before this one; a clear error if that job has not written it."""
    row = upstream_rows(job_dir, name).get(movie)
    if row is None:
        raise ImageFileError(series_file(job_dir, name), f"has no row for {movie}: record the earlier stage first")
    return row


def upsert_tilt(job_dir: Path, job_name: str, table: TomoTable, name: str, values: Mapping[str, Value],
                optics: OpticsGroup) -> None:
    """Write one tilt's row into the series file and make sure the series has its row in the global file."""
    missing = [column for column in table.tilt_columns if column not in values]
    if missing:
        raise ValueError(f"tilt row for {table.file_name} lacks {missing}")
    path = series_file(job_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = tilt_columns(table, values)
    upsert_rows(path, loop_header(name, columns, VERSION), name, columns, MOVIE_COLUMN, str(values[MOVIE_COLUMN]),
                [[values[column] for column in columns]])
    upsert_series(job_dir, job_name, table, name, optics)


def upsert_power_spectrum(job_dir: Path, values: Mapping[str, Value]) -> None:
    """Write one tilt's fit into the CtfFind job's power_spectra_fits.star (a retried tilt replaces its row)."""
    upsert_rows(job_dir / POWER_SPECTRA_FILE, loop_header("", POWER_SPECTRA_COLUMNS, VERSION), "",
                POWER_SPECTRA_COLUMNS, "rlnCtfImage", str(values["rlnCtfImage"]),
                [[values[column] for column in POWER_SPECTRA_COLUMNS]])


def replace_series(job_dir: Path, job_name: str, table: TomoTable, name: str, rows: Sequence[Mapping[str, Value]],
                   optics: OpticsGroup, extra: Mapping[str, Value] | None = None) -> None:
    """Write a series' whole per-tilt file at once and its row in the global file (a retry replaces both)."""
    for row in rows:
        missing = [column for column in table.tilt_columns if column not in row]
        if missing:
            raise ValueError(f"tilt row for {table.file_name} lacks {missing}")
    columns = table.tilt_columns  # the half sums only when every tilt has them
    if rows and all(column in row for row in rows for column in HALF_SUM_COLUMNS):
        columns = tilt_columns(table, rows[0])
    replace_rows(series_file(job_dir, name), loop_header(name, columns, VERSION),
                 [[row[column] for column in columns] for row in rows])
    upsert_series(job_dir, job_name, table, name, optics, extra)


def upsert_series(job_dir: Path, job_name: str, table: TomoTable, name: str, optics: OpticsGroup,
                  extra: Mapping[str, Value] | None = None) -> None:
    """The series' row in the job's global file, pointing at `<job>/tilt_series/<name>.star`."""
    series_star = f"{job_name}{SERIES_FOLDER}/{name}.star"
    columns = global_columns(table, extra or {})
    upsert_rows(job_dir / table.file_name, loop_header(GLOBAL_BLOCK, columns, VERSION), GLOBAL_BLOCK, columns,
                NAME_COLUMN, name, [global_row(table, name, series_star, optics, extra)])


def global_values(job_dir: Path, table: TomoTable, name: str) -> dict[str, str]:
    """Series `name`'s row of a job's global file (`table.file_name`), by column; an error names the file."""
    path = job_dir / table.file_name
    try:
        block = parse_star(path.read_text())[GLOBAL_BLOCK]
        key = block.column(NAME_COLUMN)
    except (OSError, KeyError, ValueError) as exc:
        raise ImageFileError(path, f"no global table of tilt series ({exc})") from None
    for row in block.rows:
        if row[key] == name:
            return dict(zip(block.columns, row))
    raise ImageFileError(path, f"has no row for tilt series {name}")


def tomogram_file(job_dir: Path, name: str, half: int | None = None) -> Path:
    """Where Relion's reconstruction puts a series' tomogram: `<job>/tomograms/rec_<name>.mrc`, its half
    tomograms `rec_<name>_half1.mrc` and `_half2.mrc`."""
    return job_dir / TOMOGRAM_FOLDER / (f"rec_{name}.mrc" if half is None else f"rec_{name}_half{half}.mrc")

