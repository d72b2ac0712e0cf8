"""ResultsHook: the results store behind an Airflow Postgres connection, or a SQLite file for the demo.

No connection type of its own: `results_conn_id` names an ordinary Airflow *postgres* connection
(host, port, login, password, schema = database), so PostgresHook builds the engine and the usual
connection form, secrets backends and `AIRFLOW_CONN_*` variables all apply. With no connection id the
hook uses SQLite at `$CRYOEM_RESULTS_SQLITE` or `<processing_dir>/results.sqlite`.

A facility's ISPyB: `results_conn_id` names an Airflow *mysql* connection to the ISPyB database with extra
`{"ispyb": true}`. The store then mirrors every result into ISPyB (results/ispyb_store.py) and keeps its
bookkeeping (claims, tilt series, the dashboard's reads) in the database the extra's `bookkeeping_conn_id`
names (a postgres connection), else in the SQLite file above. The password stays in the connection.
"""
from __future__ import annotations

from pathlib import Path

from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk import BaseHook
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from ..results import ResultsError, ResultsStore
from ..results.engine import CONNECT_TIMEOUT_S, default_sqlite_path, postgres_read_only, sqlite_engine


# Airflow connection types that mean "ISPyB on MySQL/MariaDB".
ISPYB_CONN_TYPES = ("mysql", "mariadb")


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
        ispyb = self._ispyb_connection()
        if ispyb is not None:
            bookkeeping = ResultsHook(ispyb.extra_dejson.get("bookkeeping_conn_id"), self.processing_dir)
            return bookkeeping._engine_and_label(read_only=read_only)
        postgres = PostgresHook(postgres_conn_id=self.results_conn_id)
        connection = postgres.connection
        engine = postgres.get_sqlalchemy_engine(engine_kwargs={
            "pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
            **postgres_read_only(read_only)})
        where = f"{connection.host}:{connection.port or 5432}/{connection.schema or ''}"
        return engine, f"Airflow connection {self.results_conn_id!r} ({where})"

    def _ispyb_connection(self) -> Any | None:
        """The Airflow connection when `results_conn_id` is an ISPyB (mysql) one, else None."""
        if self.results_conn_id is None:
            return None
        connection = self.get_connection(self.results_conn_id)
        if connection.conn_type not in ISPYB_CONN_TYPES:
            return None
        if not connection.extra_dejson.get("ispyb"):
            raise ResultsError(f"Airflow connection {self.results_conn_id!r} is a {connection.conn_type} connection: "
                               f"results go to MySQL/MariaDB only as ISPyB; set its extra to {{\"ispyb\": true}}")
        return connection

    def get_store(self) -> ResultsStore:
        """The store, its schema ensured once per hook; raises ResultsUnavailableError if the database is down."""
        if self._store is None:
            engine, label = self._engine_and_label()
            ispyb = self._ispyb_connection()
            if ispyb is None:
                store = ResultsStore(engine, label=label)
            else:
                from ..results.ispyb_store import ISPyBResultsStore, ispyb_engine  # imports ISPyB's 200 models

                url = URL.create("mysql+pymysql", username=ispyb.login or None, password=ispyb.password or None,
                                 host=ispyb.host or "127.0.0.1", port=ispyb.port or 3306, database=ispyb.schema or None)
                where = f"{url.host}:{url.port}/{url.database or ''}"
                store = ISPyBResultsStore(engine, ispyb_engine(url), label=label,
                                          ispyb_label=f"Airflow connection {self.results_conn_id!r} (ISPyB {where})")
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
