"""What a session has produced so far: per-stage counts, failures with reasons, and medians.

Where a movie has results from several jobs (live run, then a reprocess run), the summary uses the
newest job's row for it; the older rows stay in the database untouched.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Row, Table, func, select

from ..engines.bfactor import BFactorPoint, fit_bfactor
from . import schema
from .errors import ResultsNotFoundError

MOTION_CORRECTION = "motion_correction"
CTF = "ctf"
PARTICLE_PICKING = "particle_picking"
ICE_THICKNESS = "ice_thickness"
CLASS2D = "class2d"
CLASS3D = "class3d"
REFINEMENT = "refinement"
BFACTOR = "bfactor"


class StageCount(BaseModel):
    succeeded: int = 0  # movies (per-movie stages) or batches/runs with a result
    failed: int = 0  # movies recorded as failed at this stage


class FailureRecord(BaseModel):
    stage: str
    movie: str | None  # None: the whole processing job failed
    reason: str
    processing_job_id: int
    reprocess: bool


class TomographyCounts(BaseModel):
    """Tilt series by state, and the tilts left out of (excluded) or too late for (late) their tomogram."""

    series_collecting: int = 0
    series_complete: int = 0
    series_reconstructed: int = 0  # series with at least one tomogram
    tilts: int = 0
    excluded_tilts: int = 0  # marked excluded, or excluded by the newest alignment of their series
    late_tilts: int = 0
    late_tilt_movies: list[str] = Field(default_factory=list)


class TiltRecord(BaseModel):
    """One tilt of a series: its movie and where it was collected."""

    tilt_id: int
    movie_id: int
    movie: str  # the movie's path, relative to the watched folder
    z_value: int
    tilt_angle_deg: float
    acquisition_order: int
    pre_exposure_e_a2: float | None
    excluded: bool
    exclusion_reason: str | None
    late: bool


class TiltSeriesRecord(BaseModel):
    """A tilt series of a session with its tilts in acquisition order."""

    tilt_series_id: int
    name: str
    mdoc_full_path: str | None
    tilt_axis_nominal_deg: float | None
    expected_tilts: int | None
    status: str  # collecting | complete
    completed_reason: str | None
    completed_at: datetime | None
    tilts: list[TiltRecord]


class SessionSummary(BaseModel):
    session_id: int
    session: str
    image_directory: str
    processing_directory: str
    ended: bool
    end_reason: str | None
    files_claimed: int
    movies_registered: int
    processing_jobs: int
    reprocess_jobs: int
    stages: dict[str, StageCount]
    failures: list[FailureRecord]
    median_total_motion_a: float | None
    median_defocus_a: float | None
    median_fit_resolution_a: float | None
    median_particles_per_micrograph: float | None
    best_resolution_a: float | None
    best_map_path: str | None = None
    bfactor_a2: float | None = Field(None, description="Rosenthal–Henderson B of the newest B-factor series.")
    tomography: TomographyCounts = Field(default_factory=TomographyCounts)


def _find_session(connection: Connection, session: int | str) -> Row:
    """The session row by id, or by name when exactly one session has it (names may be reused)."""
    table = schema.session
    if isinstance(session, int):
        row = connection.execute(select(table).where(table.c.session_id == session)).first()
        if row is None:
            raise ResultsNotFoundError(f"no session {session} in the results database")
        return row
    rows = connection.execute(select(table).where(table.c.name == session).order_by(table.c.session_id)).all()
    if not rows:
        raise ResultsNotFoundError(f"no session named {session!r} in the results database")
    if len(rows) > 1:
        choices = ", ".join(f"{row.session_id} ({row.image_directory})" for row in rows)
        raise ResultsNotFoundError(f"{len(rows)} sessions are named {session!r}; give the session id: {choices}")
    return rows[0]


# per-movie stage -> (its table, the value columns the summary reads)
PerMovieColumns = Mapping[str, Mapping[str, Sequence[Any]]]  # stage -> column -> newest value per movie
SUMMARY_COLUMNS: dict[str, tuple[Table, tuple[str, ...]]] = {
    MOTION_CORRECTION: (schema.motion_correction, ("total_motion_a",)),
    CTF: (schema.ctf, ("defocus_u_a", "defocus_v_a", "estimated_resolution_a")),
    PARTICLE_PICKING: (schema.particle_picker, ("number_of_particles",)),
    ICE_THICKNESS: (schema.relative_ice_thickness, ()),
}


def build_summary(connection: Connection, session_ref: int | str,
                  per_movie: PerMovieColumns | None = None) -> SessionSummary:
    """Summarise a session given by id or unique name; ResultsNotFoundError if there is none.

    `per_movie`: for each per-movie stage, "movie_id" and its SUMMARY_COLUMNS, one value per movie with a
    row (the newest job's), when the caller has read them already (the dashboard reads them once for its
    plots and this summary).
    """
    session = _find_session(connection, session_ref)
    sid = session.session_id
    jobs = connection.execute(select(schema.processing_job).where(schema.processing_job.c.session_id == sid)).all()
    if per_movie is None:
        per_movie = {stage: _by_column(newest_per_movie(connection, table, sid, *columns), ("movie_id", *columns))
                     for stage, (table, columns) in SUMMARY_COLUMNS.items()}
    motion, ctf, picks, ice = (per_movie[stage] for stage in (MOTION_CORRECTION, CTF, PARTICLE_PICKING, ICE_THICKNESS))
    groups = connection.execute(
        select(schema.particle_classification_group.c.type, func.count())
        .join(schema.processing_job).where(schema.processing_job.c.session_id == sid)
        .group_by(schema.particle_classification_group.c.type)).all()
    group_counts = {kind: count for kind, count in groups}
    refinements = _rows_of_session(connection, schema.refinement, sid)
    bfactor_points = _rows_of_session(connection, schema.bfactor_fit, sid)
    failures = _failures(connection, sid, jobs)

    stages = {
        MOTION_CORRECTION: StageCount(succeeded=len(motion["movie_id"])),
        CTF: StageCount(succeeded=len(ctf["movie_id"])),
        PARTICLE_PICKING: StageCount(succeeded=len(picks["movie_id"])),
        ICE_THICKNESS: StageCount(succeeded=len(ice["movie_id"])),
        CLASS2D: StageCount(succeeded=group_counts.get("2D", 0)),
        CLASS3D: StageCount(succeeded=group_counts.get("3D", 0)),
        REFINEMENT: StageCount(succeeded=len(refinements)),
        BFACTOR: StageCount(succeeded=len(bfactor_points)),
    }
    failed_movies: dict[str, set[str]] = {}
    for failure in failures:
        if failure.movie is not None:
            failed_movies.setdefault(failure.stage, set()).add(failure.movie)
    for stage, movies in failed_movies.items():
        stages.setdefault(stage, StageCount()).failed = len(movies)

    return SessionSummary(
        session_id=sid,
        session=session.name,
        image_directory=session.image_directory,
        processing_directory=session.processing_directory,
        ended=session.end_time is not None,
        end_reason=session.end_reason,
        files_claimed=connection.execute(select(func.count()).select_from(schema.session_file)
                                         .where(schema.session_file.c.session_id == sid)).scalar_one(),
        movies_registered=connection.execute(select(func.count()).select_from(schema.movie)
                                             .where(schema.movie.c.session_id == sid)).scalar_one(),
        processing_jobs=len(jobs),
        reprocess_jobs=sum(1 for job in jobs if job.reprocess),
        stages=stages,
        failures=failures,
        median_total_motion_a=_median(motion["total_motion_a"]),
        median_defocus_a=_median((u + v) / 2 for u, v in zip(ctf["defocus_u_a"], ctf["defocus_v_a"])),
        median_fit_resolution_a=_median(ctf["estimated_resolution_a"]),
        median_particles_per_micrograph=_median(picks["number_of_particles"]),
        best_resolution_a=min((r.estimated_resolution_a for r in refinements), default=None),
        best_map_path=min(refinements, key=lambda r: r.estimated_resolution_a).map_full_path if refinements else None,
        bfactor_a2=_newest_bfactor(bfactor_points),
        tomography=_tomography_counts(connection, sid),
    )


def tilt_series_records(connection: Connection, session_id: int) -> list[TiltSeriesRecord]:
    """The session's tilt series by name, each with its tilts in acquisition order."""
    series_table, tilt, movie = schema.tilt_series, schema.tilt, schema.movie
    tilts: dict[int, list[TiltRecord]] = {}
    rows = connection.execute(
        select(tilt, movie.c.movie_full_path).join(movie, tilt.c.movie_id == movie.c.movie_id)
        .join(series_table).where(series_table.c.session_id == session_id)
        .order_by(tilt.c.acquisition_order, tilt.c.z_value, tilt.c.tilt_id)).all()
    for row in rows:
        tilts.setdefault(row.tilt_series_id, []).append(TiltRecord(
            tilt_id=row.tilt_id, movie_id=row.movie_id, movie=row.movie_full_path, z_value=row.z_value,
            tilt_angle_deg=row.tilt_angle_deg, acquisition_order=row.acquisition_order,
            pre_exposure_e_a2=row.pre_exposure_e_a2, excluded=row.excluded, exclusion_reason=row.exclusion_reason,
            late=row.late))
    series = connection.execute(select(series_table).where(series_table.c.session_id == session_id)
                                .order_by(series_table.c.name)).all()
    return [TiltSeriesRecord(
        tilt_series_id=row.tilt_series_id, name=row.name, mdoc_full_path=row.mdoc_full_path,
        tilt_axis_nominal_deg=row.tilt_axis_nominal_deg, expected_tilts=row.expected_tilts, status=row.status,
        completed_reason=row.completed_reason, completed_at=row.completed_at,
        tilts=tilts.get(row.tilt_series_id, [])) for row in series]


