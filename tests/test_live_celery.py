"""spa_live under CeleryExecutor: two `airflow celery worker`s on named queues, a Redis broker, PostgreSQL.

The recipe is recipes/spa_live.yaml with its queues set as a facility would: the session's own tasks (wait
for movies, start the next run, close the batch) on a `session` queue served by one worker, every processing
stage on `compute` served by another, so a burst of computation never delays the next wait. Mid-session the
compute worker is SIGKILLed while it runs a motion correction and started again, as a crashed node would be:
the lost task is found by the scheduler (no heartbeat), retried, and nothing is lost or doubled. The broker is
the machine's Redis, or a private one when none answers (devtools/local_redis.py).
"""
from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from airflow_provider_cryoem.devtools.live_session import (
    LATENCY_REQUIREMENT_S,
    LIVE_MOVIE_INTERVAL_S,
    LIVE_TEST_PARALLELISM,
    LIVE_TEST_SETTINGS,
    Microscope,
    landed_s,
    live_stack,
    recipes_on_queues,
    session_conf,
    session_row,
    stage_runs,
    start_session,
    timeline,
    wait_for_session_end,
)
from airflow_provider_cryoem.devtools.local_airflow import CeleryWorker, wait_until
from airflow_provider_cryoem.devtools.local_redis import redis_server
from airflow_provider_cryoem.simulate import prepare_session_folder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

DAG_ID = "spa_live"
SESSION = "celery_it"
SETTINGS = LIVE_TEST_SETTINGS.model_copy(update={"seed": 23, "n_movies": 12})
# The worker is killed once this many movies are motion-corrected: the latency is judged on the movies
# corrected before the kill (the others wait for the lost task to be found, up to the heartbeat timeout).
KILL_AFTER_MOVIES = 6
WORKERS = {"session_worker": CeleryWorker(("session",), concurrency=2),
           "compute_worker": CeleryWorker(("compute",), concurrency=3)}


def _motion_rows(results: Any) -> list[str]:
    if not inspect(results).has_table("motion_correction"):
        return []
    with results.connect() as connection:
        return [Path(r[0]).name for r in connection.execute(text(
            "SELECT m.movie_full_path FROM motion_correction mc JOIN movie m ON m.movie_id = mc.movie_id"))]


def _claims(results: Any) -> list[str]:
    if not inspect(results).has_table("session_file"):
        return []
    with results.connect() as connection:
        return [r[0] for r in connection.execute(text("SELECT relative_path FROM session_file"))]


def _running_motioncorr(stack: Any) -> list[dict[str, Any]]:
    return stack.query("SELECT run_id, map_index, try_number FROM task_instance WHERE dag_id = :d "
                       "AND task_id = 'motioncorr' AND state = 'running'", d=DAG_ID)


