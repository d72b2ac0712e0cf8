"""Results databases as older code left them, for the migration tests."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Connection, inspect

from airflow_provider_cryoem.results import ResultsStore, schema
from airflow_provider_cryoem.results.migrations import MIGRATIONS


def columns(store: ResultsStore, table: str) -> set[str]:
    with store.engine.connect() as connection:
        return {c["name"] for c in inspect(connection).get_columns(table)}


def migrate_up_to(connection: Connection, version: int) -> None:
    """Apply migrations 1..`version` with their version rows. Migrations that create tables take them from
    today's schema.py, so the caller drops the columns later migrations add, to get the old shape."""
    schema.schema_version.create(connection)
    now = datetime.now(timezone.utc)
    for migration in MIGRATIONS[:version]:
        migration.apply(connection)
        connection.execute(schema.schema_version.insert().values(
            version=migration.version, description=migration.description, applied_at=now))
