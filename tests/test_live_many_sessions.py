"""Three live sessions of spa_live and a reprocessing run of spa_reprocess at once on one scheduler
(LocalExecutor, PostgreSQL metadata and results).

Two microscopes stream a movie every 3 s while a third dumps its whole session in a burst, into three
folders whose movies have the same names (the simulator numbers them alike), as three grids of one facility
would; meanwhile a finished session of a fourth folder, again with the same movie names, is reprocessed.
Each session must get exactly its own movies, rows and Relion project; the burst must not starve the
streams (the session's own tasks go first, and each run's burst is cut into at most `parallel_tasks`
mapped tasks, so a burst adds task instances, not a queue the others wait behind).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import starfile
from sqlalchemy import text

from airflow_provider_cryoem.devtools.live_session import (
    LIVE_MOVIE_INTERVAL_S,
    LIVE_TEST_PARALLELISM,
    LIVE_TEST_SETTINGS,
    Microscope,
    copy_recipes,
    landed_s,
    live_stack,
    session_conf,
    session_row,
    stage_runs,
    start_session,
    trigger,
    wait_for_session_end,
)
from airflow_provider_cryoem.devtools.local_airflow import wait_until
from airflow_provider_cryoem.simulate import prepare_session_folder, write_spa_session

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

DAG_ID = "spa_live"
N_MOVIES = 6
# session name -> (seed, seconds between movies: two streams and a burst)
SESSIONS = {"grid_a": (41, LIVE_MOVIE_INTERVAL_S), "grid_b": (42, LIVE_MOVIE_INTERVAL_S), "grid_burst": (43, 0.2)}
REPROCESS_DAG_ID = "spa_reprocess"
REPROCESSED = "grid_done"  # a finished session reprocessed while the others stream
# Bound on any movie's wait with three sessions on 2 cores (measured 20-44 s on a machine at load 6-9).
MAX_SHARED_LATENCY_S = 120.0


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("many")
    recipes = copy_recipes(root / "recipes", (DAG_ID, REPROCESS_DAG_ID))
    with live_stack(root, pg_admin_url, (DAG_ID, REPROCESS_DAG_ID), recipes_dir=recipes,
                    parallelism=LIVE_TEST_PARALLELISM) as (stack, results):
        folders, microscopes = {}, {}
        done = LIVE_TEST_SETTINGS.model_copy(update={"seed": 44, "n_movies": N_MOVIES})
        folders[REPROCESSED] = (root / REPROCESSED / "raw", root / REPROCESSED / "processing")
        reprocessed_truth = write_spa_session(done, folders[REPROCESSED][0])
        for name, (seed, interval_s) in SESSIONS.items():
            settings = LIVE_TEST_SETTINGS.model_copy(update={"seed": seed, "n_movies": N_MOVIES})
            watch_dir, processing_dir = root / name / "raw", root / name / "processing"
            prepare_session_folder(settings, watch_dir)
            start_session(stack, DAG_ID, session_conf(settings, name, watch_dir, processing_dir, idle_timeout_s=60))
            folders[name] = (watch_dir, processing_dir)
            microscopes[name] = Microscope(settings, watch_dir, interval_s)
        for microscope in microscopes.values():
            microscope.start()
        reprocess_run = trigger(stack, REPROCESS_DAG_ID, session_conf(done, REPROCESSED, *folders[REPROCESSED],
                                                                      idle_timeout_s=60))
        truths = {name: microscope.finish(180) for name, microscope in microscopes.items()}
        truths[REPROCESSED] = reprocessed_truth
        for name in SESSIONS:
            wait_for_session_end(stack, results, name, DAG_ID, 420)
        reprocess_state = wait_until(
            lambda: next((r["state"] for r in stack.query("SELECT state FROM dag_run WHERE run_id = :r",
                                                          r=reprocess_run) if r["state"] in ("success", "failed")),
                         None), 420, "the reprocessing run to finish", interval_s=1.0, on_timeout=stack.diagnostics)
        with results.connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(text(
                "SELECT s.name AS session, s.image_directory AS watch_dir, m.movie_full_path FROM motion_correction mc "
                "JOIN movie m ON m.movie_id = mc.movie_id JOIN session s ON s.session_id = m.session_id"))]
            claims = [dict(r._mapping) for r in connection.execute(text(
                "SELECT s.name AS session, f.relative_path FROM session_file f "
                "JOIN session s ON s.session_id = f.session_id"))]
        return {"truths": truths, "folders": folders, "rows": rows, "claims": claims,
                "reprocess_state": reprocess_state, "reprocess_run": reprocess_run,
                "session_rows": {name: session_row(results, name) for name in SESSIONS},
                "motioncorr": stage_runs(stack, DAG_ID, "motioncorr"),
                "landed_s": {name: landed_s(folders[name][0], truths[name]) for name in SESSIONS}}


def test_each_session_gets_exactly_its_own_movies_once(sessions):
    for name in SESSIONS:
        movies = sorted(m.movie_name for m in sessions["truths"][name].movies)
        assert sorted(c["relative_path"] for c in sessions["claims"] if c["session"] == name) == movies
        mine = [r for r in sessions["rows"] if r["session"] == name]
        assert sorted(Path(r["movie_full_path"]).name for r in mine) == movies  # each once
        watch_dir = str(sessions["folders"][name][0])
        assert {r["watch_dir"] for r in mine} == {watch_dir}  # movies are recorded relative to their session
        assert "marker" in sessions["session_rows"][name]["end_reason"]


def test_the_session_reprocessed_meanwhile_gets_exactly_its_own_movies_once(sessions):
    assert sessions["reprocess_state"] == "success"
    movies = sorted(m.movie_name for m in sessions["truths"][REPROCESSED].movies)
    mine = [r for r in sessions["rows"] if r["session"] == REPROCESSED]
    assert sorted(Path(r["movie_full_path"]).name for r in mine) == movies  # each once
    assert {r["watch_dir"] for r in mine} == {str(sessions["folders"][REPROCESSED][0])}
    assert not [c for c in sessions["claims"] if c["session"] == REPROCESSED]  # a finished folder is not watched


def test_each_relion_project_lists_only_its_own_micrographs(sessions):
    for name in (*SESSIONS, REPROCESSED):
        project = "reprocess_*" if name == REPROCESSED else "relion"
        relion = next(sessions["folders"][name][1].glob(project))
        micrographs = starfile.read(next(relion.glob("MotionCorr/job*/corrected_micrographs.star")),
                                    always_dict=True)["micrographs"]
        assert len(micrographs) == N_MOVIES and micrographs["rlnMicrographName"].is_unique
        assert all((relion / path).is_file() for path in micrographs["rlnMicrographName"])
        assert sorted(Path(p).stem for p in micrographs["rlnMicrographName"]) == sorted(
            Path(m.movie_name).stem for m in sessions["truths"][name].movies)


def test_a_burst_does_not_starve_the_streaming_sessions(sessions):
    """The streams' movies are corrected while the burst is (not after it), and every session's latency stays
    bounded. Three sessions share 2 cores here, so the single-session requirement is not the bar: the
    per-session figures are printed for BENCHMARKS.md."""
    runs: dict[int, list[Any]] = defaultdict(list)
    for run in sessions["motioncorr"]:
        if run.status == "ok":
            runs[run.session_id].append(run)
    ids = {name: sessions["session_rows"][name]["session_id"] for name in SESSIONS}
    for name, session_id in ids.items():
        starts = {run.movie: run.start_s for run in runs[session_id]}
        latencies = [starts[movie] - landed for movie, landed in sessions["landed_s"][name].items()]
        print(f"\n{name}: movie complete -> motioncorr start median {statistics.median(latencies):.1f} s, "
              f"max {max(latencies):.1f} s over {len(latencies)} movies")
        assert len(latencies) == N_MOVIES and max(latencies) <= MAX_SHARED_LATENCY_S, name
    burst_done_s = max(run.end_s for run in runs[ids["grid_burst"]])
    for name in ("grid_a", "grid_b"):
        assert min(run.start_s for run in runs[ids[name]]) < burst_done_s, f"{name} waited for the burst"
