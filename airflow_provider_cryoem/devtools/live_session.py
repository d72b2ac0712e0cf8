"""Drive a simulated live session through a real Airflow stack and read back what happened, per movie.

Shared by the live integration test and the live benchmark: the simulated microscope, the session conf,
waiting for the session to end by itself, and the per-movie timeline (landed → stage start → stage end)
read from the metadata database (task instances and their XCom) and the results database.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from ..simulate import (
    GAIN_REFERENCE_NAME,
    SessionTruth,
    SpaSimulationSettings,
    run_live_session,
)
from .local_airflow import AirflowStack, wait_until

ACTIVE_RUN_STATES = ("queued", "running")


class Microscope(threading.Thread):
    """The simulator's live mode in a background thread; `truth` is set once the end marker is written."""

    def __init__(self, settings: SpaSimulationSettings, watch_dir: Path, interval_s: float,
                 chunk_delay_s: float = 0.05) -> None:
        super().__init__(daemon=True, name="microscope")
        self.settings, self.watch_dir, self.interval_s, self.chunk_delay_s = settings, watch_dir, interval_s, chunk_delay_s
        self.truth: SessionTruth | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.truth = run_live_session(self.settings, self.watch_dir, self.interval_s, self.chunk_delay_s)
        except BaseException as exc:  # reported by finish(), not lost in the thread
            self.error = exc

    def finish(self, timeout_s: float) -> SessionTruth:
        """Wait for the last movie and the end marker; re-raise the simulator's error if it had one."""
        self.join(timeout_s)
        if self.error is not None:
            raise self.error
        if self.truth is None:
            raise TimeoutError(f"the simulated microscope did not finish within {timeout_s:g} s")
        return self.truth


def session_conf(settings: SpaSimulationSettings, session_name: str, watch_dir: Path, processing_dir: Path,
                 idle_timeout_s: float) -> dict[str, Any]:
    """The `--conf` of a live run over the simulator's movies."""
    return {"session_name": session_name, "watch_dir": str(watch_dir), "processing_dir": str(processing_dir),
            "pixel_size_a": settings.pixel_size_a, "dose_per_frame_e_a2": settings.dose_per_frame_e_a2,
            "voltage_kv": settings.voltage_kv, "cs_mm": settings.cs_mm,
            "particle_diameter_a": settings.particle_diameter_a, "movie_glob": f"*.{settings.movie_format}",
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME), "idle_timeout_s": idle_timeout_s}


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


def stage_runs(stack: AirflowStack, dag_id: str, task_id: str) -> list[StageRun]:
    """Every movie of every successful task instance of a mapped stage (from its XCom), with its timing."""
    rows = stack.query(
        "SELECT ti.run_id, ti.map_index, ti.rendered_map_index, ti.try_number, ti.start_date, ti.end_date, "
        "x.value FROM task_instance ti JOIN xcom x ON x.dag_id = ti.dag_id AND x.run_id = ti.run_id "
        "AND x.task_id = ti.task_id AND x.map_index = ti.map_index AND x.key = 'return_value' "
        "WHERE ti.dag_id = :d AND ti.task_id = :t AND ti.state = 'success'", d=dag_id, t=task_id)
    found = []
    for row in rows:
        outcomes = row["value"] if isinstance(row["value"], list) else json.loads(row["value"])
        for outcome in outcomes:
            found.append(StageRun(outcome["movie"], row["run_id"], row["map_index"], row["rendered_map_index"],
                                  row["try_number"], row["start_date"].timestamp(), row["end_date"].timestamp(),
                                  outcome["status"], outcome.get("compute_s"), outcome.get("result") or {}))
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
