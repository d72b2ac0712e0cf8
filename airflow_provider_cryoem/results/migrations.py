"""Versioned schema migrations: an ordered list of functions and a `schema_version` table.

`upgrade` runs every migration newer than the recorded version, each with its version row, in ONE
transaction (DDL is transactional on PostgreSQL and SQLite), so a database is never left half-migrated.
Concurrent callers are serialised: PostgreSQL by a transaction-level advisory lock, SQLite by the
write lock that `BEGIN IMMEDIATE` takes (see engine.py). The second caller then finds nothing to do.

Migration 1 creates the tables as schema.py defines them. When a table changes, freeze its v1 shape
into migration 1 and add migration 2 that alters it, so old databases and new ones end up the same.
A migration that adds tables names them (`_V1_TABLES`, `_V3_TABLES`), so a new table is created once, by
its own migration, whatever version a database starts from.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Column, Connection, DateTime, Integer, MetaData, String, Table, Text, func, inspect, select, text

from . import schema
from .errors import ResultsError

# An arbitrary fixed 64-bit key for pg_advisory_xact_lock, shared by every process migrating this schema.
ADVISORY_LOCK_KEY = 0x6372_796F_656D_7631  # "cryoemv1"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


# The session table as version 1 made it: sessions were their name alone.
_SESSION_V1 = Table(
    "session", MetaData(),
    Column("session_id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("image_directory", schema.PATH, nullable=False),
    Column("processing_directory", schema.PATH, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True)),
    Column("end_reason", Text),
)


# The tables migration 1 created besides `session` (its v1 shape above) and `schema_version`.
_V1_TABLES = (
    "processing_job", "session_file", "movie", "processing_failure", "motion_correction", "ctf",
    "particle_picker", "relative_ice_thickness", "particle_classification_group", "particle_classification",
    "cryoem_initial_model", "refinement", "bfactor_fit",
)
# Tomography: tilt series, their tilts, tomograms and per-tilt alignments (ISPyB Tomogram, TiltImageAlignment).
_V3_TABLES = ("tilt_series", "tilt", "tomogram", "tilt_image_alignment")


def _create_tables(connection: Connection, names: tuple[str, ...]) -> None:
    schema.metadata.create_all(connection, tables=[schema.metadata.tables[name] for name in names])


def _create_v1_tables(connection: Connection) -> None:
    _SESSION_V1.create(connection)
    _create_tables(connection, _V1_TABLES)


def _tomography_tables(connection: Connection) -> None:
    _create_tables(connection, _V3_TABLES)


def _session_identity(connection: Connection) -> None:
    """A session is (name, watched folder): add `session_key`, drop the uniqueness of `name`."""
    rows = connection.execute(select(_SESSION_V1)).mappings().all()
    keyed = [{**row, "session_key": schema.session_key(row["name"], row["image_directory"])} for row in rows]
    if connection.dialect.name == "sqlite":
        # SQLite cannot drop a constraint: rebuild the table (the store turns foreign keys off around
        # migrations, so dropping the old table cascades nowhere), then check the children still match.
        staging = schema.session.to_metadata(MetaData(), name="session_v2")
        staging.create(connection)
        if keyed:
            connection.execute(staging.insert(), keyed)
        connection.execute(text("DROP TABLE session"))
        connection.execute(text("ALTER TABLE session_v2 RENAME TO session"))
        if connection.execute(text("PRAGMA foreign_key_check")).first() is not None:
            raise ResultsError("results database: rows point at missing sessions after migration 2")
        return
    connection.execute(text("ALTER TABLE session ADD COLUMN session_key VARCHAR(64)"))
    for row in keyed:
        connection.execute(schema.session.update().where(schema.session.c.session_id == row["session_id"])
                           .values(session_key=row["session_key"]))
    for constraint in inspect(connection).get_unique_constraints("session"):
        if constraint["column_names"] == ["name"]:
            connection.execute(text(f'ALTER TABLE session DROP CONSTRAINT "{constraint["name"]}"'))
    connection.execute(text("ALTER TABLE session ALTER COLUMN session_key SET NOT NULL"))
    connection.execute(text("ALTER TABLE session ADD CONSTRAINT session_session_key_key UNIQUE (session_key)"))


# Columns added after their table was first created: (table, column, SQL type).
_V4_COLUMNS = (("refinement", "pixel_size_a", "FLOAT"), ("bfactor_fit", "pixel_size_a", "FLOAT"))


def _add_missing_columns(connection: Connection, columns: tuple[tuple[str, str, str], ...]) -> None:
    """ALTER TABLE ... ADD COLUMN for each (table, column, SQL type) the table lacks.

    Only where missing: migrations 1 and 3 create their tables from schema.py, which has the newer columns
    (freezing the older shapes would need their foreign keys' tables frozen too), so a database made by this
    code has them already and one made before gets them here."""
    found = inspect(connection)
    for table, column, sql_type in columns:
        if column not in {c["name"] for c in found.get_columns(table)}:
            connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))


def _refinement_pixel_size(connection: Connection) -> None:
    """Refinements and B-factor points record the pixel size of the particles refined (re-extracted at full
    scale, or the classification's downscaled ones). Nullable: older rows do not know it."""
    _add_missing_columns(connection, _V4_COLUMNS)


def _series_completing_run(connection: Connection) -> None:
    """A tilt series records the DAG run that completed it, so that run's retry (its task killed after the
    series was flipped complete) takes the series again instead of losing it; other runs still cannot."""
    _add_missing_columns(connection, (("tilt_series", "completed_by_run_id", "VARCHAR(250)"),))


def _dashboard_columns(connection: Connection) -> None:
    """The session's quality limits (drawn on the dashboard's plots) and each 2D class's selection score
    (shown in the class galleries). Nullable: older sessions and classes do not know them."""
    _add_missing_columns(connection, (("session", "quality_limits", "TEXT"),
                                      ("particle_classification", "selection_score", "FLOAT")))


def _processed_tomograms(connection: Connection) -> None:
    """Denoised and segmented volumes of a tomogram (ISPyB ProcessedTomogram)."""
    _create_tables(connection, ("processed_tomogram",))


def _session_stop_request(connection: Connection) -> None:
    """A live session records a request to end it now (the dashboard's button), which the next scan of the
    watched folder obeys like the end-of-session marker. Nullable: no request."""
    timestamp = "TIMESTAMP WITH TIME ZONE" if connection.dialect.name == "postgresql" else "DATETIME"
    _add_missing_columns(connection, (("session", "stop_requested_at", timestamp),
                                      ("session", "stop_requested_by", "TEXT")))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "ISPyB-shaped cryo-EM result tables and the session_file ingest table", _create_v1_tables),
    Migration(2, "sessions identified by name and watched folder", _session_identity),
    Migration(3, "tomography: tilt series, tilts, tomograms and tilt image alignments", _tomography_tables),
    Migration(4, "pixel size of refinements and B-factor points", _refinement_pixel_size),
    Migration(5, "the run that completed a tilt series", _series_completing_run),
    Migration(6, "session quality limits and class selection scores", _dashboard_columns),
    Migration(7, "processed tomograms (denoised, segmented)", _processed_tomograms),
    Migration(8, "a request to end a live session now", _session_stop_request),
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
