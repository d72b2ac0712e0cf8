"""A real local Airflow 3 stack (api-server, scheduler with LocalExecutor, dag-processor, triggerer).

Why: `airflow dags test` runs a DAG in one process and runs triggers inline, so it cannot show what the
scheduler, the triggerer and the Execution API do to a live session (latency, restarts, re-triggered runs).
This harness starts the four components as subprocesses with their own AIRFLOW_HOME, free ports and a
given metadata database, and always stops every process it started (each component runs in its own process
group, so its workers and task processes go with it).

Settings that differ from Airflow's defaults, and why:
- Examples are off; DAGs start paused as usual and `unpause()` switches on only the ones a test uses
  (an unpaused scheduled DAG such as spa_reprocess would start runs of its own).
- The dag-processor lists the folder every 5 s and re-parses after `min_file_process_interval_s`.
- The scheduler and triggerer count a component as dead after 15 s without heartbeat (default 30 s) and
  look for orphaned task instances every 5 s (default 300 s), so a crashed component's work is taken over
  within seconds; a production deployment keeps the defaults or tunes them the same way.
- With `celery_workers` the executor is CeleryExecutor on the given broker (results in the metadata
  database), and each worker is an `airflow celery worker` of its own, serving its queues, as an operator
  would start them; each is a component that can be killed and restarted like the others.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

COMPONENTS = ("api-server", "dag-processor", "scheduler", "triggerer")
REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
POSTGRES_ADMIN_URL = os.environ.get("CRYOEM_TEST_PG_ADMIN_URL",
                                    "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
_STOP_GRACE_S = 10.0
T = TypeVar("T")


class AirflowStackError(RuntimeError):
    """A component did not start, a CLI command failed, or a wait timed out; carries the logs."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def fresh_postgres_database(prefix: str = "cryoem_live", admin_url: str = POSTGRES_ADMIN_URL) -> Iterator[str]:
    """A new empty PostgreSQL database; yields its URL and drops it after. Unreachable server → error."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as exc:
        admin.dispose()
        raise AirflowStackError(f"PostgreSQL not reachable at {make_url(admin_url).render_as_string()}: "
                                f"{exc.orig}") from exc
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def wait_until(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.5,
               on_timeout: Callable[[], str] | None = None) -> T:
    """Poll `check` until it returns something truthy; AirflowStackError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            details = on_timeout() if on_timeout else ""
            raise AirflowStackError(f"timed out after {timeout_s:g} s waiting for {what}\n{details}")
        time.sleep(interval_s)


@dataclass(frozen=True)
class CeleryWorker:
    """One `airflow celery worker`: the queues it serves and how many tasks it runs at once."""

    queues: tuple[str, ...]
    concurrency: int = 2


