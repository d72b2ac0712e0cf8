"""ResultsHook: the results store behind an Airflow Postgres connection, or a SQLite file for the demo.

No connection type of its own: `results_conn_id` names an ordinary Airflow *postgres* connection
(host, port, login, password, schema = database), so PostgresHook builds the engine and the usual
connection form, secrets backends and `AIRFLOW_CONN_*` variables all apply. With no connection id the
hook uses SQLite at `$CRYOEM_RESULTS_SQLITE` or `<processing_dir>/results.sqlite`.
"""
from __future__ import annotations

from pathlib import Path

from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk import BaseHook
from sqlalchemy import Engine

from ..results import ResultsStore
from ..results.engine import CONNECT_TIMEOUT_S, default_sqlite_path, postgres_read_only, sqlite_engine


class ResultsHook(BaseHook):
    """Gives operators a ready `ResultsStore` (schema created or upgraded on first use).

    A database that cannot be reached raises `ResultsUnavailableError` naming the connection id and
    host (never the password); it is an ordinary task failure, so the task's retries try again.
    """

    conn_name_attr = "results_conn_id"
    hook_name = "Cryo-EM results (Postgres connection)"

    def __init__(self, results_conn_id: str | None = None, processing_dir: str | Path | None = None) -> None:
        super().__init__()
        self.results_conn_id = results_conn_id
        self.processing_dir = processing_dir
        self._store: ResultsStore | None = None

    def _engine_and_label(self, read_only: bool = False) -> tuple[Engine, str]:
        """The engine and the words that name it in errors."""
        if self.results_conn_id is None:
            path = default_sqlite_path(self.processing_dir)
            return sqlite_engine(path, read_only=read_only), f"SQLite file {path}"
        postgres = PostgresHook(postgres_conn_id=self.results_conn_id)
        connection = postgres.connection
        engine = postgres.get_sqlalchemy_engine(engine_kwargs={
            "pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
            **postgres_read_only(read_only)})
        where = f"{connection.host}:{connection.port or 5432}/{connection.schema or ''}"
        return engine, f"Airflow connection {self.results_conn_id!r} ({where})"

    def get_store(self) -> ResultsStore:
        """The store, its schema ensured once per hook; raises ResultsUnavailableError if the database is down."""
        if self._store is None:
            engine, label = self._engine_and_label()
            store = ResultsStore(engine, label=label)
            store.ensure_schema()
            self._store = store
        return self._store

    def get_writer(self) -> ResultsStore:
        """A store that writes rows but never creates or upgrades the schema (the dashboard's stop requests:
        the workers' runs own the migrations)."""
        engine, label = self._engine_and_label()
        return ResultsStore(engine, label=label)

    def get_reader(self) -> ResultsStore:
        """A store for reading only (the dashboard): no schema is created or upgraded, and its
        transactions take no write lock and refuse to write. A database without the results tables
        reads as schema version 0."""
        engine, label = self._engine_and_label(read_only=True)
        return ResultsStore(engine, label=label)
