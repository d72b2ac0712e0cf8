"""Tilt series of a tomography session: which became complete in this run (taken once), and their tomograms.

Every run's `tilt_series` task looks at the whole session: the mdoc files and tilt movies in the folder
(tomo_ingest decides completeness), and what the per-tilt stages of all runs recorded (results store). A
series whose tilts are all processed is completed in the results store by exactly one run (an atomic flip),
which then maps its `tomogram` task over it; a retried or overlapping run never aligns it again, and a tilt
that lands after completion is recorded as late and reported. A reprocess run takes every series again.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..config import SessionConfig
from ..engines.motion import half_sum_paths
from ..ingest import MovieFile, scan_folder
from ..io import ImageFileError
from ..io.mdoc import MdocSeries, read_mdoc
from ..results import ResultsStore
from ..results.tilt_results import TiltMovieResult
from ..tomo_ingest import SeriesDecision, plan_series
from ..relion_project import CtfValues, OpticsGroup
from .session import session_item
from .stores import relion_project, results_store
from .watch import WatchSettings, scan_session_folder

log = logging.getLogger(__name__)
# At the session's end the last run waits this long at most for tilts other runs are still processing.
STRAGGLER_WAIT_S = 1800.0
_STRAGGLER_POLL_S = 5.0


def take_complete_series(config: SessionConfig, opened: dict[str, Any], found: dict[str, Any],
                         run_id: str) -> list[dict[str, Any]]:
    """The tilt series this run completed (one work item each, with their tilts' results)."""
    items = []
    for session in opened["sessions"]:
        items += _take_session_series(config, session, found["session_over"], run_id)
    return items


def _mdocs(watch: WatchSettings) -> dict[str, MdocSeries | ImageFileError]:
    """Every mdoc of the watched folder (inside it, never the processing folder), read or its error."""
    scan = scan_folder(watch.watch_dir, "*.mdoc", watch.end_marker, 0.0, skip_dir=watch.processing_path)
    read: dict[str, MdocSeries | ImageFileError] = {}
    for found in scan.complete + scan.incomplete:
        try:
            read[found.relative_path] = read_mdoc(Path(watch.watch_dir) / found.relative_path)
        except ImageFileError as exc:
            read[found.relative_path] = exc
    return read


def _results(store: ResultsStore, session: dict[str, Any], reprocess: bool) -> dict[str, TiltMovieResult]:
    return store.tilt_movie_results(session["session_id"], session["processing_job_id"] if reprocess else None)


def _wait_for_stragglers(store: ResultsStore, session: dict[str, Any], reprocess: bool,
                         claimed: set[str]) -> tuple[dict[str, TiltMovieResult], bool]:
    """At the session's end: wait until every claimed tilt has its results (other runs may still be on them);
    the results, and whether the wait ran out with tilts still unprocessed."""
    deadline = time.monotonic() + STRAGGLER_WAIT_S
    while True:
        results = _results(store, session, reprocess)
        pending = [path for path in claimed if not (path in results and results[path].processed)]
        if not pending or time.monotonic() > deadline:
            if pending:
                log.warning("%d tilt(s) still unprocessed after %.0f s; their series go on without them",
                            len(pending), STRAGGLER_WAIT_S)
            return results, bool(pending)
        time.sleep(_STRAGGLER_POLL_S)


def _completed(store: ResultsStore, session_id: int) -> dict[str, list[str]]:
    """Series completed earlier, with the movies they were completed with (late tilts left out)."""
    return {series.name: [t.movie for t in series.tilts if not t.late]
            for series in store.tilt_series_of_session(session_id) if series.status == "complete"}


def _take_session_series(config: SessionConfig, session: dict[str, Any], session_over: bool,
                         run_id: str) -> list[dict[str, Any]]:
    watch = WatchSettings.model_validate(session["watch"])
    store = results_store(session["results_conn_id"], session["processing_path"])
    reprocess = Path(session["relion_dir"]).name != "relion"
    scan = scan_session_folder(watch)
    claimed = store.claimed_files(session["session_id"])
    results, gave_up = _wait_for_stragglers(store, session, reprocess, claimed) if session_over \
        else (_results(store, session, reprocess), False)
    plan = plan_series(_mdocs(watch), [m for m in scan.complete if m.relative_path in claimed],
                       {} if reprocess else _completed(store, session["session_id"]), now_s=time.time(),
                       stable_for_s=watch.stable_for_s, tilt_series_idle_s=config.tilt_series_idle_s,
                       session_ended=session_over or reprocess,
                       expected_range_deg=(-config.tilt_range_deg, config.tilt_range_deg),
                       still_writing=scan.incomplete)
    for movie in plan.unmatched:
        log.warning("%s: not a tilt of any series (no mdoc lists it, its name has no tilt angle)",
                    movie.relative_path)
    taken = [_take_one(config, session, store, decision, results, reprocess, run_id, gave_up)
             for decision in plan.series]
    return [item for item in taken if item is not None]


def _tilt_rows(config: SessionConfig, decision: SeriesDecision,
               results: dict[str, TiltMovieResult]) -> list[dict[str, Any]]:
    """The series' tilts in acquisition order with what the results store needs: z value, order and the
    dose received before each (the mdoc's per-tilt dose, else the session's dose per tilt)."""
    planned = [(t.movie, t) for t in decision.tilts] + [(e.movie, None) for e in decision.excluded]
    duplicate_angles = {e.movie.relative_path: e.angle_deg for e in decision.excluded}
    planned = [(movie, tilt) for movie, tilt in planned if movie.relative_path in results]

    def order_key(entry: tuple[MovieFile, Any]) -> tuple[float, float, str]:
        movie, tilt = entry
        z_value = tilt.mdoc_tilt.z_value if tilt is not None and tilt.mdoc_tilt is not None else None
        number = tilt.tilt_number if tilt is not None and tilt.tilt_number is not None else None
        return (z_value if z_value is not None else number if number is not None else float("inf"),
                movie.mtime_s, movie.relative_path)

    rows, pre_exposure = [], 0.0
    for order, (movie, tilt) in enumerate(sorted(planned, key=order_key)):
        result = results[movie.relative_path]
        mdoc_tilt = tilt.mdoc_tilt if tilt is not None else None
        dose = mdoc_tilt.exposure_dose_e_a2 if mdoc_tilt is not None and mdoc_tilt.exposure_dose_e_a2 else \
            config.dose_per_tilt_e_a2
        excluded = "duplicate tilt angle" if tilt is None else \
            (f"{result.failed_stage} failed" if result.failed_stage else None)
        rows.append({"movie": movie.relative_path, "movie_id": result.movie_id,
                     "z_value": mdoc_tilt.z_value if mdoc_tilt is not None else order,
                     "tilt_angle_deg": tilt.angle_deg if tilt is not None else duplicate_angles[movie.relative_path],
                     "acquisition_order": order, "pre_exposure_e_a2": pre_exposure if dose is not None else None,
                     "excluded": excluded})
        pre_exposure += dose or 0.0
    return rows


def _take_one(config: SessionConfig, session: dict[str, Any], store: ResultsStore, decision: SeriesDecision,
              results: dict[str, TiltMovieResult], reprocess: bool, run_id: str,
              stop_waiting: bool = False) -> dict[str, Any] | None:
    """Register the series and its tilts; the work item if this run completed it, else None.

    `stop_waiting`: the session is over and its wait for unprocessed tilts ran out; the series is taken
    without them (each excluded with the reason) rather than never."""
    mdoc = decision.mdoc
    axis_deg = mdoc.tilt_axis_deg if mdoc is not None and mdoc.tilt_axis_deg is not None else config.tilt_axis_deg
    series_id = store.get_or_create_tilt_series(session["session_id"], decision.series, decision.mdoc_path,
                                                axis_deg, len(mdoc.tilts) if mdoc is not None and mdoc.tilts else None)
    rows = _tilt_rows(config, decision, results)
    tilt_keys = ("z_value", "tilt_angle_deg", "acquisition_order", "pre_exposure_e_a2")
    if decision.status == "late":
        late = {movie.relative_path for movie in decision.late}
        for row in rows:
            if row["movie"] in late:
                store.record_late_tilt(series_id, row["movie_id"], *(row[key] for key in tilt_keys))
        log.warning("%s: %s", decision.series, decision.reason)
        return None
    if decision.status != "complete":
        return None
    planned = [tilt.movie.relative_path for tilt in decision.tilts] + \
        [tilt.movie.relative_path for tilt in decision.excluded]
    if not reprocess and not stop_waiting and \
            not all(path in results and results[path].processed for path in planned):
        # Some of its tilts are still in motion correction or CTF, or claimed by another run that has not
        # started on them (no results yet); a later run takes the series with them.
        return None
    for row in rows:
        if stop_waiting and not row["excluded"] and not results[row["movie"]].processed:
            row["excluded"] = f"not processed within {STRAGGLER_WAIT_S:.0f} s of the session's end"
    for row in rows:
        store.add_tilt(series_id, row["movie_id"], *(row[key] for key in tilt_keys))
        if row["excluded"]:
            store.mark_tilt_excluded(row["movie_id"], row["excluded"])
    reason = decision.reason + ("" if decision.alignable else f"; not aligned: {'; '.join(decision.problems)}")
    if not store.complete_tilt_series(series_id, reason, run_id) and not reprocess:
        return None  # another run completed it first
    if not decision.alignable:
        log.warning("%s: complete but not aligned: %s", decision.series, "; ".join(decision.problems))
        return None
    tilts = [{**row, **results[row["movie"]].model_dump(exclude={"movie_id", "relative_path"})}
             for row in rows if not row["excluded"] and results[row["movie"]].micrograph is not None]
    _write_tilt_star_files(config, session, decision, axis_deg, tilts)
    return session_item(session, tilt_series={
        "tilt_series_id": series_id, "name": decision.series, "mdoc": decision.mdoc_path,
        "tilt_axis_deg": axis_deg, "reason": decision.reason, "tilts": tilts})


def _write_tilt_star_files(config: SessionConfig, session: dict[str, Any], decision: SeriesDecision,
                           axis_deg: float, tilts: list[dict[str, Any]]) -> None:
    """The series' tilts in the Relion 5 project: Import, MotionCorr, CtfFind and the tilts kept."""
    project = relion_project(session["relion_dir"], OpticsGroup.from_session(config), session["relion_dialect"],
                             "tomography")
    watch_dir = Path(session["watch_dir"])
    # the even/odd sums are listed when every tilt has them (motion correction with even_odd_sums)
    sums = [half_sum_paths(tilt["micrograph"]) for tilt in tilts]
    with_sums = all(path.is_file() for pair in sums for path in pair)
    for tilt, pair in zip(tilts, sums):
        movie = watch_dir / tilt["movie"]
        mdoc_tilt = next((t.mdoc_tilt for t in decision.tilts if t.movie.relative_path == tilt["movie"]), None)
        nominal_defocus_um = mdoc_tilt.defocus_um if mdoc_tilt is not None and mdoc_tilt.defocus_um else \
            tilt["defocus_u_a"] / 1e4
        project.add_tilt_movie(decision.series, movie, tilt["frame_count"], tilt["tilt_angle_deg"], axis_deg,
                               tilt["pre_exposure_e_a2"] or 0.0, abs(nominal_defocus_um))
        project.add_motion_corrected_tilt(decision.series, movie, tilt["micrograph"], tilt["total_motion_a"],
                                          tilt["early_motion_a"], tilt["late_motion_a"], pair if with_sums else None)
        project.add_tilt_ctf(decision.series, movie, CtfValues(
            defocus_u_a=tilt["defocus_u_a"], defocus_v_a=tilt["defocus_v_a"],
            astigmatism_angle_deg=tilt["astigmatism_angle_deg"], figure_of_merit=tilt["ctf_figure_of_merit"] or 0.0,
            max_resolution_a=tilt["ctf_fit_resolution_a"]), tilt["ctf_image"])
    project.select_tilts(decision.series, [watch_dir / tilt["movie"] for tilt in tilts])
