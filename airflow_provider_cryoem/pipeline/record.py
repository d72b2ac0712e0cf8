"""After a stage ran for a movie: add its rows to the Relion project and the results store."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..relion_project import CtfValues
from ..results import ResultsStore
from ..results.summary import CTF, MOTION_CORRECTION, PARTICLE_PICKING
from .stages import MovieContext

# The names the results summary uses for our stages (failures are counted under these).
RESULT_STAGE_NAMES = {"motioncorr": MOTION_CORRECTION, "ctf": CTF, "pick": PARTICLE_PICKING,
                      "extract": "extraction"}


def ctf_values(ctf: dict[str, Any]) -> CtfValues:
    """Relion's view of a CTF result: the CC is the figure of merit, the fit resolution the max resolution."""
    return CtfValues(defocus_u_a=ctf["defocus_u_a"], defocus_v_a=ctf["defocus_v_a"],
                     astigmatism_angle_deg=ctf["astigmatism_angle_deg"], figure_of_merit=ctf["cc"],
                     max_resolution_a=ctf["fit_resolution_a"])


def _motioncorr(ctx: MovieContext, result: dict[str, Any], store: ResultsStore, job_id: int, movie_id: int) -> None:
    ctx.project.add_movie(ctx.movie_path)
    ctx.project.add_motion_corrected(result["micrograph"], result["total_motion_a"], result["early_motion_a"],
                                     result["late_motion_a"])
    store.record_motion_correction(job_id, movie_id, result)


def _ctf(ctx: MovieContext, result: dict[str, Any], store: ResultsStore, job_id: int, movie_id: int) -> None:
    ctx.project.add_ctf(ctx.upstream["motioncorr"]["micrograph"], ctf_values(result), result["diagnostic_image"])
    store.record_ctf(job_id, movie_id, result)


def _pick(ctx: MovieContext, result: dict[str, Any], store: ResultsStore, job_id: int, movie_id: int) -> None:
    result["coordinates_star"] = str(ctx.project.add_picks(ctx.upstream["motioncorr"]["micrograph"],
                                                           result["coordinates_px"], result["figures_of_merit"]))
    store.record_picking(job_id, movie_id, result)


def _extract(ctx: MovieContext, result: dict[str, Any], store: ResultsStore, job_id: int, movie_id: int) -> None:
    coordinates = [[row["rlnCoordinateX"], row["rlnCoordinateY"]] for row in result["particles"]]
    ctx.project.add_particles(ctx.upstream["motioncorr"]["micrograph"], result["stack"], coordinates,
                              ctf_values(ctx.upstream["ctf"]))


RECORDERS: dict[str, Callable[[MovieContext, dict[str, Any], ResultsStore, int, int], None]] = {
    "motioncorr": _motioncorr, "ctf": _ctf, "pick": _pick, "extract": _extract}