def _tomography_counts(connection: Connection, session_id: int) -> TomographyCounts:
    series = tilt_series_records(connection, session_id)
    if not series:
        return TomographyCounts()
    tomogram, series_table = schema.tomogram, schema.tilt_series
    newest: dict[int, tuple[int, int]] = {}  # series -> (job id, tomogram id) of its newest tomogram
    for row in connection.execute(select(tomogram.c.tomogram_id, tomogram.c.tilt_series_id,
                                         tomogram.c.processing_job_id).join(series_table)
                                  .where(series_table.c.session_id == session_id)):
        if row.tilt_series_id not in newest or row.processing_job_id > newest[row.tilt_series_id][0]:
            newest[row.tilt_series_id] = (row.processing_job_id, row.tomogram_id)
    alignment = schema.tilt_image_alignment
    left_out = set(connection.execute(select(alignment.c.movie_id).where(
        alignment.c.tomogram_id.in_([tomogram_id for _, tomogram_id in newest.values()]),
        alignment.c.excluded.is_(True))).scalars()) if newest else set()
    tilts = [one for record in series for one in record.tilts]
    late = [one.movie for one in tilts if one.late]
    return TomographyCounts(
        series_collecting=sum(1 for record in series if record.status == "collecting"),
        series_complete=sum(1 for record in series if record.status == "complete"),
        series_reconstructed=sum(1 for record in series if record.tilt_series_id in newest),
        tilts=len(tilts),
        excluded_tilts=sum(1 for one in tilts if one.excluded or one.movie_id in left_out),
        late_tilts=len(late),
        late_tilt_movies=sorted(late),
    )


