"""Versioned schema migrations: an ordered list of functions and a `schema_version` table.

`upgrade` runs every migration newer than the recorded version, each with its version row, in ONE
transaction (DDL is transactional on PostgreSQL and SQLite), so a database is never left half-migrated.
Concurrent callers are serialised: PostgreSQL by a transaction-level advisory lock, SQLite by the
write lock that `BEGIN IMMEDIATE` takes (see engine.py). The second caller then finds nothing to do.

Migration 1 creates the tables as schema.py defines them. When a table changes, freeze its v1 shape
into migration 1 and add migration 2 that alters it, so old databases and new ones end up the same.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Connection, func, inspect, select, text

from . import schema
from .errors import ResultsError

# An arbitrary fixed 64-bit key for pg_advisory_xact_lock, shared by every process migrating this schema.
ADVISORY_LOCK_KEY = 0x6372_796F_656D_7631  # "cryoemv1"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _create_v1_tables(connection: Connection) -> None:
    tables = [t for t in schema.metadata.sorted_tables if t is not schema.schema_version]
    schema.metadata.create_all(connection, tables=tables)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "ISPyB-shaped cryo-EM result tables and the session_file ingest table", _create_v1_tables),
)
LATEST_VERSION = MIGRATIONS[-1].version


def current_version(connection: Connection) -> int:
    """The schema version recorded in the database; 0 for a database without our tables."""
    if not inspect(connection).has_table(schema.schema_version.name):
        return 0
    return connection.execute(select(func.coalesce(func.max(schema.schema_version.c.version), 0))).scalar_one()


def upgrade(connection: Connection) -> int:
    """Apply the missing migrations inside the caller's transaction; returns the version reached."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    schema.schema_version.create(connection, checkfirst=True)
    version = current_version(connection)
    if version > LATEST_VERSION:
        raise ResultsError(f"results database schema is version {version}, newer than this code knows "
                           f"({LATEST_VERSION}); upgrade airflow-provider-cryoem")
    for migration in MIGRATIONS:
        if migration.version > version:
            migration.apply(connection)
            connection.execute(schema.schema_version.insert().values(
                version=migration.version, description=migration.description,
                applied_at=datetime.now(timezone.utc)))
    return LATEST_VERSION