@pytest.fixture(scope="module")
def celery_session(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("celery")
    watch_dir, processing_dir = root / "session" / "raw", root / "session" / "processing"
    recipes = recipes_on_queues(root / "recipes", session_queue="session", stage_queue="compute")
    # parallelism: task slots of the executor across both workers (a killed worker's task holds its slot until
    # the scheduler finds it lost)
    with redis_server() as broker_url, live_stack(root, pg_admin_url, DAG_ID, recipes_dir=recipes,
                                                  parallelism=LIVE_TEST_PARALLELISM,
                                                  celery_broker_url=broker_url, celery_workers=WORKERS) as (
            stack, results):
        prepare_session_folder(SETTINGS, watch_dir)
        triggered_s = start_session(stack, DAG_ID, session_conf(SETTINGS, SESSION, watch_dir, processing_dir,
                                                                idle_timeout_s=60), timeout_s=120)
        microscope = Microscope(SETTINGS, watch_dir, LIVE_MOVIE_INTERVAL_S)
        microscope.start()
        victim = wait_until(lambda: len(_motion_rows(results)) >= KILL_AFTER_MOVIES and _running_motioncorr(stack),
                            180, f"a motion correction running on the compute worker after {KILL_AFTER_MOVIES} "
                            "are done",
                            interval_s=0.2, on_timeout=stack.diagnostics)[0]
        killed_s = time.time()
        stack.kill("compute_worker")  # SIGKILL to its process group: the running task dies with it
        time.sleep(2)
        stack.start_component("compute_worker")
        truth = microscope.finish(120)
        wait_for_session_end(stack, results, SESSION, DAG_ID, 480)
        data = {
            "truth": truth, "killed_s": killed_s, "victim": victim, "landed_s": landed_s(watch_dir, truth),
            "motioncorr": stage_runs(stack, DAG_ID, "motioncorr"),
            "motion_rows": _motion_rows(results), "claims": _claims(results),
            "session": session_row(results, SESSION),
            "runs": stack.query("SELECT run_id, state FROM dag_run WHERE dag_id = :d", d=DAG_ID),
            "tasks": stack.query("SELECT task_id, run_id, map_index, try_number, state, queue, external_executor_id "
                                 "FROM task_instance WHERE dag_id = :d", d=DAG_ID),
            "victim_after": stack.query("SELECT state, try_number FROM task_instance WHERE dag_id = :d AND "
                                        "task_id = 'motioncorr' AND run_id = :r AND map_index = :m", d=DAG_ID,
                                        r=victim["run_id"], m=victim["map_index"])[0],
            "worker_logs": {name: (stack.logs_dir / f"{name}.log").read_text(errors="replace") for name in WORKERS},
        }
        print(f"\ntimeline (s after the trigger; compute worker killed at {killed_s - triggered_s:.1f} s):")
        print(timeline(stack, DAG_ID, triggered_s, data["landed_s"]))
    return data


def _movie_names(data: dict[str, Any]) -> list[str]:
    return sorted(m.movie_name for m in data["truth"].movies)


def test_every_movie_is_claimed_once_and_motion_corrected_once_despite_the_killed_worker(celery_session):
    assert sorted(celery_session["claims"]) == _movie_names(celery_session)
    counts = Counter(celery_session["motion_rows"])
    assert sorted(counts) == _movie_names(celery_session) and set(counts.values()) == {1}
    assert celery_session["session"]["end_time"] is not None and "marker" in celery_session["session"]["end_reason"]


def test_the_task_killed_with_its_worker_is_retried_and_succeeds(celery_session):
    victim, after = celery_session["victim"], celery_session["victim_after"]
    assert after["state"] == "success"
    assert after["try_number"] > victim["try_number"]


def test_session_tasks_and_stages_run_on_the_workers_of_their_queues(celery_session):
    tasks = [t for t in celery_session["tasks"] if t["state"] == "success" and t["external_executor_id"]]
    queues = {t["task_id"]: t["queue"] for t in tasks}
    assert queues["wait_for_movies"] == queues["start_next_batch"] == queues["close_batch"] == "session"
    assert queues["motioncorr"] == queues["ctf"] == queues["extract"] == "compute"
    logs = celery_session["worker_logs"]
    for task in tasks:  # the Celery task id of each task instance is in the log of the worker that ran it
        serving = "session_worker" if task["queue"] == "session" else "compute_worker"
        other = "compute_worker" if serving == "session_worker" else "session_worker"
        assert task["external_executor_id"] in logs[serving], task
        assert task["external_executor_id"] not in logs[other], task


def test_movie_to_motion_correction_latency_on_celery_before_the_kill(celery_session):
    starts = {r.movie: r.start_s for r in celery_session["motioncorr"] if r.status == "ok"}
    latencies = {movie: starts[movie] - landed for movie, landed in celery_session["landed_s"].items()}
    killed_s = celery_session["killed_s"]
    print("\nmovie complete (XML mtime) -> motioncorr task start on Celery, s:")
    for movie, latency_s in sorted(latencies.items()):
        print(f"  {movie}: {latency_s:.1f}{' (after the kill)' if starts[movie] > killed_s else ''}")
    before = [latency_s for movie, latency_s in latencies.items() if starts[movie] < killed_s]
    print(f"  all: median {statistics.median(latencies.values()):.1f} s, max {max(latencies.values()):.1f} s; "
          f"before the kill ({len(before)} movies): median {statistics.median(before):.1f} s, max {max(before):.1f} s")
    assert sorted(latencies) == _movie_names(celery_session) and all(v > 0 for v in latencies.values())
    # movies of the killed batch recorded before the kill count after it: their successful try came later
    assert len(before) >= KILL_AFTER_MOVIES // 2
    assert statistics.median(before) <= LATENCY_REQUIREMENT_S
