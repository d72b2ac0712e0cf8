"""Drive a simulated live session through a real Airflow stack and read back what happened, per movie.

Shared by the live integration tests (SPA and tomography) and the live benchmark: the stack on fresh
databases, the simulated microscope, the session conf, starting the session, a crash of the scheduler and
the triggerer, waiting for the session to end by itself, and the per-movie timeline (landed → stage start →
stage end) read from the metadata database (task instances and their XCom) and the results database.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from ..simulate import (
    GAIN_REFERENCE_NAME,
    SessionTruth,
    SpaSimulationSettings,
    TomoSessionTruth,
    TomoSimulationSettings,
    run_live_session,
    run_live_tomo_session,
)
from .local_airflow import REPO, AirflowStack, fresh_postgres_database, wait_until

ACTIVE_RUN_STATES = ("queued", "running")
# The live tests' session: small movies, one every 3 s (a fast microscope), and the requirement they judge,
# movie complete -> motion correction started.
LIVE_TEST_SETTINGS = SpaSimulationSettings(n_movies=16, image_size_px=384, n_frames=8, particle_diameter_a=90,
                                           particles_per_micrograph=5)
LIVE_MOVIE_INTERVAL_S = 3.0
LATENCY_REQUIREMENT_S = 15.0
# Executor slots of the live tests' stacks on 2 cores: a live run's tasks are short and spend much of their
# slot starting, so with 4 slots the next run's wait queued behind the last run's CTF and picking tasks
# (median 18.7 / 13.1 s against 14.0 / 8.3 s with 8, same machine at load 5-7, alternating runs).
LIVE_TEST_PARALLELISM = 8


@contextmanager
def live_stack(root: Path, admin_url: str, dag_id: str | tuple[str, ...], recipes_dir: Path | None = None,
               results_admin_url: str | None = None, **stack_options: Any) -> Iterator[tuple[AirflowStack, Engine]]:
    """A local Airflow stack (AIRFLOW_HOME under `root`) on fresh metadata and results PostgreSQL databases,
    `dag_id` (or each of several) parsed and unpaused; yields the stack and an engine on the results database.
    Every task gets the results connection and `root` as its data root; `recipes_dir` replaces the shipped
    recipes, `results_admin_url` puts the results database on another server than the metadata (one that a
    test may restart), and `stack_options` go to AirflowStack (e.g. Celery workers). A failure inside prints
    the stack's diagnostics."""
    with fresh_postgres_database("cryoem_it_meta", admin_url) as metadata_url, \
            fresh_postgres_database("cryoem_it_results", results_admin_url or admin_url) as results_url:
        results = create_engine(results_url, pool_pre_ping=True)
        results_conn = make_url(results_url).set(drivername="postgres").render_as_string(hide_password=False)
        env = {"CRYOEM_RESULTS_CONN_ID": "cryoem_results",
               "AIRFLOW_CONN_CRYOEM_RESULTS": results_conn,
               "CRYOEM_DATA_ROOTS": str(root), **({"CRYOEM_RECIPES_DIR": str(recipes_dir)} if recipes_dir else {})}
        try:
            with AirflowStack(root / "airflow_home", metadata_url, extra_env=env, **stack_options) as stack:
                try:
                    for dag in (dag_id,) if isinstance(dag_id, str) else dag_id:
                        stack.unpause(dag)
                        stack.wait_for_dag(dag)
                    yield stack, results
                except BaseException:
                    print(stack.diagnostics())
                    raise
        finally:
            results.dispose()


def copy_recipes(folder: Path, names: tuple[str, ...] = ("spa_live",), session_queue: str | None = None,
                 stage_queue: str | None = None, only_stages: tuple[str, ...] | None = None) -> Path:
    """A recipes folder holding the shipped recipes `names`, optionally with the session's own tasks on
    `session_queue` and every processing stage on `stage_queue` (as a facility splits bookkeeping from compute
    workers), and only the stages `only_stages` (which must not depend on the others). A reprocess recipe's
    dated sessions are looked for in an empty folder beside them, so that unpausing its DAG (which starts the
    latest scheduled run) takes no session: runs are started by hand."""
    folder.mkdir(parents=True)
    for name in names:
        content = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
        if only_stages is not None:
            content["stages"] = {stage: spec for stage, spec in content["stages"].items() if stage in only_stages}
        if session_queue:
            content["session_queue"] = session_queue
        if stage_queue:
            for stage in content["stages"].values():
                stage["queue"] = stage_queue
        if content["mode"] == "reprocess":
            content["sessions_root"] = str(folder / "no_dated_sessions")
            (folder / "no_dated_sessions").mkdir(exist_ok=True)
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    return folder