def _newest_bfactor(points: Sequence[Row]) -> float | None:
    """B (Å²) fitted to the newest processing job's series; None without two particle counts."""
    if not points:
        return None
    newest = max(p.processing_job_id for p in points)
    series = [BFactorPoint(number_of_particles=p.number_of_particles, resolution_a=p.resolution_a)
              for p in points if p.processing_job_id == newest]
    if len({p.number_of_particles for p in series}) < 2:
        return None
    fitted = fit_bfactor(series).bfactor_a2
    return fitted if math.isfinite(fitted) else None


def _rows_of_session(connection: Connection, table: Table, session_id: int) -> Sequence[Row]:
    return connection.execute(select(table).join(schema.processing_job)
                              .where(schema.processing_job.c.session_id == session_id)).all()


def newest_per_movie(connection: Connection, table: Table, session_id: int, *columns: str) -> list[Row]:
    """One row per movie: the one written by the newest processing job, with only the named value columns
    (a session may have 10,000 movies: reading every column of every row tripled the time)."""
    newest: dict[int, Row] = {}
    rows = connection.execute(select(table.c.movie_id, table.c.processing_job_id, *(table.c[name] for name in columns))
                              .join(schema.processing_job)
                              .where(schema.processing_job.c.session_id == session_id)).all()
    for row in rows:
        kept = newest.get(row.movie_id)
        if kept is None or row.processing_job_id > kept.processing_job_id:
            newest[row.movie_id] = row
    return list(newest.values())


def _failures(connection: Connection, session_id: int, jobs: Iterable[Row]) -> list[FailureRecord]:
    failure, movie, job = schema.processing_failure, schema.movie, schema.processing_job
    rows = connection.execute(
        select(failure.c.stage, movie.c.movie_full_path, failure.c.reason, job.c.processing_job_id, job.c.reprocess)
        .join(movie, failure.c.movie_id == movie.c.movie_id).join(job)
        .where(job.c.session_id == session_id)
        .order_by(job.c.processing_job_id, movie.c.movie_full_path)).all()
    records = [FailureRecord(stage=r.stage, movie=r.movie_full_path, reason=r.reason,
                             processing_job_id=r.processing_job_id, reprocess=r.reprocess) for r in rows]
    records += [FailureRecord(stage=j.stage, movie=None, reason=j.processing_message or "failed",
                              processing_job_id=j.processing_job_id, reprocess=j.reprocess)
                for j in sorted(jobs, key=lambda j: j.processing_job_id) if j.processing_status == "failed"]
    return records


def _by_column(rows: Sequence[Row], names: Sequence[str]) -> dict[str, list[Any]]:
    return {name: [row._mapping[name] for row in rows] for name in names}


def _median(values: Iterable[float]) -> float | None:
    known = [float(value) for value in values]
    return statistics.median(known) if known else None
