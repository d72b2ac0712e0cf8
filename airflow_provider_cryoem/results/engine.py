"""Engines for the results store: PostgreSQL in production, one SQLite file for the demo.

SQLite gets WAL, foreign keys and `BEGIN IMMEDIATE` transactions: a transaction takes the write lock
when it starts, so concurrent writers queue on the busy timeout instead of failing on a lock upgrade.
A reader (the dashboard) asks for `read_only`: its transactions are plain deferred ones that take no
write lock (WAL readers never wait for the writer) and refuse to write (`PRAGMA query_only`); on
PostgreSQL its transactions are READ ONLY.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

SQLITE_ENV = "CRYOEM_RESULTS_SQLITE"
SQLITE_FILE_NAME = "results.sqlite"
SUPPORTED_DIALECTS = ("postgresql", "sqlite")
CONNECT_TIMEOUT_S = 5
SQLITE_BUSY_TIMEOUT_S = 60


def default_sqlite_path(processing_dir: str | Path | None) -> Path:
    """The demo database: `$CRYOEM_RESULTS_SQLITE`, else `<processing_dir>/results.sqlite`."""
    if os.environ.get(SQLITE_ENV):
        return Path(os.environ[SQLITE_ENV])
    if processing_dir is None:
        raise ValueError(f"no results database: give a connection id, a processing directory or set ${SQLITE_ENV}")
    return Path(processing_dir) / SQLITE_FILE_NAME


def sqlite_engine(path: str | Path, read_only: bool = False) -> Engine:
    """An engine on a SQLite file (created with its folder if absent), safe for threads and processes;
    `read_only`: transactions take no write lock and any write fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S,
                                                             "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below be the only one
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:  # WAL (persistent, once per file) lets readers run beside the writer
                cursor.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                pass  # another connection holds the lock while switching it; it only speeds up readers
        if read_only:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def engine_from_url(url: str, read_only: bool = False) -> Engine:
    """An engine for a `postgresql://` or `sqlite:///` URL, with the settings the store relies on;
    `read_only`: its transactions refuse to write (and take no write lock on SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database:
            raise ValueError(f"results database URL {url!r}: an in-memory SQLite database is not shared; give a file")
        return sqlite_engine(parsed.database, read_only=read_only)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"results database URL {parsed.render_as_string()!r}: "
                         f"supported back ends are {', '.join(SUPPORTED_DIALECTS)}")
    return create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
                         **postgres_read_only(read_only))


def postgres_read_only(read_only: bool) -> dict[str, Any]:
    """create_engine keywords that make every transaction READ ONLY (psycopg2) when `read_only`."""
    return {"execution_options": {"postgresql_readonly": True}} if read_only else {}