def start_session(stack: AirflowStack, dag_id: str, conf: dict[str, Any], timeout_s: float = 60) -> float:
    """Trigger the session's first run and wait until it waits (deferred) for movies; returns the trigger time."""
    triggered_s = time.time()
    trigger(stack, dag_id, conf)
    wait_until(lambda: stack.query("SELECT 1 FROM task_instance WHERE dag_id = :d AND task_id = 'wait_for_movies' "
                                   "AND state = 'deferred'", d=dag_id),
               timeout_s, "the first run to wait for movies", on_timeout=stack.diagnostics)
    return triggered_s


def crash_scheduler_and_triggerer(stack: AirflowStack) -> float:
    """SIGKILL the scheduler and the triggerer (process groups: the tasks they run die too), restart them;
    returns the time of the crash."""
    crash_s = time.time()
    stack.kill("scheduler")
    stack.kill("triggerer")
    time.sleep(2)
    stack.start_component("scheduler")
    stack.start_component("triggerer")
    return crash_s


class Microscope(threading.Thread):
    """The simulator's live mode in a background thread; `truth` is set once the end marker is written.

    SPA settings: a movie every `interval_s` (run_live_session); tomography settings: a tilt every
    `interval_s`, each series' mdoc growing with it (run_live_tomo_session).
    """

    def __init__(self, settings: SpaSimulationSettings | TomoSimulationSettings, watch_dir: Path,
                 interval_s: float, chunk_delay_s: float = 0.05) -> None:
        super().__init__(daemon=True, name="microscope")
        self.settings, self.watch_dir, self.interval_s, self.chunk_delay_s = settings, watch_dir, interval_s, chunk_delay_s
        self.truth: SessionTruth | TomoSessionTruth | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        live: Any = run_live_tomo_session if isinstance(self.settings, TomoSimulationSettings) else run_live_session
        try:
            self.truth = live(self.settings, self.watch_dir, self.interval_s, self.chunk_delay_s)
        except BaseException as exc:  # reported by finish(), not lost in the thread
            self.error = exc

    def finish(self, timeout_s: float) -> Any:
        """Wait for the last movie and the end marker; re-raise the simulator's error if it had one."""
        self.join(timeout_s)
        if self.error is not None:
            raise self.error
        if self.truth is None:
            raise TimeoutError(f"the simulated microscope did not finish within {timeout_s:g} s")
        return self.truth


def session_conf(settings: SpaSimulationSettings | TomoSimulationSettings, session_name: str, watch_dir: Path,
                 processing_dir: Path, idle_timeout_s: float, **extra: Any) -> dict[str, Any]:
    """The `--conf` of a live run over the simulator's movies (or tilts, with the tomography settings the
    simulator planted); `extra` adds or overrides settings."""
    conf = {"session_name": session_name, "watch_dir": str(watch_dir), "processing_dir": str(processing_dir),
            "pixel_size_a": settings.pixel_size_a, "dose_per_frame_e_a2": settings.dose_per_frame_e_a2,
            "voltage_kv": settings.voltage_kv, "cs_mm": settings.cs_mm,
            "particle_diameter_a": settings.particle_diameter_a, "movie_glob": f"*.{settings.movie_format}",
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME), "idle_timeout_s": idle_timeout_s}
    if isinstance(settings, TomoSimulationSettings):  # SerialEM names tilt movies .tif, Tomo5 .tiff
        conf |= {"movie_glob": "*.tif*" if settings.movie_format == "tiff" else "*.mrc",
                 "tilt_axis_deg": settings.tilt_axis_deg, "thickness_nm": settings.thickness_nm,
                 "tilt_range_deg": max(-settings.tilt_min_deg, settings.tilt_max_deg)}
    return conf | extra


