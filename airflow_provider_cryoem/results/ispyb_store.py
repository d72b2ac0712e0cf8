"""A results store that also writes a facility's ISPyB: the EM processing tables, through `ispyb.sqlalchemy`.

`ISPyBResultsStore` is a `ResultsStore` (so no stage changes): every call first goes to the store's own
tables (the bookkeeping database: claims, tilt series, the dashboard's reads), then the rows it wrote are
mirrored into ISPyB, linked to the session's existing `DataCollection`. ISPyB's tables have surrogate keys
and almost no unique constraints, so the mirror keeps `cryoem_ispyb_link` in the ISPyB database: a
natural key (processing job + movie, batch, class...) -> the ISPyB row id, written in the same MariaDB
transaction as the row itself. A retried task finds its key and updates that row; two writers of one key
queue on the key's row lock, so neither inserts a second row.

Proposals, sessions and data collections are never created: they belong to the microscope software.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any, TypeVar

from ispyb.sqlalchemy import (
    CTF,
    AutoProcProgram,
    BFactorFit,
    CryoemInitialModel,
    DataCollection,
    Movie,
    MotionCorrection,
    ParticleClassification,
    ParticleClassificationGroup,
    ParticlePicker,
    ProcessedTomogram,
    ProcessingJob,
    RelativeIceThickness,
    TiltImageAlignment,
    Tomogram,
    t_ParticleClassification_has_CryoemInitialModel,
)
from sqlalchemy import (
    CHAR,
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    Text,
    inspect,
    select,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.schema import CreateTable

from . import schema
from .engine import CONNECT_TIMEOUT_S
from .errors import ResultsError, ResultsNotFoundError, ResultsUnavailableError
from .records import ResultLike
from .store import ResultsStore

T = TypeVar("T")

LINK_TABLE_NAME = "cryoem_ispyb_link"
# The ISPyB tables the mirror writes; ensure_schema checks they exist before the first run writes anything.
ISPYB_TABLES = (DataCollection, ProcessingJob, AutoProcProgram, Movie, MotionCorrection, CTF, ParticlePicker,
                RelativeIceThickness, ParticleClassificationGroup, ParticleClassification, CryoemInitialModel,
                BFactorFit, Tomogram, TiltImageAlignment, ProcessedTomogram)
# MariaDB error numbers worth one more try: deadlock found, lock wait timeout.
_RETRY_ERRORS = (1213, 1205)
_ATTEMPTS = 5
_TEXT_255 = 255
_SMALLINT_MAX = 32767  # MotionCorrection.imageNumber is SMALLINT

link_metadata = MetaData()
link = Table(
    LINK_TABLE_NAME, link_metadata,
    Column("link_key", CHAR(64), primary_key=True),  # sha256 of natural_key: any path fits the index
    Column("natural_key", Text, nullable=False),
    Column("ispyb_table", String(64), nullable=False),
    Column("ispyb_id", Integer),  # NULL only inside the transaction that claimed the key
    Column("updated", DateTime, nullable=False),
    mysql_engine="InnoDB",
)


class DataCollectionNotFoundError(ResultsNotFoundError):
    """The session has no DataCollection in ISPyB to attach results to (the microscope software makes it)."""


def _utc(moment: datetime | None) -> datetime | None:
    """ISPyB's DATETIME columns hold naive UTC."""
    if moment is None:
        return None
    return (moment.astimezone(timezone.utc) if moment.tzinfo else moment).replace(tzinfo=None)


def _text(value: object, length: int = _TEXT_255) -> str | None:
    """A path or message cut to the VARCHAR it goes into (ISPyB's paths are VARCHAR(255))."""
    return None if value is None else str(value)[:length]


def _nm(value_px: float | None, pixel_size_a: float | None) -> float | None:
    """Pixels to nanometres (ISPyB's alignment residuals are nm)."""
    return None if value_px is None or pixel_size_a is None else value_px * pixel_size_a / 10.0


def _digest(natural_key: str) -> str:
    return hashlib.sha256(natural_key.encode()).hexdigest()


def image_directory_variants(directory: str | PurePath) -> list[str]:
    """The forms of the watched folder a DataCollection's imageDirectory may hold (with or without a slash)."""
    bare = str(directory).rstrip("/") or "/"
    return [bare, bare + "/"]


