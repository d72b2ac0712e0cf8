"""The results store: idempotent writes of every stage's results, keyed by (session, movie, stage, job).

Each public method is one transaction, and each result is an upsert on the row's natural key, so a
retried Airflow task rewrites its own rows (values updated) instead of adding new ones, and a task that
dies half-way leaves nothing half-written. A reprocess run starts new processing jobs, so its rows sit
beside the live run's rows instead of over them.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import PurePath
from typing import TypeVar

from sqlalchemy import Connection, Engine, Table, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from . import migrations, records, schema
from .errors import ResultsInputError, ResultsNotFoundError, ResultsUnavailableError
from .records import Field, ResultLike
from .summary import SessionSummary, TiltSeriesRecord, build_summary, tilt_series_records
from .tilt_results import TiltMovieResult, tilt_movie_results
from .upsert import insert_ignoring_conflicts, upsert

JOB_STATUSES = ("success", "failed")
SERIES_COLLECTING, SERIES_COMPLETE = "collecting", "complete"
CLASSIFICATION_TYPES = ("2D", "3D")
_CLAIM_CHUNK = 500  # rows per INSERT: well under SQLite's bound-parameter limit
T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ResultsStore:
    """Results of a cryo-EM session in PostgreSQL (or SQLite for the demo), ISPyB-shaped."""

    def __init__(self, engine: Engine, label: str | None = None) -> None:
        """`label` names the database in errors (e.g. the Airflow connection id); default: URL sans password."""
        self.engine = engine
        self.label = label or engine.url.render_as_string(hide_password=True)

    @contextmanager
    def _transaction(self, foreign_keys: bool = True) -> Iterator[Connection]:
        """One transaction; a database that cannot be reached becomes ResultsUnavailableError.

        `foreign_keys=False` (migrations only) lets SQLite rebuild a parent table without its ON DELETE
        CASCADE emptying the children; SQLite takes that setting only outside a transaction.
        """
        try:
            connection = self.engine.connect()
        except DBAPIError as exc:
            raise ResultsUnavailableError(self.label, self._problem(exc)) from exc
        sqlite = None if foreign_keys or self.engine.dialect.name != "sqlite" else connection.connection.driver_connection
        with connection:
            if sqlite is not None:
                sqlite.execute("PRAGMA foreign_keys=OFF")
            try:
                with connection.begin():
                    yield connection
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise ResultsUnavailableError(self.label, self._problem(exc)) from exc
                raise
            finally:
                if sqlite is not None:
                    sqlite.execute("PRAGMA foreign_keys=ON")

    def _problem(self, exc: DBAPIError) -> str:
        problem = " ".join(str(exc.orig).split())
        password = self.engine.url.password
        return problem.replace(password, "***") if password else problem

    # -- schema ---------------------------------------------------------------------------------------
    def ensure_schema(self) -> int:
        """Create or upgrade the tables; idempotent and safe when several processes call it at once."""
        with self._transaction(foreign_keys=False) as connection:
            return migrations.upgrade(connection)

    def schema_version(self) -> int:
        """The version recorded in the database; 0 if the tables were never created."""
        with self._transaction() as connection:
            return migrations.current_version(connection)

    # -- sessions, jobs, files ------------------------------------------------------------------------
    def get_or_create_session(self, name: str, watch_dir: str | PurePath, processing_dir: str | PurePath,
                              data_collection_id: int | None = None) -> int:
        """The id of the session `name` watching `watch_dir`, created on first use (`data_collection_id`, the
        session's ISPyB data collection, matters only to the ISPyB store).

        A session is its name and its watched folder: the runs of one live session find the same id,
        while another folder that reuses the name (the default `demo`, a dated reprocess) gets its own.
        """
        table = schema.session
        key = schema.session_key(name, str(watch_dir))
        with self._transaction() as connection:
            insert_ignoring_conflicts(connection, table, [{
                "session_key": key, "name": name, "image_directory": str(watch_dir),
                "processing_directory": str(processing_dir), "created": _now()}], key=["session_key"])
            return connection.execute(select(table.c.session_id).where(table.c.session_key == key)).scalar_one()

    def start_processing_job(self, session_id: int, recipe: str, stage: str, reprocess: bool, run_id: str,
                             command: str | None = None, log_path: str | PurePath | None = None) -> int:
        """The job for this run's stage: created once per (session, run_id, stage); a retry restarts it."""
        values = {
            "session_id": session_id, "run_id": run_id, "recipe": recipe, "stage": stage, "reprocess": reprocess,
            "processing_status": "running", "processing_message": None, "processing_command_line": command,
            "log_full_path": None if log_path is None else str(log_path),
            "processing_start_time": _now(), "processing_end_time": None,
        }
        return self._upsert("processing job", schema.processing_job, values, ["session_id", "run_id", "stage"])

    def finish_processing_job(self, job_id: int, status: str, message: str | None = None,
                              command: str | None = None, log_path: str | PurePath | None = None) -> None:
        """Close the job as 'success' or 'failed' with an optional message (the failure reason)."""
        if status not in JOB_STATUSES:
            raise ResultsInputError("processing job", "status", f"{status!r} is not one of {JOB_STATUSES}")
        table = schema.processing_job
        values = {"processing_status": status, "processing_message": message, "processing_end_time": _now()}
        if command is not None:
            values["processing_command_line"] = command
        if log_path is not None:
            values["log_full_path"] = str(log_path)
        with self._transaction() as connection:
            updated = connection.execute(table.update().where(table.c.processing_job_id == job_id).values(values))
            if updated.rowcount == 0:
                raise ResultsNotFoundError(f"no processing job {job_id}")

    def record_stage_failure(self, job_id: int, stage: str, reason: str) -> int:
        """A particle-batch step of job `job_id`'s run failed (e.g. `class2d batch 3`): a failed processing
        job of that session, run and recipe, named `stage`, holding the reason; a retry updates it."""
        table = schema.processing_job
        with self._transaction() as connection:
            run = connection.execute(select(table).where(table.c.processing_job_id == job_id)).first()
        if run is None:
            raise ResultsNotFoundError(f"no processing job {job_id}")
        now = _now()
        return self._upsert("stage failure", table, {
            "session_id": run.session_id, "run_id": run.run_id, "recipe": run.recipe, "stage": stage[:64],
            "reprocess": run.reprocess, "processing_status": "failed", "processing_message": reason,
            "processing_command_line": None, "log_full_path": None, "processing_start_time": now,
            "processing_end_time": now}, ["session_id", "run_id", "stage"])

    def claim_files(self, session_id: int, candidates: Sequence[tuple[str, int]], claimed_by: str,
                    first_seen: Mapping[str, datetime] | None = None) -> list[str]:
        """Take the candidate files (path relative to the watched dir, size in bytes) for `claimed_by`.

        Returns, in candidate order, the paths this claimant holds: those nobody had claimed, plus those
        it claimed itself before (so a retried task gets its files back). Any other claimant gets none
        of them: the insert ignores taken paths, atomically, however many writers race.
        """
        sizes: dict[str, int] = {}
        for path, size_bytes in candidates:
            if PurePath(path).is_absolute():
                raise ResultsInputError("claim", path, "expected a path relative to the watched directory")
            sizes[str(path)] = int(size_bytes)
        # Same insert order in every writer, so two overlapping claims cannot deadlock on PostgreSQL.
        ordered = sorted(sizes)
        now = _now()
        table = schema.session_file
        held: set[str] = set()
        with self._transaction() as connection:
            for start in range(0, len(ordered), _CLAIM_CHUNK):
                chunk = ordered[start:start + _CLAIM_CHUNK]
                insert_ignoring_conflicts(connection, table, [{
                    "session_id": session_id, "relative_path": path, "size_bytes": sizes[path],
                    "first_seen": (first_seen or {}).get(path, now), "claimed_at": now, "claimed_by": claimed_by,
                } for path in chunk], key=["session_id", "relative_path"])
                held.update(connection.execute(select(table.c.relative_path).where(
                    table.c.session_id == session_id, table.c.claimed_by == claimed_by,
                    table.c.relative_path.in_(chunk))).scalars())
        return [path for path in sizes if path in held]

    def claimed_files(self, session_id: int) -> set[str]:
        """Every path of the session that some run has taken."""
        table = schema.session_file
        with self._transaction() as connection:
            return set(connection.execute(select(table.c.relative_path)
                                          .where(table.c.session_id == session_id)).scalars())

    def files_claimed_by(self, session_id: int, claimed_by: str) -> set[str]:
        """The paths `claimed_by` (a run id) holds, so a retried task gets its movies back."""
        table = schema.session_file
        with self._transaction() as connection:
            return set(connection.execute(select(table.c.relative_path).where(
                table.c.session_id == session_id, table.c.claimed_by == claimed_by)).scalars())

    def last_claim_time_s(self, session_id: int) -> float | None:
        """When the session's latest claim was made (Unix seconds), None before the first."""
        table = schema.session_file
        with self._transaction() as connection:
            latest = connection.execute(select(func.max(table.c.claimed_at))
                                        .where(table.c.session_id == session_id)).scalar()
        if latest is None:
            return None
        return (latest if latest.tzinfo else latest.replace(tzinfo=timezone.utc)).timestamp()

    def set_quality_limits(self, session_id: int, limits: Mapping[str, float | None]) -> None:
        """Record the session's per-movie quality limits (the newest run's settings; None: no limit)."""
        bad = [name for name, value in limits.items()
               if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value))]
        if bad:
            raise ResultsInputError("quality limits", bad[0], "must be a finite number or None")
        table = schema.session
        with self._transaction() as connection:
            connection.execute(table.update().where(table.c.session_id == session_id)
                               .values(quality_limits=json.dumps(dict(limits), sort_keys=True)))

    def end_session(self, session_id: int, reason: str) -> None:
        """Record that the live session ended by itself, and why (kept from the first call)."""
        table = schema.session
        with self._transaction() as connection:
            connection.execute(table.update().where(table.c.session_id == session_id, table.c.end_time.is_(None))
                               .values(end_time=_now(), end_reason=reason))

    def request_stop(self, session_id: int, requested_by: str) -> bool:
        """Ask the live session to end at its next folder scan; True for the first request (kept), False when
        one was made before or the session has ended. ResultsNotFoundError if there is no such session."""
        table = schema.session
        with self._transaction() as connection:
            if connection.execute(select(table.c.session_id).where(table.c.session_id == session_id)).first() is None:
                raise ResultsNotFoundError(f"no session {session_id} in the results database")
            return connection.execute(table.update().where(
                table.c.session_id == session_id, table.c.end_time.is_(None), table.c.stop_requested_at.is_(None))
                .values(stop_requested_at=_now(), stop_requested_by=requested_by)).rowcount == 1

    def stop_requested_by(self, session_id: int) -> str | None:
        """Who asked the session to end now, or None while nobody did."""
        table = schema.session
        with self._transaction() as connection:
            row = connection.execute(select(table.c.stop_requested_at, table.c.stop_requested_by)
                                     .where(table.c.session_id == session_id)).first()
        return None if row is None or row.stop_requested_at is None else (row.stop_requested_by or "someone")

    def register_movie(self, session_id: int, path: str | PurePath) -> int:
        """The id of the movie at `path`, numbered 1, 2, ... in order of registration within the session."""
        movie, session = schema.movie, schema.session
        with self._transaction() as connection:
            # Lock the session row (NO KEY UPDATE: child-row inserts are not blocked) so numbers never race.
            locked = connection.execute(select(session.c.session_id).where(session.c.session_id == session_id)
                                        .with_for_update(key_share=True)).first()
            if locked is None:
                raise ResultsNotFoundError(f"no session {session_id}")
            existing = connection.execute(select(movie.c.movie_id).where(
                movie.c.session_id == session_id, movie.c.movie_full_path == str(path))).scalar()
            if existing is not None:
                return existing
            number = connection.execute(select(func.coalesce(func.max(movie.c.movie_number), 0) + 1)
                                        .where(movie.c.session_id == session_id)).scalar_one()
            return connection.execute(movie.insert().values(
                session_id=session_id, movie_number=number, movie_full_path=str(path),
                created_time_stamp=_now(), status="registered").returning(movie.c.movie_id)).scalar_one()

    # -- per-movie results ----------------------------------------------------------------------------
    def record_motion_correction(self, job_id: int, movie_id: int, result: ResultLike) -> int:
        return self._record_movie_result("motion correction", schema.motion_correction, records.MOTION_CORRECTION,
                                         job_id, movie_id, result)

    def record_ctf(self, job_id: int, movie_id: int, result: ResultLike) -> int:
        return self._record_movie_result("ctf", schema.ctf, records.CTF, job_id, movie_id, result)

    def record_picking(self, job_id: int, movie_id: int, result: ResultLike) -> int:
        return self._record_movie_result("particle picking", schema.particle_picker, records.PARTICLE_PICKER,
                                         job_id, movie_id, result)

    def record_ice_thickness(self, job_id: int, movie_id: int, result: ResultLike) -> int:
        return self._record_movie_result("ice thickness", schema.relative_ice_thickness,
                                         records.RELATIVE_ICE_THICKNESS, job_id, movie_id, result)

    def record_failure(self, job_id: int, movie_id: int, stage: str, reason: str) -> int:
        """Record that `stage` failed on this movie in this job; the movie is marked failed with the reason."""
        values = {"processing_job_id": job_id, "movie_id": movie_id, "stage": stage, "reason": reason,
                  "recorded": _now()}
        movie = schema.movie
        with self._writing(f"failure of processing job {job_id}, movie {movie_id}") as connection:
            failure_id = upsert(connection, schema.processing_failure, values, ["processing_job_id", "movie_id", "stage"])
            connection.execute(movie.update().where(movie.c.movie_id == movie_id).values(
                status="failed", failure_reason=f"{stage}: {reason}"))
            return failure_id

    def clear_failure(self, job_id: int, movie_id: int, stage: str) -> None:
        """A later try of `stage` on this movie in this job succeeded (a retried batch, a movie copied again):
        its failure row goes, and the movie stays marked failed only by a failure of another stage or job."""
        failure, movie = schema.processing_failure, schema.movie
        with self._writing(f"success after a failure of processing job {job_id}, movie {movie_id}") as connection:
            deleted = connection.execute(failure.delete().where(
                (failure.c.processing_job_id == job_id) & (failure.c.movie_id == movie_id)
                & (failure.c.stage == stage))).rowcount
            if not deleted:
                return
            latest = connection.execute(select(failure.c.stage, failure.c.reason).where(failure.c.movie_id == movie_id)
                                        .order_by(failure.c.processing_failure_id.desc()).limit(1)).first()
            connection.execute(movie.update().where(movie.c.movie_id == movie_id).values(
                status="failed" if latest else "registered",
                failure_reason=f"{latest.stage}: {latest.reason}" if latest else None))

    # -- batch results --------------------------------------------------------------------------------
    def record_classification_group(self, job_id: int, group: ResultLike, classes: Iterable[ResultLike]) -> int:
        """A 2D/3D classification batch and all its classes, replacing whatever an earlier try wrote."""
        group_values = records.row_values("classification group", schema.particle_classification_group, group,
                                          records.PARTICLE_CLASSIFICATION_GROUP)
        if group_values["type"] not in CLASSIFICATION_TYPES:
            raise ResultsInputError("classification group", "type",
                                    f"{group_values['type']!r} is not one of {CLASSIFICATION_TYPES}")
        class_values = [records.row_values("classification class", schema.particle_classification, one,
                                           records.PARTICLE_CLASSIFICATION) for one in classes]
        table = schema.particle_classification
        with self._writing(f"classification group of processing job {job_id}") as connection:
            group_id = upsert(connection, schema.particle_classification_group,
                              {"processing_job_id": job_id, **group_values},
                              ["processing_job_id", "type", "batch_number"])
            for values in class_values:
                upsert(connection, table, {"particle_classification_group_id": group_id, **values},
                       ["particle_classification_group_id", "class_number"])
            connection.execute(table.delete().where(
                table.c.particle_classification_group_id == group_id,
                table.c.class_number.not_in([values["class_number"] for values in class_values])))
            return group_id

    def record_class_selection(self, group_id: int, selected_class_numbers: Iterable[int],
                               scores: Mapping[int, float] | None = None) -> None:
        """Mark exactly these classes of the group as selected (automatic class selection's outcome), with
        each scored class's selection score when given."""
        table = schema.particle_classification
        chosen = [int(number) for number in selected_class_numbers]
        with self._transaction() as connection:
            connection.execute(table.update().where(table.c.particle_classification_group_id == group_id)
                               .values(selected=table.c.class_number.in_(chosen)))
            for number, score in (scores or {}).items():
                connection.execute(table.update().where(table.c.particle_classification_group_id == group_id,
                                                        table.c.class_number == int(number))
                                   .values(selection_score=float(score)))

    def record_initial_model(self, group_id: int, result: ResultLike) -> int:
        """The initial model of a 3D classification batch."""
        values = records.row_values("initial model", schema.cryoem_initial_model, result,
                                    records.CRYOEM_INITIAL_MODEL)
        return self._upsert(f"initial model of classification group {group_id}", schema.cryoem_initial_model,
                            {"particle_classification_group_id": group_id, **values},
                            ["particle_classification_group_id"])

    def record_refinement(self, job_id: int, result: ResultLike) -> int:
        """A 3D refinement + post-processing result, one per (job, symmetry)."""
        values = records.row_values("refinement", schema.refinement, result, records.REFINEMENT)
        return self._upsert(f"refinement of processing job {job_id}", schema.refinement,
                            {"processing_job_id": job_id, **values}, ["processing_job_id", "symmetry"])

    def record_bfactor_fit(self, job_id: int, result: ResultLike) -> int:
        """One point of the B-factor plot, one per (job, number of particles)."""
        values = records.row_values("bfactor fit", schema.bfactor_fit, result, records.BFACTOR_FIT)
        return self._upsert(f"bfactor fit of processing job {job_id}", schema.bfactor_fit,
                            {"processing_job_id": job_id, **values}, ["processing_job_id", "number_of_particles"])

    # -- tomography -----------------------------------------------------------------------------------
    def get_or_create_tilt_series(self, session_id: int, name: str, mdoc_path: str | PurePath | None,
                                  tilt_axis_nominal_deg: float | None, expected_tilts: int | None = None) -> int:
        """The id of the session's tilt series `name`, created (collecting) on first use.

        Values given (not None) update an existing series, so a series first seen through a movie gets its
        mdoc path and tilt axis when the mdoc is read.
        """
        if not name or any(ch.isspace() for ch in name):
            raise ResultsInputError("tilt series", "name", f"{name!r} is empty or has whitespace")
        if expected_tilts is not None and expected_tilts < 1:
            raise ResultsInputError("tilt series", "expected_tilts", f"{expected_tilts} is not a positive count")
        known = {"mdoc_full_path": None if mdoc_path is None else str(mdoc_path),
                 "tilt_axis_nominal_deg": None if tilt_axis_nominal_deg is None else float(tilt_axis_nominal_deg),
                 "expected_tilts": expected_tilts}
        table = schema.tilt_series
        where = (table.c.session_id == session_id, table.c.name == name)
        with self._writing(f"tilt series {name} of session {session_id}") as connection:
            insert_ignoring_conflicts(connection, table, [{
                "session_id": session_id, "name": name, **known, "status": SERIES_COLLECTING, "created": _now()}],
                key=["session_id", "name"])
            given = {column: value for column, value in known.items() if value is not None}
            if given:
                connection.execute(table.update().where(*where).values(given))
            return connection.execute(select(table.c.tilt_series_id).where(*where)).scalar_one()

    def add_tilt(self, tilt_series_id: int, movie_id: int, z_value: int, tilt_angle_deg: float,
                 acquisition_order: int, pre_exposure_e_a2: float | None) -> int:
        """Record `movie_id` as a tilt of the series; returns the tilt's id. A retry updates the same row.

        A tilt first recorded after its series was completed is stored late (it is not in the series'
        tomogram); a tilt recorded before keeps late = False through retries.
        """
        return self._put_tilt(tilt_series_id, movie_id, z_value, tilt_angle_deg, acquisition_order,
                              pre_exposure_e_a2, late=None)

    def record_late_tilt(self, tilt_series_id: int, movie_id: int, z_value: int, tilt_angle_deg: float,
                         acquisition_order: int, pre_exposure_e_a2: float | None) -> int:
        """Record the tilt as late whatever its series' state: the caller knows it missed the alignment."""
        return self._put_tilt(tilt_series_id, movie_id, z_value, tilt_angle_deg, acquisition_order,
                              pre_exposure_e_a2, late=True)

    def mark_tilt_excluded(self, movie_id: int, reason: str, excluded: bool = True) -> None:
        """Leave the tilt of `movie_id` out of its series (or take it back with excluded=False)."""
        table = schema.tilt
        with self._transaction() as connection:
            updated = connection.execute(table.update().where(table.c.movie_id == movie_id).values(
                excluded=excluded, exclusion_reason=reason if excluded else None))
            if updated.rowcount == 0:
                raise ResultsNotFoundError(f"movie {movie_id} is not a tilt of any tilt series")

    def complete_tilt_series(self, tilt_series_id: int, reason: str, run_id: str | None = None) -> bool:
        """Flip the series from collecting to complete; True only for the one caller that flipped it, and
        again for a retry of the same DAG run (`run_id`) that flipped it.

        One conditional UPDATE: however many runs race, the database lets exactly one of them change the
        row, so the series is aligned once. False when another run completed it.
        """
        table = schema.tilt_series
        with self._transaction() as connection:
            flipped = connection.execute(table.update().where(
                table.c.tilt_series_id == tilt_series_id, table.c.status == SERIES_COLLECTING).values(
                status=SERIES_COMPLETE, completed_reason=reason, completed_at=_now(),
                completed_by_run_id=run_id)).rowcount
            if flipped == 1:
                return True
            row = connection.execute(select(table.c.completed_by_run_id).where(
                table.c.tilt_series_id == tilt_series_id)).first()
            if row is None:
                raise ResultsNotFoundError(f"no tilt series {tilt_series_id}")
            return run_id is not None and row.completed_by_run_id == run_id

    def tilt_movie_results(self, session_id: int,
                           processing_job_id: int | None = None) -> dict[str, TiltMovieResult]:
        """Per movie path: what motion correction and CTF recorded (live jobs, or one reprocess job)."""
        with self._transaction() as connection:
            return tilt_movie_results(connection, session_id, processing_job_id)

    def tilt_series_of_session(self, session_id: int) -> list[TiltSeriesRecord]:
        """Every tilt series of the session by name, each with its tilts in acquisition order."""
        with self._transaction() as connection:
            return tilt_series_records(connection, session_id)

    def record_tomogram(self, job_id: int, tilt_series_id: int, result: ResultLike,
                        alignments: Iterable[ResultLike]) -> int:
        """A series' tomogram from job `job_id` and its per-tilt alignments, replacing an earlier try's.

        Each alignment names its tilt by `movie_id`, which must be a tilt of the series; a tilt that is
        not excluded needs its refined angle and shifts.
        """
        values = records.row_values("tomogram", schema.tomogram, result, records.TOMOGRAM)
        per_tilt = [records.row_values("tilt image alignment", schema.tilt_image_alignment, one,
                                       records.TILT_IMAGE_ALIGNMENT) for one in alignments]
        for one in per_tilt:
            missing = [column for column in ("refined_tilt_angle_deg", "shift_x_px", "shift_y_px")
                       if one[column] is None]
            if missing and not one["excluded"]:
                raise ResultsInputError("tilt image alignment", missing[0],
                                        f"missing for movie {one['movie_id']}, which is not excluded")
        table, tilt = schema.tilt_image_alignment, schema.tilt
        with self._writing(f"tomogram of processing job {job_id}, tilt series {tilt_series_id}") as connection:
            members = set(connection.execute(select(tilt.c.movie_id)
                                             .where(tilt.c.tilt_series_id == tilt_series_id)).scalars())
            strangers = sorted({one["movie_id"] for one in per_tilt} - members)
            if strangers:
                raise ResultsInputError("tilt image alignment", "movie_id",
                                        f"movies {strangers} are not tilts of tilt series {tilt_series_id}")
            tomogram_id = upsert(connection, schema.tomogram,
                                 {"processing_job_id": job_id, "tilt_series_id": tilt_series_id, **values},
                                 ["processing_job_id", "tilt_series_id"])
            for one in per_tilt:
                upsert(connection, table, {"tomogram_id": tomogram_id, **one}, ["tomogram_id", "movie_id"])
            connection.execute(table.delete().where(
                table.c.tomogram_id == tomogram_id, table.c.movie_id.not_in([one["movie_id"] for one in per_tilt])))
            return tomogram_id

    def record_processed_tomogram(self, job_id: int, tilt_series_id: int, result: ResultLike) -> int:
        """A volume made from the series' tomogram of job `job_id` (ISPyB ProcessedTomogram: `processing_type`
        Denoised or Segmented, `path`, optional `central_slice` / `projection_xy` images); a retry replaces it."""
        values = records.row_values("processed tomogram", schema.processed_tomogram, result,
                                    records.PROCESSED_TOMOGRAM)
        tomogram = schema.tomogram
        what = f"{values['processing_type']} tomogram of processing job {job_id}, tilt series {tilt_series_id}"
        with self._writing(what) as connection:
            tomogram_id = connection.execute(select(tomogram.c.tomogram_id).where(
                tomogram.c.processing_job_id == job_id, tomogram.c.tilt_series_id == tilt_series_id)).scalar()
            if tomogram_id is None:
                raise ResultsNotFoundError(f"no tomogram of tilt series {tilt_series_id} from processing job "
                                           f"{job_id}: record the tomogram first")
            return upsert(connection, schema.processed_tomogram, {"tomogram_id": tomogram_id, **values},
                          ["tomogram_id", "processing_type"])

    def processed_tomograms(self, tilt_series_id: int) -> list[dict[str, object]]:
        """Every processed volume of the series' tomograms, oldest first, as column dicts."""
        table, tomogram = schema.processed_tomogram, schema.tomogram
        with self._transaction() as connection:
            rows = connection.execute(select(table).join(tomogram, tomogram.c.tomogram_id == table.c.tomogram_id)
                                      .where(tomogram.c.tilt_series_id == tilt_series_id)
                                      .order_by(table.c.processed_tomogram_id)).mappings().all()
        return [dict(row) for row in rows]

    # -- reading --------------------------------------------------------------------------------------
    def session_summary(self, session: int | str) -> SessionSummary:
        """Summary of the session with this id, or of the only session with this name."""
        with self._transaction() as connection:
            return build_summary(connection, session)

    def read(self, reader: Callable[[Connection], T]) -> T:
        """`reader`'s answer from one transaction, so all its queries see one state of the database
        (the dashboard's aggregations); an unreachable database is ResultsUnavailableError."""
        with self._transaction() as connection:
            return reader(connection)

    # -- helpers --------------------------------------------------------------------------------------
    def _put_tilt(self, tilt_series_id: int, movie_id: int, z_value: int, tilt_angle_deg: float,
                  acquisition_order: int, pre_exposure_e_a2: float | None, late: bool | None) -> int:
        """Insert or update the tilt of `movie_id`; `late=None`: late if new and its series is complete."""
        values = {"tilt_series_id": tilt_series_id, "z_value": int(z_value), "tilt_angle_deg": float(tilt_angle_deg),
                  "acquisition_order": int(acquisition_order),
                  "pre_exposure_e_a2": None if pre_exposure_e_a2 is None else float(pre_exposure_e_a2)}
        series, tilt = schema.tilt_series, schema.tilt
        with self._writing(f"tilt of tilt series {tilt_series_id}, movie {movie_id}") as connection:
            # FOR SHARE: complete_tilt_series waits for this transaction, so a tilt is either in the series
            # the aligner reads or stored late, never lost between the two (SQLite writers are serial anyway).
            status = connection.execute(select(series.c.status).where(series.c.tilt_series_id == tilt_series_id)
                                        .with_for_update(read=True)).scalar()
            if status is None:
                raise ResultsNotFoundError(f"no tilt series {tilt_series_id}")
            insert_ignoring_conflicts(connection, tilt, [{
                "movie_id": movie_id, **values, "excluded": False, "exclusion_reason": None,
                "late": status == SERIES_COMPLETE if late is None else late}], key=["movie_id"])
            connection.execute(tilt.update().where(tilt.c.movie_id == movie_id).values(
                values if late is None else {**values, "late": late}))
            return connection.execute(select(tilt.c.tilt_id).where(tilt.c.movie_id == movie_id)).scalar_one()

    def _record_movie_result(self, stage: str, table: Table, fields: Mapping[str, Field], job_id: int,
                             movie_id: int, result: ResultLike) -> int:
        values = records.row_values(stage, table, result, fields)
        return self._upsert(f"{stage} of processing job {job_id}, movie {movie_id}", table,
                            {"processing_job_id": job_id, "movie_id": movie_id, **values},
                            ["processing_job_id", "movie_id"])

    def _upsert(self, what: str, table: Table, values: Mapping[str, object], key: Sequence[str]) -> int:
        with self._writing(what) as connection:
            return upsert(connection, table, values, key)

    @contextmanager
    def _writing(self, what: str) -> Iterator[Connection]:
        """A write transaction whose foreign-key failure names the row that could not be written."""
        try:
            with self._transaction() as connection:
                yield connection
        except IntegrityError as exc:
            raise ResultsNotFoundError(f"cannot record {what}, is its session/job/movie missing? "
                                       f"{' '.join(str(exc.orig).split())}") from exc
