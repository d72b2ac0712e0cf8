"""The tilt_series stage's take of a complete series (pipeline/tomo_series.py), against a real results store."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow_provider_cryoem.config import SessionConfig
from airflow_provider_cryoem.ingest import MovieFile
from airflow_provider_cryoem.pipeline.tomo_series import _take_one
from airflow_provider_cryoem.results import ResultsStore, engine_from_url
from airflow_provider_cryoem.results.tilt_results import TiltMovieResult
from airflow_provider_cryoem.tomo_ingest import PlannedTilt, SeriesDecision

ANGLES = [0.0, 6.0, -6.0, -12.0, 12.0]
CONFIG = SessionConfig(pixel_size_a=2.0, dose_per_frame_e_a2=1.0)


def _store(tmp_path: Path) -> tuple[ResultsStore, dict[str, Any]]:
    """A results store with one session, and the session's keys as a work item carries them."""
    store = ResultsStore(engine_from_url(f"sqlite:///{tmp_path / 'results.sqlite'}"))
    store.ensure_schema()
    session_id = store.get_or_create_session("s", "/data/raw", "/data/processing")
    return store, {"session_id": session_id, "session_name": "s", "processing_job_id": 1, "watch_dir": "/data/raw",
                   "processing_path": str(tmp_path), "relion_dir": str(tmp_path / "relion"),
                   "relion_dialect": "relion5", "experiment": "tomography", "results_conn_id": None}


def _complete_series(store: ResultsStore, session_id: int) -> tuple[SeriesDecision, dict[str, TiltMovieResult]]:
    """A series the planner calls complete, every tilt with motion correction and CTF done."""
    movies = [MovieFile(f"TS_01_{order:03d}_{angle:.1f}.tif", 1000, 0.0) for order, angle in enumerate(ANGLES, 1)]
    decision = SeriesDecision(series="TS_01", status="complete", reason="all tilts arrived", alignable=True,
                              tilts=[PlannedTilt(m, a, n) for n, (m, a) in enumerate(zip(movies, ANGLES), 1)])
    results = {m.relative_path: TiltMovieResult(
        movie_id=store.register_movie(session_id, m.relative_path), relative_path=m.relative_path,
        micrograph=f"/mc/{n}.mrc", frame_count=3, defocus_u_a=20000.0, defocus_v_a=20000.0, total_motion_a=2.0,
        early_motion_a=1.0, late_motion_a=1.0, astigmatism_angle_deg=0.0, ctf_fit_resolution_a=8.0,
        ctf_figure_of_merit=0.2, ctf_image=f"/ctf/{n}.jpg") for n, m in enumerate(movies)}
    return decision, results


def test_a_live_series_waits_for_claimed_tilts_that_have_no_results_yet(tmp_path):
    """Every tilt of the series arrived and was claimed, but another run has not started motion correction
    on the last one (no movie row, so no entry in the per-tilt results): the series is not completed without
    it. Seen under the real scheduler (tests/test_tomo_live_airflow.py): the series was aligned from the
    tilts one run had processed and the others were then recorded as late."""
    store, session = _store(tmp_path)
    decision, results = _complete_series(store, session["session_id"])
    del results[decision.tilts[-1].movie.relative_path]

    assert _take_one(CONFIG, session, store, decision, results, reprocess=False, run_id="run_1") is None
    (series,) = store.tilt_series_of_session(session["session_id"])
    assert series.status == "collecting" and not series.tilts


def test_a_retried_run_takes_the_series_it_completed_again_and_no_other_run_does(tmp_path):
    """The tilt_series task killed after it flipped a series complete but before it returned: its retry (same
    DAG run) gets the series back, so it is still reconstructed; any other run gets nothing."""
    store, session = _store(tmp_path)
    series_id = store.get_or_create_tilt_series(session["session_id"], "TS_01", None, 85.0, None)
    assert store.complete_tilt_series(series_id, "mdoc complete", "run_1")
    assert store.complete_tilt_series(series_id, "idle", "run_1")  # run_1 retried
    assert not store.complete_tilt_series(series_id, "idle", "run_2")
    assert not store.complete_tilt_series(series_id, "idle")
    (series,) = store.tilt_series_of_session(session["session_id"])
    assert series.completed_reason == "mdoc complete"


def test_at_the_session_end_a_series_is_taken_without_tilts_still_unprocessed_when_the_wait_ran_out(tmp_path):
    store, session = _store(tmp_path)
    decision, results = _complete_series(store, session["session_id"])
    stuck = decision.tilts[-1].movie.relative_path
    results[stuck] = TiltMovieResult(movie_id=results[stuck].movie_id, relative_path=stuck)  # never processed
    assert _take_one(CONFIG, session, store, decision, results, reprocess=False, run_id="r") is None  # waits

    item = _take_one(CONFIG, session, store, decision, results, reprocess=False, run_id="r", stop_waiting=True)
    assert item is not None and stuck not in [t["movie"] for t in item["tilt_series"]["tilts"]]
    (series,) = store.tilt_series_of_session(session["session_id"])
    excluded = {t.movie: t.exclusion_reason for t in series.tilts if t.excluded}
    assert series.status == "complete" and list(excluded) == [stuck] and "session's end" in excluded[stuck]
