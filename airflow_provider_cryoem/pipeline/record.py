"""After a stage ran for a movie: add its rows to the Relion project and the results store.

Order: the movie's files (thumbnails, plots), then its Relion STAR rows, then its results row last, so that a
movie whose recording fails part-way (a full disk: DiskFullError, which fails the task for Airflow to retry)
is never recorded as done in the results store; every write is an idempotent upsert keyed by the movie, so
the retry completes it once. The result is checked against the store's columns first, so a value the store
refuses (an infinite fit resolution) fails the movie before anything reaches a STAR file.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Table

from ..engines.ctf import ctffind_diagnostic_picture
from ..engines.plots import drift_plot
from ..engines.thumbnails import micrograph_jpeg, picks_overlay
from ..io import read_mrc
from ..relion_project import CtfValues
from ..results import ResultsStore, records, schema
from ..results.summary import CTF, ICE_THICKNESS, MOTION_CORRECTION, PARTICLE_PICKING
from .stages import MovieContext

# The names the results summary uses for our stages (failures are counted under these).
RESULT_STAGE_NAMES = {"motioncorr": MOTION_CORRECTION, "ctf": CTF, "pick": PARTICLE_PICKING,
                      "ice": ICE_THICKNESS, "extract": "extraction"}


def ctf_values(ctf: dict[str, Any]) -> CtfValues:
    """Relion's view of a CTF result: the CC is the figure of merit, the fit resolution the max resolution."""
    return CtfValues(defocus_u_a=ctf["defocus_u_a"], defocus_v_a=ctf["defocus_v_a"],
                     astigmatism_angle_deg=ctf["astigmatism_angle_deg"], figure_of_merit=ctf["cc"],
                     max_resolution_a=ctf["fit_resolution_a"])


def _check(stage: str, table: Table, fields: Mapping[str, records.Field], result: dict[str, Any]) -> None:
    """Raise the store's ResultsInputError (a ValueError: the movie fails) for a value it would refuse."""
    records.row_values(stage, table, result, fields)


def _motioncorr(ctx: MovieContext, result: dict[str, Any], store: ResultsStore, job_id: int, movie_id: int) -> None:
    micrograph = Path(result["micrograph"])
    result["snapshot"] = str(micrograph_jpeg(read_mrc(micrograph, mmap=False), micrograph.with_suffix(".jpg")))
    if not result.get("drift_plot"):  # external programs draw none
        plot = micrograph.with_name(f"{micrograph.stem}_drift.png")
        result["drift_plot"] = str(drift_plot(result["shifts_px"], plot))
    _check("motion correction", schema.motion_correction, records.MOTION_CORRECTION, result)
    if ctx.item["experiment"] == "spa":  # a tilt's rows go into its series' STAR files when the series is taken
        ctx.project.add_movie(ctx.movie_path)
        ctx.project.add_motion_corrected(result["micrograph"], result["total_motion_a"], result["early_motion_a"],
                                         result["late_motion_a"])
    store.record_motion_correction(job_id, movie_id, result)


def _ctf(ctx: MovieContext, result: dict[str, Any], store: ResultsStore, job_id: int, movie_id: int) -> None:
    if not result.get("diagnostic_thumbnail") and result.get("rotational_average"):  # CTFFIND draws none
        result["diagnostic_thumbnail"] = str(ctffind_diagnostic_picture(result, ctx.params.min_resolution_a))
    _check("ctf", schema.ctf, records.CTF, result)  # a fit with no finite resolution must not reach the STAR
    if ctx.item["experiment"] == "spa":
        ctx.project.add_ctf(ctx.upstream["motioncorr"]["micrograph"], ctf_values(result), result["diagnostic_image"])
    store.record_ctf(job_id, movie_id, result)


def _pick(ctx: MovieContext, result: dict[str, Any], store: ResultsStore, job_id: int, movie_id: int) -> None:
    micrograph = ctx.upstream["motioncorr"]["micrograph"]
    if not result.get("summary_image"):  # external pickers draw none; named as the built-in picker's
        diameter_px = ctx.config.particle_diameter_a / ctx.config.motion_corrected_pixel_size_a
        result["summary_image"] = str(picks_overlay(read_mrc(micrograph, mmap=False), result["coordinates_px"],
                                                    diameter_px, ctx.output("autopick", "_picks.jpg")))
    _check("particle picking", schema.particle_picker, records.PARTICLE_PICKER, result)
    result["coordinates_star"] = str(ctx.project.add_picks(micrograph, result["coordinates_px"],
                                                           result["figures_of_merit"]))
    store.record_picking(job_id, movie_id, result)


def _ice(ctx: MovieContext, result: dict[str, Any], store: ResultsStore, job_id: int, movie_id: int) -> None:
    """The five figures into relative_ice_thickness (as cryoem-services' ISPyB RelativeIceThickness), the
    grouped (and flattened) micrograph into the IceBreaker jobs' lists, the figures into five_figs_test.csv."""
    _check("ice thickness", schema.relative_ice_thickness, records.RELATIVE_ICE_THICKNESS, result)
    motion = ctx.upstream["motioncorr"]
    for kind, key in (("icebreaker_micrographs", "grouped_micrograph"),
                      ("icebreaker_enhancecontrast", "flattened_micrograph")):
        if result.get(key):
            ctx.project.add_icebreaker_micrograph(kind, motion["micrograph"], result[key], motion["total_motion_a"],
                                                  motion["early_motion_a"], motion["late_motion_a"])
    ctx.project.add_ice_thickness(result["grouped_micrograph"], result)
    store.record_ice_thickness(job_id, movie_id, result)


def _extract(ctx: MovieContext, result: dict[str, Any], store: ResultsStore, job_id: int, movie_id: int) -> None:
    coordinates = [[row["rlnCoordinateX"], row["rlnCoordinateY"]] for row in result["particles"]]
    ctx.project.add_particles(ctx.upstream["motioncorr"]["micrograph"], result["stack"], coordinates,
                              ctf_values(ctx.upstream["ctf"]))


RECORDERS: dict[str, Callable[[MovieContext, dict[str, Any], ResultsStore, int, int], None]] = {
    "motioncorr": _motioncorr, "ctf": _ctf, "pick": _pick, "ice": _ice, "extract": _extract}