def trigger(stack: AirflowStack, dag_id: str, conf: dict[str, Any]) -> str:
    """`airflow dags trigger DAG --conf JSON`; returns the run id."""
    run_id = f"live_{int(time.time() * 1000)}"
    stack.cli("dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf))
    return run_id


def session_row(results: Engine, session_name: str) -> dict[str, Any] | None:
    """The results database's session row (end_time is set when the session ended by itself)."""
    with results.connect() as connection:
        row = connection.execute(text("SELECT session_id, end_time, end_reason FROM session WHERE name = :n"),
                                 {"n": session_name}).first()
    return dict(row._mapping) if row else None


def wait_for_session_end(stack: AirflowStack, results: Engine, session_name: str, dag_id: str,
                         timeout_s: float) -> None:
    """Until the session has its end time and no run of the DAG is queued or running."""
    def over() -> bool:
        row = session_row(results, session_name)
        active = stack.query("SELECT count(*) AS n FROM dag_run WHERE dag_id = :d AND state IN ('queued', 'running')",
                             d=dag_id)[0]["n"]
        return bool(row and row["end_time"] is not None and active == 0)

    wait_until(over, timeout_s, f"session {session_name} to end with no {dag_id} run left", interval_s=1.0,
               on_timeout=stack.diagnostics)


@dataclass
class StageRun:
    """One movie's pass through one stage, as the task instance that processed it saw it."""

    movie: str
    run_id: str
    map_index: int
    rendered_map_index: str | None
    try_number: int
    start_s: float
    end_s: float
    status: str
    compute_s: float | None
    result: dict[str, Any] = field(default_factory=dict)
    session_id: int | None = None


def task_returns(stack: AirflowStack, dag_id: str, task_id: str) -> list[dict[str, Any]]:
    """Every successful instance of a task (run, map index, label, try, start, end) with its return value."""
    rows = stack.query(
        "SELECT ti.run_id, ti.map_index, ti.rendered_map_index, ti.try_number, ti.start_date, ti.end_date, "
        "x.value FROM task_instance ti JOIN xcom x ON x.dag_id = ti.dag_id AND x.run_id = ti.run_id "
        "AND x.task_id = ti.task_id AND x.map_index = ti.map_index AND x.key = 'return_value' "
        "WHERE ti.dag_id = :d AND ti.task_id = :t AND ti.state = 'success'", d=dag_id, t=task_id)
    return [{**row, "value": json.loads(row["value"]) if isinstance(row["value"], str) else row["value"]}
            for row in rows]


def stage_runs(stack: AirflowStack, dag_id: str, task_id: str) -> list[StageRun]:
    """Every movie of every successful task instance of a mapped stage (from its XCom), with its timing."""
    found = []
    for row in task_returns(stack, dag_id, task_id):
        for outcome in row["value"]:
            found.append(StageRun(outcome["movie"], row["run_id"], row["map_index"], row["rendered_map_index"],
                                  row["try_number"], row["start_date"].timestamp(), row["end_date"].timestamp(),
                                  outcome["status"], outcome.get("compute_s"), outcome.get("result") or {},
                                  outcome.get("session_id")))
    return found


def landed_s(watch_dir: Path, truth: SessionTruth) -> dict[str, float]:
    """When each movie was complete: the modification time of its metadata sidecar (written after it)."""
    return {m.movie_name: (watch_dir / m.metadata_name).stat().st_mtime for m in truth.movies}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def timeline(stack: AirflowStack, dag_id: str, since_s: float, landed: dict[str, float] | None = None) -> str:
    """Every task instance of the DAG (queued, start, end in seconds after `since_s`) and every landing, in order."""
    rows = stack.query("SELECT run_id, task_id, map_index, state, try_number, queued_dttm, start_date, end_date "
                       "FROM task_instance WHERE dag_id = :d", d=dag_id)

    def rel(moment: Any) -> str:
        return f"{moment.timestamp() - since_s:7.1f}" if moment is not None else "      -"

    events = [(row["start_date"].timestamp() if row["start_date"] else float("inf"),
               f"{rel(row['queued_dttm'])} {rel(row['start_date'])} {rel(row['end_date'])}  "
               f"{row['run_id'][-13:]} {row['task_id']}[{row['map_index']}] {row['state']} try {row['try_number']}")
              for row in rows]
    events += [(moment, f"{'':15} {moment - since_s:7.1f}  landed {movie}") for movie, moment in (landed or {}).items()]
    return "queued   start     end\n" + "\n".join(line for _, line in sorted(events))
