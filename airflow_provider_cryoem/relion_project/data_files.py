"""Column sets and headers of the data STAR files each job produces (optics block + one table).

Column names follow Relion 3.1/5 and cryoem-services' `spa_output_files.py`. Both dialects use
optics groups; Relion 5 also carries the micrograph pixel size in the movies' optics table.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .job_types import STAR_VERSION, Dialect
from .models import CtfValues, OpticsGroup
from .star_text import Value, loop_block, loop_header


@dataclass(frozen=True)
class TableSpec:
    """One aggregate file: its name in the job folder, its data block, and its columns."""

    file_name: str
    block: str
    columns: tuple[str, ...]
    optics: str | None  # "movies", "micrographs", "particles" or None for no optics block
    key_column: str = "rlnMicrographName"  # rows are replaced per value of this column


MOVIES = TableSpec("movies.star", "movies", ("rlnMicrographMovieName", "rlnOpticsGroup"), "movies",
                   "rlnMicrographMovieName")
CORRECTED_MICROGRAPHS = TableSpec(
    "corrected_micrographs.star", "micrographs",
    ("rlnMicrographName", "rlnOpticsGroup", "rlnAccumMotionTotal", "rlnAccumMotionEarly", "rlnAccumMotionLate"),
    "micrographs")
# IceBreaker's micrograph jobs list their output micrographs with the motion-corrected ones' motion.
GROUPED_MICROGRAPHS = replace(CORRECTED_MICROGRAPHS, file_name="grouped_micrographs.star")
FLATTENED_MICROGRAPHS = replace(CORRECTED_MICROGRAPHS, file_name="flattened_micrographs.star")
MICROGRAPHS_CTF = TableSpec(
    "micrographs_ctf.star", "micrographs",
    ("rlnMicrographName", "rlnOpticsGroup", "rlnCtfImage", "rlnDefocusU", "rlnDefocusV", "rlnCtfAstigmatism",
     "rlnDefocusAngle", "rlnCtfFigureOfMerit", "rlnCtfMaxResolution"),
    "micrographs")
AUTOPICK = TableSpec("autopick.star", "coordinate_files", ("rlnMicrographName", "rlnMicrographCoordinates"), None)
PARTICLES = TableSpec(
    "particles.star", "particles",
    ("rlnCoordinateX", "rlnCoordinateY", "rlnImageName", "rlnMicrographName", "rlnOpticsGroup",
     "rlnCtfMaxResolution", "rlnCtfFigureOfMerit", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
     "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift"),
    "particles")
METADATA_COLUMN = "rlnMicrographMetadata"
COORDINATE_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY")
FIGURE_OF_MERIT_COLUMN = "rlnAutopickFigureOfMerit"


def with_metadata(spec: TableSpec) -> TableSpec:
    """corrected_micrographs.star with rlnMicrographMetadata after the micrograph name."""
    return TableSpec(spec.file_name, spec.block, spec.columns[:1] + (METADATA_COLUMN,) + spec.columns[1:],
                     spec.optics, spec.key_column)


def optics_block(optics: OpticsGroup, kind: str, dialect: Dialect) -> str:
    """The data_optics table for movies, micrographs or particles."""
    pairs: dict[str, Value] = {
        "rlnOpticsGroupName": optics.name, "rlnOpticsGroup": optics.number,
        "rlnMicrographOriginalPixelSize": optics.movie_pixel_size_a, "rlnVoltage": optics.voltage_kv,
        "rlnSphericalAberration": optics.cs_mm, "rlnAmplitudeContrast": optics.amplitude_contrast}
    if kind == "micrographs" or (kind == "movies" and dialect == "relion5"):
        pairs["rlnMicrographPixelSize"] = optics.micrograph_pixel_size_a
    if kind == "particles":
        if optics.particle_box_px is None or optics.particle_pixel_size_a is None:
            raise ValueError("OpticsGroup.particle_box_px and particle_pixel_size_a are needed to write particles")
        pairs |= {"rlnImagePixelSize": optics.particle_pixel_size_a, "rlnImageSize": optics.particle_box_px,
                  "rlnImageDimensionality": 2, "rlnCtfDataAreCtfPremultiplied": 0}
    return loop_block("optics", list(pairs), [list(pairs.values())], STAR_VERSION[dialect])


def file_header(spec: TableSpec, optics: OpticsGroup | None, dialect: Dialect) -> str:
    """Everything before the first row: the optics table (if any) and the data table's columns."""
    head = ""
    if spec.optics is not None:
        if optics is None:
            raise ValueError(f"an OpticsGroup is needed to write {spec.file_name}")
        head = optics_block(optics, spec.optics, dialect)
    return head + loop_header(spec.block, spec.columns, STAR_VERSION[dialect])


def ctf_row_values(ctf: CtfValues) -> dict[str, Value]:
    """CTF columns shared by micrographs_ctf.star and particles.star."""
    return {"rlnDefocusU": ctf.defocus_u_a, "rlnDefocusV": ctf.defocus_v_a,
            "rlnDefocusAngle": ctf.astigmatism_angle_deg, "rlnCtfFigureOfMerit": ctf.figure_of_merit,
            "rlnCtfMaxResolution": ctf.max_resolution_a}


# Where Relion's CTFFIND wrapper keeps CTFFIND's output beside `<stem>.ctf`; ccpem-pipeliner's CtfFind results
# display reads these files' summary lines (defocus, astigmatism azimuth, Thon-ring resolution).
CTFFIND_LOG_SUFFIX = "_ctffind4.log"


def ctffind_log_text(ctf: CtfValues) -> str:
    """The result lines CTFFIND 4 prints (and Relion keeps in `<stem>_ctffind4.log`) for a fit."""
    return (f"Estimated defocus values        : {ctf.defocus_u_a:.2f} , {ctf.defocus_v_a:.2f} Angstroms\n"
            f"Estimated azimuth of astigmatism: {ctf.astigmatism_angle_deg:.2f} degrees\n"
            f"Score                           : {ctf.figure_of_merit:.5f}\n"
            f"Thon rings with good fit up to  : {ctf.max_resolution_a:.1f} Angstroms\n")


def coordinates_text(coordinates_px: list[tuple[float, float]] | list[list[float]],
                     figures_of_merit: list[float] | None, dialect: Dialect) -> str:
    """A per-micrograph coordinate file (`data_` + X, Y [+ figure of merit]), as Relion's pickers write."""
    columns = list(COORDINATE_COLUMNS) + ([FIGURE_OF_MERIT_COLUMN] if figures_of_merit is not None else [])
    if figures_of_merit is not None and len(figures_of_merit) != len(coordinates_px):
        raise ValueError(f"{len(figures_of_merit)} figures of merit for {len(coordinates_px)} coordinates")
    rows = [[float(x), float(y)] + ([float(figures_of_merit[i])] if figures_of_merit is not None else [])
            for i, (x, y) in enumerate(coordinates_px)]
    return loop_block("", columns, rows, STAR_VERSION[dialect])