class ISPyBResultsStore(ResultsStore):
    """The default store's tables for bookkeeping plus a mirror of every result into ISPyB.

    `engine` is the bookkeeping database (PostgreSQL, or SQLite in the processing folder); `ispyb_engine`
    the facility's ISPyB on MariaDB/MySQL. `ispyb_label` names it in errors (connection id and host).
    """

    def __init__(self, engine: Engine, ispyb_engine: Engine, label: str | None = None,
                 ispyb_label: str | None = None) -> None:
        super().__init__(engine, label=label)
        self.ispyb_engine = ispyb_engine
        self.ispyb_label = ispyb_label or ispyb_engine.url.render_as_string(hide_password=True)
        self._identities: dict[tuple[str, int], Mapping[str, Any]] = {}

    # -- the ISPyB side: transactions, keys --------------------------------------------------------
    def ensure_schema(self) -> int:
        """The bookkeeping tables, the link table in ISPyB, and a check that ISPyB has the EM tables."""
        version = super().ensure_schema()

        def prepare(connection: Connection) -> None:
            present = set(inspect(connection).get_table_names())
            missing = [model.__tablename__ for model in ISPYB_TABLES if model.__tablename__ not in present]
            if missing:
                raise ResultsError(f"ISPyB database {self.ispyb_label} lacks the tables {', '.join(missing)}: "
                                   f"is it an ISPyB schema (ispyb-database 4.x/5.x)?")
            connection.execute(CreateTable(link, if_not_exists=True))  # several workers may start at once
        self._ispyb(prepare)
        return version

    def _ispyb(self, work: Callable[[Connection], T]) -> T:
        """`work` in one ISPyB transaction, tried again on a deadlock or lock timeout (InnoDB picks a victim
        when two writers lock link keys in different orders); an unreachable server is ResultsUnavailableError."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self.ispyb_engine.begin() as connection:
                    return work(connection)
            except OperationalError as exc:
                code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
                if code in _RETRY_ERRORS and attempt < _ATTEMPTS:
                    time.sleep(0.05 * attempt)
                    continue
                if code in _RETRY_ERRORS:
                    raise
                raise ResultsUnavailableError(self.ispyb_label, " ".join(str(exc.orig).split())) from exc
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise ResultsUnavailableError(self.ispyb_label, " ".join(str(exc.orig).split())) from exc
                raise
        raise AssertionError("unreachable")

    @staticmethod
    def _linked(connection: Connection, natural_key: str) -> int | None:
        return connection.execute(select(link.c.ispyb_id).where(link.c.link_key == _digest(natural_key))).scalar()

    @staticmethod
    def _put(connection: Connection, natural_key: str, model: type[DeclarativeBase], values: Mapping[str, Any],
             adopt: Callable[[Connection], int | None] | None = None) -> int:
        """Insert or update the ISPyB row that `natural_key` names; returns its id.

        The key's link row is claimed first (INSERT IGNORE takes its row lock, so a second writer of the
        same key waits here until the first commits, then finds the id). `adopt` finds a row someone
        else wrote (a Movie the microscope software registered) to link instead of inserting one.
        """
        key = _digest(natural_key)
        table = model.__table__
        primary_key = next(iter(table.primary_key.columns))
        # ON DUPLICATE KEY UPDATE (not INSERT IGNORE) takes an exclusive lock on an existing key: two writers
        # of one key queue here instead of both holding shared locks and deadlocking on the FOR UPDATE.
        statement = mysql.insert(link).values(link_key=key, natural_key=natural_key, ispyb_table=table.name,
                                              ispyb_id=None, updated=_utc(_now()))
        connection.execute(statement.on_duplicate_key_update(link_key=statement.inserted.link_key))
        linked = connection.execute(select(link.c.ispyb_id).where(link.c.link_key == key).with_for_update()).scalar()
        if linked is not None:
            if connection.execute(table.update().where(primary_key == linked).values(dict(values))).rowcount:
                connection.execute(link.update().where(link.c.link_key == key).values(updated=_utc(_now())))
                return linked
        row_id = adopt(connection) if adopt is not None else None
        if row_id is None:
            row_id = connection.execute(table.insert().values(dict(values))).inserted_primary_key[0]
        else:
            connection.execute(table.update().where(primary_key == row_id).values(dict(values)))
        connection.execute(link.update().where(link.c.link_key == key).values(ispyb_id=row_id, updated=_utc(_now())))
        return row_id

    # -- bookkeeping reads the mirror needs --------------------------------------------------------------
    def _row(self, table: Table, key_column: str, key: int) -> Mapping[str, Any]:
        with self._transaction() as connection:
            row = connection.execute(select(table).where(table.c[key_column] == key)).mappings().first()
        if row is None:
            raise ResultsNotFoundError(f"no {table.name} {key}")
        return row

    def _job(self, job_id: int) -> Mapping[str, Any]:
        """The bookkeeping job with its session's key and watched folder."""
        job, session = schema.processing_job, schema.session
        with self._transaction() as connection:
            row = connection.execute(select(job, session.c.session_key, session.c.image_directory)
                                     .join(session, session.c.session_id == job.c.session_id)
                                     .where(job.c.processing_job_id == job_id)).mappings().first()
        if row is None:
            raise ResultsNotFoundError(f"no processing job {job_id}")
        return row

    def _identity(self, table: Table, key_column: str, key: int) -> Mapping[str, Any]:
        """A session or movie row for its identity (key, folder, path, number), which never changes: read once
        per store, since every mirrored write needs them (a bookkeeping read per write doubled its cost)."""
        cached = self._identities.get((table.name, key))
        if cached is None:
            cached = self._identities[(table.name, key)] = self._row(table, key_column, key)
        return cached

    def _job_identity(self, job_id: int) -> Mapping[str, Any]:
        """The job's identity (session, run, stage) read once; start/finish read the job afresh for its status."""
        cached = self._identities.get(("processing_job", job_id))
        if cached is None:
            cached = self._identities[("processing_job", job_id)] = self._job(job_id)
        return cached

    @staticmethod
    def _job_key(job: Mapping[str, Any]) -> str:
        return f"processing_job|{job['session_key']}|{job['run_id']}|{job['stage']}"

    def _data_collection(self, connection: Connection, session_key: str) -> int:
        found = self._linked(connection, f"data_collection|{session_key}")
        if found is None:
            raise DataCollectionNotFoundError(f"session {session_key[:12]}... is not linked to an ISPyB data "
                                              f"collection in {self.ispyb_label}: open the session first")
        return found

    def _program(self, connection: Connection, job: Mapping[str, Any]) -> tuple[int, int]:
        """(ProcessingJob id, AutoProcProgram id) of a bookkeeping job, written or updated from its row."""
        data_collection_id = self._data_collection(connection, job["session_key"])
        key = self._job_key(job)
        processing_job_id = self._put(connection, key, ProcessingJob, {
            "dataCollectionId": data_collection_id, "displayName": _text(job["stage"], 80),
            "comments": _text(f"run {job['run_id']}"), "recipe": _text(job["recipe"], 50),
            "automatic": 0 if job["reprocess"] else 1})
        status = {"success": 1, "failed": 0}.get(job["processing_status"])
        program_id = self._put(connection, f"program|{key}", AutoProcProgram, {
            "processingJobId": processing_job_id, "processingPrograms": _text(job["stage"]),
            "processingCommandLine": _text(job["processing_command_line"]), "processingStatus": status,
            "processingMessage": _text(job["processing_message"]),
            "processingStartTime": _utc(job["processing_start_time"]),
            "processingEndTime": _utc(job["processing_end_time"]), "recordTimeStamp": _utc(_now())})
        return processing_job_id, program_id

    def _program_of(self, connection: Connection, job: Mapping[str, Any]) -> tuple[int, int]:
        """The job's ISPyB ids, written first if this store never saw the job start (another worker did)."""
        processing_job_id = self._linked(connection, self._job_key(job))
        program_id = self._linked(connection, f"program|{self._job_key(job)}")
        if processing_job_id is None or program_id is None:
            return self._program(connection, job)
        return processing_job_id, program_id

    def _movie_path(self, movie_id: int) -> str:
        movie = self._identity(schema.movie, "movie_id", movie_id)
        session = self._identity(schema.session, "session_id", movie["session_id"])
        return str(PurePath(session["image_directory"]) / movie["movie_full_path"])  # ISPyB holds full paths

    def _movie_of(self, connection: Connection, data_collection_id: int, movie_id: int) -> int:
        """The ISPyB Movie a result hangs from: the one registered before, written only if it is missing."""
        linked = self._linked(connection, f"movie|{data_collection_id}|{self._movie_path(movie_id)}")
        return self._movie(connection, data_collection_id, movie_id) if linked is None else linked

    def _movie(self, connection: Connection, data_collection_id: int, movie_id: int) -> int:
        movie = self._identity(schema.movie, "movie_id", movie_id)
        path = self._movie_path(movie_id)

        def registered(connection: Connection) -> int | None:
            return connection.execute(select(Movie.movieId).where(
                Movie.dataCollectionId == data_collection_id, Movie.movieFullPath == path)
                .order_by(Movie.movieId).limit(1)).scalar()
        return self._put(connection, f"movie|{data_collection_id}|{path}", Movie, {
            "dataCollectionId": data_collection_id, "movieNumber": movie["movie_number"],
            "movieFullPath": _text(path), "createdTimeStamp": _utc(movie["created_time_stamp"])},
            adopt=registered)

    def _motion_correction_of(self, connection: Connection, job: Mapping[str, Any], movie_id: int,
                              ispyb_movie_id: int) -> int | None:
        """The ISPyB MotionCorrection a per-movie result hangs from: the same run's, else the newest."""
        motion, jobs = schema.motion_correction, schema.processing_job
        with self._transaction() as own:
            rows = own.execute(select(jobs.c.processing_job_id, jobs.c.run_id)
                               .join(motion, motion.c.processing_job_id == jobs.c.processing_job_id)
                               .where(motion.c.movie_id == movie_id, jobs.c.session_id == job["session_id"])
                               .order_by(motion.c.motion_correction_id.desc())).all()
        if not rows:
            return None
        chosen = next((row for row in rows if row.run_id == job["run_id"]), rows[0])
        motion_job = self._job_identity(chosen.processing_job_id)
        processing_job_id = self._linked(connection, self._job_key(motion_job))
        if processing_job_id is None:
            return None
        return self._linked(connection, f"motion_correction|{processing_job_id}|{ispyb_movie_id}")

    # -- sessions and jobs ---------------------------------------------------------------------------------
    def get_or_create_session(self, name: str, watch_dir: str | PurePath, processing_dir: str | PurePath,
                              data_collection_id: int | None = None) -> int:
        """The bookkeeping session, linked to its ISPyB DataCollection: `data_collection_id` when given (the
        session form's `ispyb_data_collection_id`), else the one whose imageDirectory is `watch_dir`."""
        session_id = super().get_or_create_session(name, watch_dir, processing_dir)
        key = schema.session_key(name, str(watch_dir))

        def link_session(connection: Connection) -> None:
            found = self._find_data_collection(connection, watch_dir, data_collection_id)
            self._link_session(connection, key, found)
        self._ispyb(link_session)
        return session_id

    def _find_data_collection(self, connection: Connection, watch_dir: str | PurePath,
                              data_collection_id: int | None) -> int:
        if data_collection_id is not None:
            if connection.execute(select(DataCollection.dataCollectionId).where(
                    DataCollection.dataCollectionId == data_collection_id)).first() is None:
                raise DataCollectionNotFoundError(f"ISPyB {self.ispyb_label} has no data collection "
                                                  f"{data_collection_id} (ispyb_data_collection_id)")
            return data_collection_id
        found = connection.execute(select(DataCollection.dataCollectionId).where(
            DataCollection.imageDirectory.in_(image_directory_variants(watch_dir)))
            .order_by(DataCollection.dataCollectionId)).scalars().all()
        if not found:
            raise DataCollectionNotFoundError(
                f"ISPyB {self.ispyb_label} has no data collection whose imageDirectory is {watch_dir}: the "
                f"microscope software registers it; or give ispyb_data_collection_id in the session form")
        if len(found) > 1:
            raise DataCollectionNotFoundError(
                f"ISPyB {self.ispyb_label} has {len(found)} data collections with imageDirectory {watch_dir} "
                f"(ids {', '.join(map(str, found))}): give ispyb_data_collection_id in the session form")
        return found[0]

    def _link_session(self, connection: Connection, session_key: str, data_collection_id: int) -> None:
        """Point the session at its data collection (a later run may name another one: it wins)."""
        natural_key = f"data_collection|{session_key}"
        connection.execute(mysql.insert(link).values(
            link_key=_digest(natural_key), natural_key=natural_key, ispyb_table=DataCollection.__tablename__,
            ispyb_id=data_collection_id, updated=_utc(_now())).on_duplicate_key_update(
            ispyb_id=data_collection_id, updated=_utc(_now())))

    def start_processing_job(self, session_id: int, recipe: str, stage: str, reprocess: bool, run_id: str,
                             command: str | None = None, log_path: str | PurePath | None = None) -> int:
        job_id = super().start_processing_job(session_id, recipe, stage, reprocess, run_id, command, log_path)
        job = self._job(job_id)
        self._ispyb(lambda connection: self._program(connection, job))
        return job_id

    def finish_processing_job(self, job_id: int, status: str, message: str | None = None,
                              command: str | None = None, log_path: str | PurePath | None = None) -> None:
        super().finish_processing_job(job_id, status, message, command, log_path)
        job = self._job(job_id)
        self._ispyb(lambda connection: self._program(connection, job))

    def record_stage_failure(self, job_id: int, stage: str, reason: str) -> int:
        failed_id = super().record_stage_failure(job_id, stage, reason)
        job = self._job(failed_id)
        self._ispyb(lambda connection: self._program(connection, job))
        return failed_id

    def register_movie(self, session_id: int, path: str | PurePath) -> int:
        movie_id = super().register_movie(session_id, path)
        session = self._identity(schema.session, "session_id", session_id)
        self._ispyb(lambda connection: self._movie(
            connection, self._data_collection(connection, session["session_key"]), movie_id))
        return movie_id

    # -- per-movie results -----------------------------------------------------------------------------------
    def _per_movie(self, job_id: int, movie_id: int,
                   write: Callable[[Connection, Mapping[str, Any], int, int, int, int], int]) -> int:
        """Run `write(connection, job, data collection, program, ISPyB job, ISPyB movie)` in one transaction."""
        job = self._job_identity(job_id)

        def work(connection: Connection) -> int:
            data_collection_id = self._data_collection(connection, job["session_key"])
            processing_job_id, program_id = self._program_of(connection, job)
            ispyb_movie_id = self._movie_of(connection, data_collection_id, movie_id)
            return write(connection, job, data_collection_id, program_id, processing_job_id, ispyb_movie_id)
        return self._ispyb(work)

    def record_motion_correction(self, job_id: int, movie_id: int, result: ResultLike) -> int:
        row_id = super().record_motion_correction(job_id, movie_id, result)
        row = self._row(schema.motion_correction, "motion_correction_id", row_id)
        movie = self._identity(schema.movie, "movie_id", movie_id)

        def write(connection: Connection, job: Mapping[str, Any], data_collection_id: int, program_id: int,
                  processing_job_id: int, ispyb_movie_id: int) -> int:
            return self._put(connection, f"motion_correction|{processing_job_id}|{ispyb_movie_id}", MotionCorrection, {
                "dataCollectionId": data_collection_id, "autoProcProgramId": program_id, "movieId": ispyb_movie_id,
                "imageNumber": movie["movie_number"] if movie["movie_number"] <= _SMALLINT_MAX else None, "firstFrame": row["first_frame"],
                "lastFrame": row["last_frame"], "dosePerFrame": row["dose_per_frame_e_a2"],
                "totalMotion": row["total_motion_a"], "averageMotionPerFrame": row["average_motion_per_frame_a"],
                "micrographFullPath": _text(row["micrograph_full_path"]),
                "driftPlotFullPath": _text(row["drift_plot_full_path"]),
                "micrographSnapshotFullPath": _text(row["micrograph_snapshot_full_path"]),
                "patchesUsedX": row["patches_used_x"], "patchesUsedY": row["patches_used_y"],
                "comments": _text(f"early motion {row['early_motion_a']:.2f} A, late {row['late_motion_a']:.2f} A")})
        self._per_movie(job_id, movie_id, write)
        return row_id

    def record_ctf(self, job_id: int, movie_id: int, result: ResultLike) -> int:
        row_id = super().record_ctf(job_id, movie_id, result)
        row = self._row(schema.ctf, "ctf_id", row_id)

        def write(connection: Connection, job: Mapping[str, Any], _dc: int, program_id: int,
                  processing_job_id: int, ispyb_movie_id: int) -> int:
            return self._put(connection, f"ctf|{processing_job_id}|{ispyb_movie_id}", CTF, {
                "motionCorrectionId": self._motion_correction_of(connection, job, movie_id, ispyb_movie_id),
                "autoProcProgramId": program_id, "astigmatism": row["astigmatism_a"],
                "astigmatismAngle": row["astigmatism_angle_deg"],
                "estimatedDefocus": (row["defocus_u_a"] + row["defocus_v_a"]) / 2,
                "estimatedResolution": row["estimated_resolution_a"], "ccValue": row["cc_value"],
                "amplitudeContrast": row["amplitude_contrast"], "iceRingDensity": row["ice_ring_density"],
                "fftTheoreticalFullPath": _text(row["fft_theoretical_full_path"]),
                "comments": _text(f"defocus U {row['defocus_u_a']:.1f} A, V {row['defocus_v_a']:.1f} A")})
        self._per_movie(job_id, movie_id, write)
        return row_id

    def record_picking(self, job_id: int, movie_id: int, result: ResultLike) -> int:
        row_id = super().record_picking(job_id, movie_id, result)
        row = self._row(schema.particle_picker, "particle_picker_id", row_id)

        def write(connection: Connection, job: Mapping[str, Any], _dc: int, program_id: int,
                  processing_job_id: int, ispyb_movie_id: int) -> int:
            diameter_a = row["particle_diameter_a"]
            return self._put(connection, f"particle_picker|{processing_job_id}|{ispyb_movie_id}", ParticlePicker, {
                "programId": program_id,
                "firstMotionCorrectionId": self._motion_correction_of(connection, job, movie_id, ispyb_movie_id),
                "numberOfParticles": row["number_of_particles"],
                "particleDiameter": None if diameter_a is None else diameter_a / 10.0,  # ISPyB: nm
                "particlePickingTemplate": _text(row["particle_picking_template"]),
                "summaryImageFullPath": _text(row["summary_image_full_path"])})
        self._per_movie(job_id, movie_id, write)
        return row_id

    def record_ice_thickness(self, job_id: int, movie_id: int, result: ResultLike) -> int:
        row_id = super().record_ice_thickness(job_id, movie_id, result)
        row = self._row(schema.relative_ice_thickness, "relative_ice_thickness_id", row_id)

        def write(connection: Connection, job: Mapping[str, Any], _dc: int, program_id: int,
                  processing_job_id: int, ispyb_movie_id: int) -> int:
            return self._put(connection, f"relative_ice_thickness|{processing_job_id}|{ispyb_movie_id}",
                             RelativeIceThickness, {
                                 "motionCorrectionId": self._motion_correction_of(connection, job, movie_id,
                                                                                  ispyb_movie_id),
                                 "autoProcProgramId": program_id,
                                 **{name: row[name] for name in ("minimum", "q1", "median", "q3", "maximum")}})
        self._per_movie(job_id, movie_id, write)
        return row_id

    # -- batch results --------------------------------------------------------------------------------------
    def _group_key(self, connection: Connection, group_id: int) -> tuple[str, Mapping[str, Any]]:
        group = self._row(schema.particle_classification_group, "particle_classification_group_id", group_id)
        job = self._job_identity(group["processing_job_id"])
        processing_job_id, _program_id = self._program_of(connection, job)
        return f"classification_group|{processing_job_id}|{group['type']}|{group['batch_number']}", group

    def _write_classes(self, connection: Connection, ispyb_group_id: int, classes: Iterable[Mapping[str, Any]],
                       values_of: Callable[[Mapping[str, Any]], dict[str, Any]]) -> list[int]:
        """The group's classes as given, each keyed by (group, class number); classes no longer given go."""
        ids, numbers = [], []
        for one in classes:
            numbers.append(one["class_number"])
            ids.append(self._put(connection, f"classification|{ispyb_group_id}|{one['class_number']}",
                                 ParticleClassification, {"particleClassificationGroupId": ispyb_group_id,
                                                          "classNumber": one["class_number"], **values_of(one)}))
        stale = connection.execute(select(ParticleClassification.particleClassificationId).where(
            ParticleClassification.particleClassificationGroupId == ispyb_group_id,
            ParticleClassification.particleClassificationId.not_in(ids or [0]))).scalars().all()
        if stale:
            connection.execute(link.delete().where(link.c.ispyb_table == ParticleClassification.__tablename__,
                                                   link.c.ispyb_id.in_(stale)))
            connection.execute(ParticleClassification.__table__.delete().where(
                ParticleClassification.particleClassificationId.in_(stale)))
        return ids

    @staticmethod
    def _class_values(one: Mapping[str, Any]) -> dict[str, Any]:
        return {"classImageFullPath": _text(one["class_image_full_path"]),
                "particlesPerClass": one["particles_per_class"], "classDistribution": one["class_distribution"],
                "rotationAccuracy": one["rotation_accuracy_deg"], "translationAccuracy": one["translation_accuracy_a"],
                "estimatedResolution": one["estimated_resolution_a"],
                "overallFourierCompleteness": one["overall_fourier_completeness"], "selected": int(one["selected"])}

    def _latest_picker(self, connection: Connection, data_collection_id: int) -> int | None:
        """ISPyB hangs a classification group from one ParticlePicker; a batch joins many micrographs' picks,
        so the group names the data collection's newest picker row."""
        return connection.execute(
            select(ParticlePicker.particlePickerId)
            .join(MotionCorrection, MotionCorrection.motionCorrectionId == ParticlePicker.firstMotionCorrectionId)
            .where(MotionCorrection.dataCollectionId == data_collection_id)
            .order_by(ParticlePicker.particlePickerId.desc()).limit(1)).scalar()

    def record_classification_group(self, job_id: int, group: ResultLike, classes: Iterable[ResultLike]) -> int:
        group_id = super().record_classification_group(job_id, group, classes)
        group_row = self._row(schema.particle_classification_group, "particle_classification_group_id", group_id)
        table = schema.particle_classification
        with self._transaction() as own:
            class_rows = own.execute(select(table).where(table.c.particle_classification_group_id == group_id)
                                     .order_by(table.c.class_number)).mappings().all()
        job = self._job_identity(job_id)

        def work(connection: Connection) -> None:
            key, _group = self._group_key(connection, group_id)
            _processing_job_id, program_id = self._program_of(connection, job)
            data_collection_id = self._data_collection(connection, job["session_key"])
            ispyb_group_id = self._put(connection, key, ParticleClassificationGroup, {
                "programId": program_id, "particlePickerId": self._latest_picker(connection, data_collection_id),
                "type": group_row["type"], "batchNumber": group_row["batch_number"],
                "numberOfParticlesPerBatch": group_row["number_of_particles_per_batch"],
                "numberOfClassesPerBatch": group_row["number_of_classes_per_batch"],
                "symmetry": group_row["symmetry"], "binnedPixelSize": group_row["binned_pixel_size_a"]})
            self._write_classes(connection, ispyb_group_id, class_rows, self._class_values)
        self._ispyb(work)
        return group_id

    def record_class_selection(self, group_id: int, selected_class_numbers: Iterable[int],
                               scores: Mapping[int, float] | None = None) -> None:
        chosen = [int(number) for number in selected_class_numbers]
        super().record_class_selection(group_id, chosen, scores)

        def work(connection: Connection) -> None:
            key, _group = self._group_key(connection, group_id)
            ispyb_group_id = self._linked(connection, key)
            if ispyb_group_id is None:
                raise ResultsNotFoundError(f"classification group {group_id} was never written to ISPyB")
            classes = ParticleClassification.__table__
            connection.execute(classes.update().where(classes.c.particleClassificationGroupId == ispyb_group_id)
                               .values(selected=classes.c.classNumber.in_(chosen or [-1])))
        self._ispyb(work)

    def record_initial_model(self, group_id: int, result: ResultLike) -> int:
        model_id = super().record_initial_model(group_id, result)
        row = self._row(schema.cryoem_initial_model, "cryoem_initial_model_id", model_id)

        def work(connection: Connection) -> None:
            key, _group = self._group_key(connection, group_id)
            ispyb_group_id = self._linked(connection, key)
            if ispyb_group_id is None:
                raise ResultsNotFoundError(f"classification group {group_id} was never written to ISPyB")
            ispyb_model_id = self._put(connection, f"initial_model|{key}", CryoemInitialModel, {
                "resolution": row["resolution_a"], "numberOfParticles": row["number_of_particles"]})
            # The model was the 3D batch's reference: ISPyB links it to each class of that classification.
            classes = connection.execute(select(ParticleClassification.particleClassificationId).where(
                ParticleClassification.particleClassificationGroupId == ispyb_group_id)).scalars().all()
            if classes:
                connection.execute(mysql.insert(t_ParticleClassification_has_CryoemInitialModel).prefix_with(
                    "IGNORE").values([{"particleClassificationId": one, "cryoemInitialModelId": ispyb_model_id}
                                      for one in classes]))
        self._ispyb(work)
        return model_id

    def _refinement_key(self, processing_job_id: int, symmetry: str) -> str:
        return f"refinement|{processing_job_id}|{symmetry}"

    def record_refinement(self, job_id: int, result: ResultLike) -> int:
        """ISPyB has no refinement table: a refinement is a 3D classification group of one class (its map),
        the class the B-factor points hang from."""
        refinement_id = super().record_refinement(job_id, result)
        row = self._row(schema.refinement, "refinement_id", refinement_id)
        job = self._job_identity(job_id)

        def work(connection: Connection) -> None:
            processing_job_id, program_id = self._program_of(connection, job)
            key = self._refinement_key(processing_job_id, row["symmetry"])
            ispyb_group_id = self._put(connection, key, ParticleClassificationGroup, {
                "programId": program_id, "type": "3D", "numberOfParticlesPerBatch": row["number_of_particles"],
                "numberOfClassesPerBatch": 1, "symmetry": _text(row["symmetry"], 20),
                "binnedPixelSize": row["pixel_size_a"]})
            self._write_classes(connection, ispyb_group_id, [{"class_number": row["class_number"] or 1}],
                                lambda _one: {"classImageFullPath": _text(row["map_full_path"]),
                                              "particlesPerClass": row["number_of_particles"],
                                              "estimatedResolution": row["estimated_resolution_a"],
                                              "classDistribution": 1.0, "selected": 1})
        self._ispyb(work)
        return refinement_id

    def record_bfactor_fit(self, job_id: int, result: ResultLike) -> int:
        """A B-factor point hangs from a refinement's class: that of the same job, else the same run's
        refinement with the most particles (the B-factor stage may be a job of its own)."""
        fit_id = super().record_bfactor_fit(job_id, result)
        row = self._row(schema.bfactor_fit, "bfactor_fit_id", fit_id)
        job = self._job_identity(job_id)
        refinement, jobs = schema.refinement, schema.processing_job
        with self._transaction() as own:
            found = own.execute(select(refinement.c.processing_job_id, refinement.c.symmetry)
                                .join(jobs, jobs.c.processing_job_id == refinement.c.processing_job_id)
                                .where(jobs.c.session_id == job["session_id"], jobs.c.run_id == job["run_id"])
                                .order_by((refinement.c.processing_job_id == job_id).desc(),
                                          refinement.c.number_of_particles.desc()).limit(1)).first()
        if found is None:
            raise ResultsNotFoundError(f"cannot record the B-factor point of processing job {job_id} in ISPyB: "
                                       f"its run has no refinement yet (BFactorFit hangs from its class)")
        refinement_job = self._job_identity(found.processing_job_id)

        def work(connection: Connection) -> None:
            processing_job_id, _program_id = self._program_of(connection, job)
            refined_in, _ = self._program_of(connection, refinement_job)
            group_id = self._linked(connection, self._refinement_key(refined_in, found.symmetry))
            class_id = connection.execute(select(ParticleClassification.particleClassificationId).where(
                ParticleClassification.particleClassificationGroupId == group_id)).scalar()
            if class_id is None:
                raise ResultsNotFoundError(f"refinement of processing job {found.processing_job_id} was never "
                                           f"written to ISPyB")
            self._put(connection, f"bfactor|{processing_job_id}|{row['number_of_particles']}", BFactorFit, {
                "particleClassificationId": class_id, "resolution": row["resolution_a"],
                "numberOfParticles": row["number_of_particles"], "particleBatchSize": row["particle_batch_size"]})
        self._ispyb(work)
        return fit_id

    # -- tomography ----------------------------------------------------------------------------------------
    def record_tomogram(self, job_id: int, tilt_series_id: int, result: ResultLike,
                        alignments: Iterable[ResultLike]) -> int:
        alignments = list(alignments)
        tomogram_id = super().record_tomogram(job_id, tilt_series_id, result, alignments)
        row = self._row(schema.tomogram, "tomogram_id", tomogram_id)
        table = schema.tilt_image_alignment
        with self._transaction() as own:
            per_tilt = own.execute(select(table).where(table.c.tomogram_id == tomogram_id)).mappings().all()
        job = self._job_identity(job_id)
        pixel_a = row["pixel_size_a"]

        def work(connection: Connection) -> None:
            data_collection_id = self._data_collection(connection, job["session_key"])
            processing_job_id, program_id = self._program_of(connection, job)
            ispyb_tomogram_id = self._put(connection, f"tomogram|{processing_job_id}|{tilt_series_id}", Tomogram, {
                "dataCollectionId": data_collection_id, "autoProcProgramId": program_id,
                "volumeFile": _text(row["volume_file"]), "stackFile": _text(row["stack_file"]),
                "sizeX": row["size_x_px"], "sizeY": row["size_y_px"], "sizeZ": row["size_z_px"],
                "pixelSpacing": pixel_a, "tiltAngleOffset": row["tilt_angle_offset_deg"],
                "residualErrorMean": _nm(row["residual_error_mean_px"], pixel_a),
                "residualErrorSD": _nm(row["residual_error_sd_px"], pixel_a),
                "fileDirectory": _text(os.path.dirname(str(row["volume_file"]))),
                "centralSliceImage": _text(row["central_slice_image"]), "projXY": _text(row["projection_xy_image"]),
                "projXZ": _text(row["projection_xz_image"]), "tomogramMovie": _text(row["tilt_series_movie"]),
                "xyShiftPlot": _text(row["alignment_plot"])})
            alignment = TiltImageAlignment.__table__
            kept = []
            for one in per_tilt:
                if one["excluded"]:
                    continue
                movie_id = self._movie_of(connection, data_collection_id, one["movie_id"])
                kept.append(movie_id)
                values = {"refinedTiltAngle": one["refined_tilt_angle_deg"],
                          "refinedTiltAxis": one["refined_tilt_axis_deg"],
                          "residualError": _nm(one["residual_error_px"], pixel_a)}
                # (movieId, tomogramId) is the table's own primary key: a plain upsert is idempotent.
                connection.execute(mysql.insert(alignment).values(movieId=movie_id, tomogramId=ispyb_tomogram_id,
                                                                  **values).on_duplicate_key_update(**values))
            connection.execute(alignment.delete().where(alignment.c.tomogramId == ispyb_tomogram_id,
                                                        alignment.c.movieId.not_in(kept or [0])))
        self._ispyb(work)
        return tomogram_id

    def record_processed_tomogram(self, job_id: int, tilt_series_id: int, result: ResultLike) -> int:
        processed_id = super().record_processed_tomogram(job_id, tilt_series_id, result)
        row = self._row(schema.processed_tomogram, "processed_tomogram_id", processed_id)
        job = self._job_identity(job_id)

        def work(connection: Connection) -> None:
            processing_job_id, _program_id = self._program_of(connection, job)
            ispyb_tomogram_id = self._linked(connection, f"tomogram|{processing_job_id}|{tilt_series_id}")
            if ispyb_tomogram_id is None:
                raise ResultsNotFoundError(f"tomogram of tilt series {tilt_series_id}, processing job {job_id} "
                                           f"was never written to ISPyB")
            self._put(connection, f"processed_tomogram|{ispyb_tomogram_id}|{row['processing_type']}",
                      ProcessedTomogram, {"tomogramId": ispyb_tomogram_id, "filePath": _text(row["file_path"]),
                                          "processingType": _text(row["processing_type"])})
        self._ispyb(work)
        return processed_id


def _now() -> datetime:
    return datetime.now(timezone.utc)


def ispyb_engine(url: URL) -> Engine:
    """An engine on ISPyB (mysql+pymysql URL): READ COMMITTED, so lookups of other rows take no gap locks
    that would make concurrent writers deadlock; pings before use, since a worker keeps it for hours."""
    return create_engine(url, pool_pre_ping=True, isolation_level="READ COMMITTED",
                         connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "charset": "utf8mb4"})