class AirflowStack:
    """Start, restart and stop a local Airflow 3 stack; run its CLI; read its metadata database.

    Use as a context manager: `with AirflowStack(home, url, extra_env=...) as stack: stack.cli(...)`.
    `extra_env` reaches every component and so every task (results connection, data roots ...).
    """

    def __init__(self, home: str | Path, metadata_url: str, *, dags_folder: str | Path = REPO / "dags",
                 extra_env: dict[str, str] | None = None, parallelism: int = 4,
                 min_file_process_interval_s: int = 10, settings: dict[str, str] | None = None,
                 celery_broker_url: str | None = None,
                 celery_workers: Mapping[str, CeleryWorker] | None = None) -> None:
        self.home = Path(home)
        self.metadata_url = metadata_url
        self.api_port = free_port()
        self.logs_dir = self.home / "component_logs"
        self.processes: dict[str, subprocess.Popen] = {}
        self._groups: list[int] = []  # every process group started, killed ones included
        self._engine: Engine | None = None
        self.celery_workers = dict(celery_workers or {})
        if self.celery_workers and not celery_broker_url:
            raise ValueError("celery_workers need a celery_broker_url")
        celery = {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "AIRFLOW__CELERY__BROKER_URL": celery_broker_url,
                  "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata_url}"} if self.celery_workers else {}
        self.env = self._environment(Path(dags_folder), extra_env or {}, parallelism, min_file_process_interval_s,
                                     {**celery, **(settings or {})})

    def _environment(self, dags_folder: Path, extra_env: dict[str, str], parallelism: int,
                     min_file_process_interval_s: int, settings: dict[str, str]) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k != "AIRFLOW_HOME"}
        api_url = f"http://127.0.0.1:{self.api_port}"
        ours = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(min_file_process_interval_s),
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "15",
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "15",
        }
        return {**inherited, **ours, **settings, **extra_env}

    # --- life cycle -------------------------------------------------------------------------------------

    def __enter__(self) -> "AirflowStack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def migrate(self) -> None:
        """Create or upgrade the metadata database (`airflow db migrate`)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.cli("db", "migrate", timeout_s=300)

    def start(self, components: tuple[str, ...] = COMPONENTS) -> None:
        """Migrate the metadata database, then start the components (the api-server first, up and healthy).

        The stack's `airflow_local_settings.py` preloads the processing code (airflow_provider_cryoem.preload)
        as a deployment should, so task processes forked by the executor start without re-importing it.
        """
        config = self.home / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "airflow_local_settings.py").write_text("import airflow_provider_cryoem.preload  # noqa: F401\n")
        self.migrate()
        for name in (*components, *self.celery_workers):
            self.start_component(name)

    def start_component(self, name: str) -> subprocess.Popen:
        """Start one component in its own process group, its output in `component_logs/<name>.log`."""
        if name in COMPONENTS:
            command = [name]
        elif name in self.celery_workers:
            worker = self.celery_workers[name]
            # its own Celery node name; no log server (several workers share this host and its ports)
            command = ["celery", "worker", "--queues", ",".join(worker.queues), "--concurrency",
                       str(worker.concurrency), "--celery-hostname", f"{name}@%h", "--skip-serve-logs"]
        else:
            raise ValueError(f"unknown component {name!r} (choose from {(*COMPONENTS, *self.celery_workers)})")
        running = self.processes.get(name)
        if running is not None and running.poll() is None:
            raise AirflowStackError(f"{name} is already running (pid {running.pid})")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / f"{name}.log", "ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            process = subprocess.Popen([AIRFLOW, *command], env=self.env, cwd=self.home, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        self._groups.append(process.pid)
        if name == "api-server":
            wait_until(self._api_healthy, 120, "the api-server to answer", on_timeout=self.diagnostics)
        return process

    def _api_healthy(self) -> bool:
        process = self.processes["api-server"]
        if process.poll() is not None:
            raise AirflowStackError(f"api-server exited with {process.returncode}\n{self.diagnostics()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill a component with its whole process group (SIGKILL = a crash: its running tasks die too)."""
        process = self.processes.pop(name)
        _signal_group(process.pid, sig)
        try:
            process.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        """Stop everything this stack ever started: SIGTERM to each group, SIGKILL after a grace period."""
        for pgid in self._groups:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pgid in self._groups:
            _signal_group(pgid, signal.SIGKILL)
        for process in self.processes.values():
            process.wait()
        self.processes.clear()
        self._groups.clear()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # --- using it ---------------------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True, timeout_s: float = 120) -> subprocess.CompletedProcess:
        """Run `airflow ARGS` against this stack; with `check`, a failure raises with its output."""
        done = subprocess.run([AIRFLOW, *args], env=self.env, cwd=self.home, capture_output=True, text=True,
                              timeout=timeout_s)
        if check and done.returncode:
            raise AirflowStackError(f"airflow {' '.join(args)} failed ({done.returncode}):\n"
                                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    @property
    def metadata(self) -> Engine:
        """An engine on the metadata database, for reading dag runs and task instances."""
        if self._engine is None:
            self._engine = create_engine(self.metadata_url, pool_pre_ping=True)
        return self._engine

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of a read-only SQL query on the metadata database, as dicts."""
        with self.metadata.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(sql), params)]

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120, unpaused: bool = True) -> None:
        """Wait until the dag-processor has serialized `dag_id` and it is active (and unpaused)."""
        sql = ("SELECT d.is_paused FROM dag d JOIN serialized_dag s ON s.dag_id = d.dag_id "
               "WHERE d.dag_id = :dag_id AND NOT d.is_stale")

        def ready() -> bool:
            rows = self.query(sql, dag_id=dag_id)
            return bool(rows) and not (unpaused and rows[0]["is_paused"])

        wait_until(ready, timeout_s, f"DAG {dag_id} to be parsed" + (" and unpaused" if unpaused else ""),
                   on_timeout=self.diagnostics)

    def unpause(self, dag_id: str, timeout_s: float = 120) -> None:
        """Wait for `dag_id` to be parsed, then unpause it."""
        self.wait_for_dag(dag_id, timeout_s, unpaused=False)
        self.cli("dags", "unpause", dag_id)

    def import_errors(self) -> list[str]:
        """The dag-processor's import errors (file: message)."""
        return [f"{r['filename']}: {r['stacktrace']}" for r in self.query("SELECT filename, stacktrace FROM import_error")]

    def diagnostics(self, tail_chars: int = 4000) -> str:
        """The tail of every component log, the import errors, and the tail of every failed task's log."""
        parts = []
        for log in sorted(self.logs_dir.glob("*.log")):
            parts.append(f"----- {log.name} -----\n{log.read_text(errors='replace')[-tail_chars:]}")
        try:
            parts += [f"----- import error -----\n{e[-tail_chars:]}" for e in self.import_errors()]
            failed = self.query("SELECT dag_id, run_id, task_id, map_index, try_number FROM task_instance "
                                "WHERE state IN ('failed', 'upstream_failed')")
        except OperationalError as exc:
            return "\n".join(parts + [f"(metadata database unreadable: {exc.orig})"])
        for ti in failed:
            parts.append(f"----- failed task {ti} -----\n{self._task_log(ti)[-tail_chars:]}")
        return "\n".join(parts)

    def _task_log(self, ti: dict[str, Any]) -> str:
        folder = self.home / "logs" / f"dag_id={ti['dag_id']}" / f"run_id={ti['run_id']}" / f"task_id={ti['task_id']}"
        if ti["map_index"] >= 0:
            folder = folder / f"map_index={ti['map_index']}"
        logs = sorted(folder.glob("attempt=*.log"))
        return logs[-1].read_text(errors="replace") if logs else f"(no log under {folder})"


def stop_process(process: subprocess.Popen, grace_s: float = _STOP_GRACE_S) -> None:
    """SIGTERM a server the tests started, SIGKILL it if it is still there after `grace_s`."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
