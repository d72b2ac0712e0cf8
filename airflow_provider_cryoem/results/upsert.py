"""Dialect-specific `INSERT ... ON CONFLICT` for PostgreSQL and SQLite (both speak the same clause)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def _insert(connection: Connection, table: Table) -> Any:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"results store: no upsert for the {dialect!r} dialect (postgresql, sqlite)")


def upsert(connection: Connection, table: Table, values: Mapping[str, Any], key: Sequence[str]) -> int:
    """Insert the row or update it in place on its natural `key`; returns its primary key either way."""
    statement = _insert(connection, table).values(**values)
    changed = {name: statement.excluded[name] for name in values if name not in key}
    if not changed:  # nothing to update, but DO UPDATE (unlike DO NOTHING) makes RETURNING give the id
        changed = {key[0]: statement.excluded[key[0]]}
    statement = statement.on_conflict_do_update(index_elements=list(key), set_=changed)
    primary_key = next(iter(table.primary_key.columns))
    return connection.execute(statement.returning(primary_key)).scalar_one()


def insert_ignoring_conflicts(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]],
                              key: Sequence[str]) -> None:
    """Insert the rows whose natural `key` is not taken yet; rows that conflict are left as they are."""
    if rows:
        connection.execute(_insert(connection, table).values(list(rows)).on_conflict_do_nothing(
            index_elements=list(key)))
