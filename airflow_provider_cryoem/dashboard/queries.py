"""Read-only aggregations over the results store, for the dashboard's JSON API.

Counting, grouping, sorting and paging happen in SQL; plot series are downsampled and histograms binned
on the server, so what reaches a browser stays small however long the session. Per-movie values follow
the session summary's rule (results/summary.py): where several jobs wrote a result for a movie (the live
run, then a reprocess run), the newest job's row counts.

Every function takes an open connection (see ResultsStore.read) and the DAG ids the caller may read;
a session belongs to the DAGs whose runs wrote its processing jobs (recipe name = DAG id).
"""
from __future__ import annotations

import functools
import json
import math
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import compress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel
from sqlalchemy import Connection, Float, Row, Table, and_, case, distinct, func, literal, select

from ..config import ConfigError, check_under_roots
from ..engines.bfactor import BFactorPoint, fit_bfactor
from ..io import ImageFileError, read_star
from ..pipeline.session import relion_project_dir
from ..results import schema
from ..results.errors import ResultsNotFoundError
from ..results.migrations import current_version
from ..results.summary import (
    CTF,
    ICE_THICKNESS,
    MOTION_CORRECTION,
    PARTICLE_PICKING,
    SUMMARY_COLUMNS,
    PerMovieColumns,
    SessionSummary,
    build_summary,
    tilt_series_records,
)
from .images import MOVIE_IMAGE_KINDS, PROCESSED_TOMOGRAM_IMAGE_KINDS, TOMOGRAM_IMAGE_KINDS

MAX_POINTS = 2000  # per plotted series, after downsampling
HISTOGRAM_BINS = 30
PER_MOVIE_TABLES: dict[str, Table] = {MOTION_CORRECTION: schema.motion_correction, CTF: schema.ctf,
                                      PARTICLE_PICKING: schema.particle_picker,
                                      ICE_THICKNESS: schema.relative_ice_thickness}


class Metric(BaseModel):
    key: str
    label: str
    unit: str  # "" for a plain number
    decimals: int  # how the pages show it


# What the session page plots against acquisition time, and histograms.
METRICS = [
    Metric(key="total_motion_a", label="Total motion", unit="Å", decimals=2),
    Metric(key="defocus_u_a", label="Defocus U", unit="Å", decimals=0),
    Metric(key="defocus_v_a", label="Defocus V", unit="Å", decimals=0),
    Metric(key="astigmatism_a", label="Astigmatism", unit="Å", decimals=0),
    Metric(key="ctf_resolution_a", label="CTF fit resolution", unit="Å", decimals=2),
    Metric(key="ice_thickness", label="Relative ice thickness", unit="", decimals=3),
    Metric(key="particles", label="Particles per micrograph", unit="", decimals=0),
]
# metric key -> (per-movie stage, column of its table)
METRIC_SOURCES: dict[str, tuple[str, str]] = {
    "total_motion_a": (MOTION_CORRECTION, "total_motion_a"), "defocus_u_a": (CTF, "defocus_u_a"),
    "defocus_v_a": (CTF, "defocus_v_a"), "astigmatism_a": (CTF, "astigmatism_a"),
    "ctf_resolution_a": (CTF, "estimated_resolution_a"), "ice_thickness": (ICE_THICKNESS, "median"),
    "particles": (PARTICLE_PICKING, "number_of_particles"),
}
# The movie table's sort keys (also every metric).
SORT_KEYS = ("movie_number", "acquired", "status", *(metric.key for metric in METRICS))


class RunRef(BaseModel):
    """A DAG run that wrote the session's results (its processing job's recipe is the DAG id)."""

    dag_id: str
    run_id: str
    reprocess: bool
    status: str  # the run's processing job: running | success | failed


class SessionRow(BaseModel):
    """One line of the sessions page."""

    session_id: int
    name: str
    experiment: Literal["spa", "tomography"]
    state: Literal["live", "ended", "reprocessing", "reprocessed"]
    recipes: list[str]
    image_directory: str
    started: datetime
    ended: datetime | None
    end_reason: str | None
    files_claimed: int
    movies: int
    processed: dict[str, int]  # per-movie stage -> movies with a result
    failed: int  # movies marked failed (any stage)
    tilt_series: int
    last_activity: datetime
    latest_run: RunRef | None


class SessionPage(BaseModel):
    total: int
    offset: int
    limit: int
    sessions: list[SessionRow]


class MovieRow(BaseModel):
    """One movie of the session with its newest per-stage values and the ids of its images."""

    movie_id: int
    movie_number: int
    movie: str
    acquired: datetime
    status: str
    failure_reason: str | None
    total_motion_a: float | None
    defocus_u_a: float | None
    defocus_v_a: float | None
    astigmatism_a: float | None
    ctf_resolution_a: float | None
    ice_thickness: float | None
    particles: int | None
    images: dict[str, int]  # image kind -> row id for /api/images/{kind}/{row_id}


class MoviePage(BaseModel):
    total: int
    offset: int
    limit: int
    sort: str
    order: Literal["asc", "desc"]
    status: Literal["all", "failed"]
    movies: list[MovieRow]


class Series(BaseModel):
    """A metric against acquisition time (Unix seconds); min/max-downsampled when longer than MAX_POINTS."""

    t: list[float]
    v: list[float]
    count: int  # values before downsampling
    downsampled: bool


class Histogram(BaseModel):
    edges: list[float]  # bins + 1 edges
    counts: list[int]


class TiltResidual(BaseModel):
    tilt_angle_deg: float | None  # refined, else nominal
    residual_error_px: float | None
    excluded: bool


class TomogramView(BaseModel):
    tomogram_id: int
    pixel_size_a: float
    tilt_axis_deg: float | None
    residual_error_mean_px: float | None
    residual_error_sd_px: float | None
    images: dict[str, int]
    residuals: list[TiltResidual]


class TiltSeriesView(BaseModel):
    tilt_series_id: int
    name: str
    status: str
    completed_reason: str | None
    expected_tilts: int | None
    tilts: int
    excluded_tilts: int
    late_tilts: int
    tomogram: TomogramView | None  # the newest job's


class Limit(BaseModel):
    """A metric's quality limits from the session's settings; None: no limit on that side."""

    low: float | None
    high: float | None
    settings: list[str]  # the session settings they come from (config.QUALITY_LIMIT_FIELDS)


class ClassView(BaseModel):
    class_number: int
    particles: int
    distribution: float
    resolution_a: float | None
    selected: bool
    score: float | None  # automatic selection's score (2D), when recorded
    image_id: int | None  # for /api/images/class2d|class3d/{image_id}, when an image is recorded


class ClassBatch(BaseModel):
    """One 2D or 3D classification batch with its classes (and, in 3D, its initial model)."""

    group_id: int
    type: Literal["2D", "3D"]
    batch_number: int
    particles: int
    classes_per_batch: int
    symmetry: str
    run_id: str
    reprocess: bool
    finished: datetime | None
    initial_model_resolution_a: float | None
    initial_model_particles: int | None
    classes: list[ClassView]  # most particles first


class FscCurve(BaseModel):
    """Relion post-processing's FSC (postprocess.star, data_fsc) against spatial frequency (1/Å)."""

    frequency_inv_a: list[float]
    corrected: list[float]  # rlnFourierShellCorrelationCorrected: the one the resolution is read from
    unmasked: list[float] | None
    masked: list[float] | None


class RefinementView(BaseModel):
    refinement_id: int
    run_id: str
    reprocess: bool
    symmetry: str
    class_number: int | None
    resolution_a: float
    bfactor_a2: float | None
    particles: int
    pixel_size_a: float | None
    fsc: FscCurve | None
    fsc_problem: str | None  # why there is no curve (file missing, outside the data roots, malformed)


class BFactorView(BaseModel):
    """The newest B-factor series (Rosenthal-Henderson): 1/d² against ln N and its straight-line fit."""

    run_id: str
    particles: list[int]
    resolution_a: list[float]
    bfactor_a2: float | None  # None: fewer than two particle counts, or a slope that is not positive
    slope_per_a2: float | None
    intercept_per_a2: float | None


class SessionDetail(BaseModel):
    session: SessionRow
    summary: SessionSummary  # failures: whole-job failures only; movie failures are in the movie table
    metrics: list[Metric]
    series: dict[str, Series]
    histograms: dict[str, Histogram]
    movies: MoviePage
    newest_movie: MovieRow | None  # the newest movie with an image
    tilt_series: list[TiltSeriesView]
    limits: dict[str, Limit]  # metric key -> the session's quality limits (metrics that have one)
    beyond_limits: dict[str, int]  # metric key -> movies whose value lies outside its limits
    classes_2d: list[ClassBatch]
    classes_3d: list[ClassBatch]
    refinements: list[RefinementView]
    bfactor: BFactorView | None


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes; the store writes UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def has_tables(connection: Connection) -> bool:
    return current_version(connection) > 0


def dag_ids(connection: Connection) -> set[str]:
    """Every DAG id that ever wrote to the results store (recipes of its processing jobs)."""
    return set(connection.execute(select(schema.processing_job.c.recipe).distinct()).scalars())


def session_dag_ids(connection: Connection, session_id: int) -> set[str]:
    """The DAG ids whose runs wrote the session's jobs; ResultsNotFoundError if there is no such session."""
    exists = connection.execute(select(schema.session.c.session_id)
                                .where(schema.session.c.session_id == session_id)).first()
    if exists is None:
        raise ResultsNotFoundError(f"no session {session_id} in the results database")
    job = schema.processing_job
    return set(connection.execute(select(job.c.recipe).distinct().where(job.c.session_id == session_id)).scalars())


def _readable(readable_dag_ids: Collection[str]):
    job = schema.processing_job
    return schema.session.c.session_id.in_(select(job.c.session_id).where(job.c.recipe.in_(list(readable_dag_ids))))


def list_sessions(connection: Connection, readable_dag_ids: Collection[str], offset: int, limit: int) -> SessionPage:
    """The sessions of the readable DAGs, newest first, one page of them with their counts."""
    table = schema.session
    where = _readable(readable_dag_ids)
    total = connection.execute(select(func.count()).select_from(table).where(where)).scalar_one()
    ids = list(connection.execute(select(table.c.session_id).where(where)
                                  .order_by(table.c.created.desc(), table.c.session_id.desc())
                                  .offset(offset).limit(limit)).scalars())
    return SessionPage(total=total, offset=offset, limit=limit, sessions=session_rows(connection, ids))


def _per_session(connection: Connection, statement: Any) -> dict[int, Row]:
    return {row[0]: row for row in connection.execute(statement)}


def session_rows(connection: Connection, session_ids: Sequence[int]) -> list[SessionRow]:
    """The sessions' lines, in the given order: a fixed number of grouped queries, whatever the count."""
    if not session_ids:
        return []
    session, movie, job, claim = schema.session, schema.movie, schema.processing_job, schema.session_file
    listed = [column for column in session.c  # readable before migrations 6 and 8
              if column.name not in ("quality_limits", "stop_requested_at", "stop_requested_by")]
    sessions = _per_session(connection, select(session.c.session_id, *listed).where(session.c.session_id.in_(session_ids)))
    claims = _per_session(connection, select(claim.c.session_id, func.count(), func.max(claim.c.claimed_at))
                          .where(claim.c.session_id.in_(session_ids)).group_by(claim.c.session_id))
    movies = _per_session(connection, select(
        movie.c.session_id, func.count(), func.coalesce(func.sum(case((movie.c.status == "failed", 1), else_=0)), 0),
        func.max(movie.c.created_time_stamp)).where(movie.c.session_id.in_(session_ids)).group_by(movie.c.session_id))
    processed = {stage: _per_session(connection, select(job.c.session_id, func.count(distinct(table.c.movie_id)))
                                     .select_from(table.join(job)).where(job.c.session_id.in_(session_ids))
                                     .group_by(job.c.session_id))
                 for stage, table in PER_MOVIE_TABLES.items()}
    series = _per_session(connection, select(schema.tilt_series.c.session_id, func.count())
                          .where(schema.tilt_series.c.session_id.in_(session_ids))
                          .group_by(schema.tilt_series.c.session_id))
    jobs: dict[int, list[Row]] = {}
    for row in connection.execute(select(job).where(job.c.session_id.in_(session_ids))
                                  .order_by(job.c.processing_job_id)):
        jobs.setdefault(row.session_id, []).append(row)

    rows = []
    for session_id in session_ids:
        if session_id not in sessions:
            continue
        row, own_jobs = sessions[session_id], jobs.get(session_id, [])
        latest = own_jobs[-1] if own_jobs else None
        moments = [row.created, claims[session_id][2] if session_id in claims else None,
                   movies[session_id][3] if session_id in movies else None,
                   *(one.processing_start_time for one in own_jobs), *(one.processing_end_time for one in own_jobs)]
        rows.append(SessionRow(
            session_id=session_id, name=row.name,
            experiment="tomography" if series.get(session_id) else "spa",
            state=_state(row.end_time, latest),
            recipes=sorted({one.recipe for one in own_jobs}),
            image_directory=row.image_directory, started=_utc(row.created), ended=_utc(row.end_time),
            end_reason=row.end_reason,
            files_claimed=claims[session_id][1] if session_id in claims else 0,
            movies=movies[session_id][1] if session_id in movies else 0,
            failed=int(movies[session_id][2]) if session_id in movies else 0,
            processed={stage: counts[session_id][1] if session_id in counts else 0
                       for stage, counts in processed.items()},
            tilt_series=series[session_id][1] if session_id in series else 0,
            last_activity=max(_utc(moment) for moment in moments if moment is not None),
            latest_run=None if latest is None else RunRef(dag_id=latest.recipe, run_id=latest.run_id,
                                                          reprocess=latest.reprocess,
                                                          status=latest.processing_status)))
    return rows


def _state(end_time: datetime | None, latest_job: Row | None) -> str:
    if latest_job is not None and latest_job.reprocess:
        return "reprocessing" if latest_job.processing_status == "running" else "reprocessed"
    return "ended" if end_time is not None else "live"


# --- movies ---------------------------------------------------------------------------------------------

def _newest_of_movie(table: Table, movie: Table) -> tuple[Any, Any]:
    """`table` aliased, and the join condition that keeps, for each movie, the newest job's row.

    A correlated max over the table's movie_id index: a grouped subquery joined back instead makes
    SQLite compare every movie with every row (minutes at 10,000 movies).
    """
    rows, newer = table.alias(table.name), table.alias(f"{table.name}_newer")
    newest_job = (select(func.max(newer.c.processing_job_id)).where(newer.c.movie_id == movie.c.movie_id)
                  .scalar_subquery())
    return rows, and_(rows.c.movie_id == movie.c.movie_id, rows.c.processing_job_id == newest_job)


def _movie_columns() -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Column expressions of MovieRow (image ids as `image_<kind>`), the FROM clause that joins them, and
    each per-movie stage's aliased table in it (the newest job's row per movie).

    A movie's results all come from jobs of its own session, so the join needs no session filter.
    """
    movie = schema.movie
    joined, newest = movie, {}
    for name, table in PER_MOVIE_TABLES.items():
        newest[name], condition = _newest_of_movie(table, movie)
        joined = joined.outerjoin(newest[name], condition)
    columns: dict[str, Any] = {
        "movie_id": movie.c.movie_id, "movie_number": movie.c.movie_number, "movie": movie.c.movie_full_path,
        "acquired": movie.c.created_time_stamp, "status": movie.c.status, "failure_reason": movie.c.failure_reason,
        **{key: newest[stage].c[column] for key, (stage, column) in METRIC_SOURCES.items()},
    }
    for kind, image in MOVIE_IMAGE_KINDS.items():
        rows = newest[image.stage]
        columns[f"image_{kind}"] = case((rows.c[image.column].is_not(None), rows.c[image.id_column]))
    return columns, joined, newest


def _movie_row(row: Row) -> MovieRow:
    values = dict(row._mapping)
    images = {kind: values.pop(f"image_{kind}") for kind in MOVIE_IMAGE_KINDS}
    values["acquired"] = _utc(values["acquired"])
    return MovieRow(images={kind: row_id for kind, row_id in images.items() if row_id is not None}, **values)


def movie_page(connection: Connection, session_id: int, offset: int = 0, limit: int = 50,
               sort: str = "movie_number", order: Literal["asc", "desc"] = "desc",
               status: Literal["all", "failed"] = "all") -> MoviePage:
    """One page of the session's movies sorted in SQL (missing values last, ties by movie number)."""
    if sort not in SORT_KEYS:
        raise ValueError(f"sort: {sort!r} is not one of {', '.join(SORT_KEYS)}")
    columns, joined, _ = _movie_columns()
    movie = schema.movie
    where = [movie.c.session_id == session_id]
    if status == "failed":
        where.append(movie.c.status == "failed")
    total = connection.execute(select(func.count()).select_from(movie).where(*where)).scalar_one()
    key = columns[sort]
    ordered = (key.asc() if order == "asc" else key.desc()).nulls_last()
    tie = movie.c.movie_number.asc() if order == "asc" else movie.c.movie_number.desc()
    rows = connection.execute(select(*(column.label(name) for name, column in columns.items()))
                              .select_from(joined).where(*where).order_by(ordered, tie)
                              .offset(offset).limit(limit)).all()
    return MoviePage(total=total, offset=offset, limit=limit, sort=sort, order=order, status=status,
                     movies=[_movie_row(row) for row in rows])


@dataclass(frozen=True)
class _PerMovie:
    """What one read of every movie's newest per-stage values gives the session page: the summary's
    columns, the plot arrays (acquisition order, NaN where missing) and the newest movie with an image."""

    summary_columns: PerMovieColumns  # build_summary's per_movie
    times: np.ndarray  # acquisition, Unix s
    values: dict[str, np.ndarray]  # metric key -> value per movie
    newest_with_image: int | None  # movie id


def _per_movie(connection: Connection, session_id: int) -> _PerMovie:
    """One query, one row per movie with its newest values (the movie table's), serves both the plots and
    the summary; each read every movie's rows on its own before (~0.5 s apiece at 10,000 movies)."""
    columns, joined, newest = _movie_columns()
    wanted = {"movie_id": columns["movie_id"], "acquired": columns["acquired"],
              **{metric.key: columns[metric.key] for metric in METRICS},
              **{f"image_{kind}": columns[f"image_{kind}"] for kind in MOVIE_IMAGE_KINDS},
              **{f"row_{stage}": next(iter(rows.primary_key)) for stage, rows in newest.items()}}
    movie = schema.movie
    rows = connection.execute(select(*(column.label(name) for name, column in wanted.items()))
                              .select_from(joined).where(movie.c.session_id == session_id)
                              .order_by(movie.c.created_time_stamp, movie.c.movie_number)).all()
    by_name = dict(zip(wanted, zip(*rows))) if rows else {name: () for name in wanted}
    times = np.array([_utc(moment).timestamp() for moment in by_name["acquired"]], dtype=float)
    values = {metric.key: np.array(by_name[metric.key], dtype=float) for metric in METRICS}  # None -> NaN
    metric_of = {source: key for key, source in METRIC_SOURCES.items()}
    summary_columns = {}
    for stage, (_, summary_names) in SUMMARY_COLUMNS.items():
        present = [row_id is not None for row_id in by_name[f"row_{stage}"]]
        summary_columns[stage] = {"movie_id": list(compress(by_name["movie_id"], present)),
                                  **{name: list(compress(by_name[metric_of[stage, name]], present))
                                     for name in summary_names}}
    with_image = np.zeros(len(rows), dtype=bool)
    for kind in MOVIE_IMAGE_KINDS:
        with_image |= np.array([row_id is not None for row_id in by_name[f"image_{kind}"]], dtype=bool)
    newest_index = np.flatnonzero(with_image)
    return _PerMovie(summary_columns=summary_columns, times=times, values=values,
                     newest_with_image=by_name["movie_id"][newest_index[-1]] if len(newest_index) else None)


def _movie_row_of(connection: Connection, movie_id: int) -> MovieRow:
    columns, joined, _ = _movie_columns()
    return _movie_row(connection.execute(select(*(column.label(name) for name, column in columns.items()))
                                         .select_from(joined).where(schema.movie.c.movie_id == movie_id)).one())


# A poll that finds nothing new reuses the last pass over the per-movie rows. The marker: the session's
# creation time, per per-movie table the count and highest id of the session's rows, and the movies' count,
# highest id and failures. A retry
# rewriting a row in place (same job and movie) moves none of these, so an entry is also renewed after
# PER_MOVIE_CACHE_S whatever the marker says.
PER_MOVIE_CACHE_S = 30.0
PER_MOVIE_CACHE_SESSIONS = 8
_per_movie_cache: dict[tuple[str, int], tuple[tuple, float, _PerMovie]] = {}
_per_movie_lock = threading.Lock()


def _change_marker(connection: Connection, session_id: int) -> tuple:
    job, movie, session = schema.processing_job, schema.movie, schema.session
    marker: list[Any] = [connection.execute(select(session.c.created).where(session.c.session_id == session_id))
                         .scalar_one_or_none()]  # a database made anew reuses the ids
    marker += list(connection.execute(
        select(func.count(), func.max(movie.c.movie_id), func.sum(case((movie.c.status == "failed", 1), else_=0)))
        .where(movie.c.session_id == session_id)).one())
    for table, _ in SUMMARY_COLUMNS.values():
        primary_key = next(iter(table.primary_key.columns))
        marker += connection.execute(select(func.count(), func.max(primary_key)).select_from(table.join(job))
                                     .where(job.c.session_id == session_id)).one()
    return tuple(marker)


def _cached_per_movie(connection: Connection, session_id: int) -> _PerMovie:
    """_per_movie, reused while the session's change marker stays the same (and for PER_MOVIE_CACHE_S at most)."""
    key, marker, now = (connection.engine.url.render_as_string(), session_id), _change_marker(connection, session_id), time.monotonic()
    with _per_movie_lock:
        found = _per_movie_cache.get(key)
    if found is not None and found[0] == marker and now - found[1] < PER_MOVIE_CACHE_S:
        return found[2]
    fresh = _per_movie(connection, session_id)
    with _per_movie_lock:
        _per_movie_cache.pop(key, None)
        _per_movie_cache[key] = (marker, now, fresh)
        while len(_per_movie_cache) > PER_MOVIE_CACHE_SESSIONS:
            del _per_movie_cache[next(iter(_per_movie_cache))]  # the least recently computed
    return fresh


# --- plots ----------------------------------------------------------------------------------------------

def downsample(t: np.ndarray, v: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` points: the lowest and highest value of each of max_points/2 consecutive
    buckets, in time order, so spikes and the envelope survive (plain striding would drop outliers)."""
    if len(v) <= max_points:
        return t, v
    edges = np.linspace(0, len(v), max_points // 2 + 1).astype(int)
    bucket = np.repeat(np.arange(len(edges) - 1), np.diff(edges))
    by_value = np.lexsort((v, bucket))  # each bucket's values in order, buckets in order (no Python loop)
    keep = np.unique(np.concatenate([by_value[edges[:-1]], by_value[edges[1:] - 1]]))
    return t[keep], v[keep]


def histogram(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> Histogram:
    if len(values) == 0:
        return Histogram(edges=[], counts=[])
    counts, edges = np.histogram(values, bins=bins)
    return Histogram(edges=[float(edge) for edge in edges], counts=[int(count) for count in counts])


def plots(times: np.ndarray, values: dict[str, np.ndarray]) -> tuple[dict[str, Series], dict[str, Histogram]]:
    """Each metric's series against acquisition time and its histogram over every value (NaN: none)."""
    series, histograms = {}, {}
    for metric in METRICS:
        present = ~np.isnan(values[metric.key])
        known = values[metric.key][present]
        t, v = downsample(times[present], known)
        series[metric.key] = Series(t=np.round(t, 3).tolist(), v=v.tolist(), count=len(known),
                                    downsampled=len(v) < len(known))
        histograms[metric.key] = histogram(known)
    return series, histograms


# --- tomography -----------------------------------------------------------------------------------------

def tilt_series_views(connection: Connection, session_id: int) -> list[TiltSeriesView]:
    """The session's tilt series with tilt counts and their newest tomogram's residuals and images."""
    records = tilt_series_records(connection, session_id)
    if not records:
        return []
    tomogram, alignment, tilt = schema.tomogram, schema.tilt_image_alignment, schema.tilt
    newest: dict[int, Row] = {}
    for row in connection.execute(select(tomogram).where(tomogram.c.tilt_series_id.in_(
            [record.tilt_series_id for record in records])).order_by(tomogram.c.processing_job_id)):
        newest[row.tilt_series_id] = row
    residuals: dict[int, list[TiltResidual]] = {}
    processed: dict[int, dict[str, int]] = {}  # tomogram id -> image kind -> processed_tomogram id
    if newest and current_version(connection) >= PROCESSED_TOMOGRAMS_VERSION:
        table = schema.processed_tomogram
        for row in connection.execute(select(table).where(
                table.c.tomogram_id.in_([row.tomogram_id for row in newest.values()]))):
            for kind, (processing_type, column) in PROCESSED_TOMOGRAM_IMAGE_KINDS.items():
                if row.processing_type == processing_type and row._mapping[column] is not None:
                    processed.setdefault(row.tomogram_id, {})[kind] = row.processed_tomogram_id
    if newest:
        for row in connection.execute(
                select(alignment.c.tomogram_id, alignment.c.refined_tilt_angle_deg, alignment.c.residual_error_px,
                       alignment.c.excluded, tilt.c.tilt_angle_deg)
                .join(tilt, tilt.c.movie_id == alignment.c.movie_id)
                .where(alignment.c.tomogram_id.in_([row.tomogram_id for row in newest.values()]))
                .order_by(tilt.c.tilt_angle_deg)):
            residuals.setdefault(row.tomogram_id, []).append(TiltResidual(
                tilt_angle_deg=row.refined_tilt_angle_deg if row.refined_tilt_angle_deg is not None
                else row.tilt_angle_deg, residual_error_px=row.residual_error_px, excluded=row.excluded))
    views = []
    for record in records:
        row = newest.get(record.tilt_series_id)
        view = None if row is None else TomogramView(
            tomogram_id=row.tomogram_id, pixel_size_a=row.pixel_size_a, tilt_axis_deg=row.tilt_axis_deg,
            residual_error_mean_px=row.residual_error_mean_px, residual_error_sd_px=row.residual_error_sd_px,
            images={**{kind: row.tomogram_id for kind, column in TOMOGRAM_IMAGE_KINDS.items()
                       if row._mapping[column] is not None}, **processed.get(row.tomogram_id, {})},
            residuals=residuals.get(row.tomogram_id, []))
        views.append(TiltSeriesView(
            tilt_series_id=record.tilt_series_id, name=record.name, status=record.status,
            completed_reason=record.completed_reason, expected_tilts=record.expected_tilts,
            tilts=len(record.tilts), excluded_tilts=sum(1 for one in record.tilts if one.excluded),
            late_tilts=sum(1 for one in record.tilts if one.late), tomogram=view))
    return views


# --- quality limits -------------------------------------------------------------------------------------

# metric key -> (session setting of its lower limit, of its upper limit); config.QUALITY_LIMIT_FIELDS
LIMIT_SETTINGS: dict[str, tuple[str | None, str | None]] = {
    "total_motion_a": (None, "max_total_motion_a"),
    "defocus_u_a": ("min_defocus_a", "max_defocus_a"),
    "defocus_v_a": ("min_defocus_a", "max_defocus_a"),
    "astigmatism_a": (None, "max_astigmatism_a"),
    "ctf_resolution_a": (None, "max_ctf_fit_resolution_a"),
    "ice_thickness": ("min_relative_ice_thickness", "max_relative_ice_thickness"),
    "particles": ("min_particles_per_micrograph", None),
}
DASHBOARD_COLUMNS_VERSION = 6  # results migration that added session.quality_limits and selection_score
PROCESSED_TOMOGRAMS_VERSION = 7  # ... that added processed_tomogram (denoised, segmented)
STOP_REQUEST_VERSION = 8  # ... that added session.stop_requested_at/by


def session_limits(connection: Connection, session_id: int) -> dict[str, Limit]:
    """The limits the session's newest run recorded, per metric; none for a session from before them.
    A lower limit of 0 or less excludes nothing (every metric here is positive) and is left out."""
    if current_version(connection) < DASHBOARD_COLUMNS_VERSION:
        return {}
    recorded = connection.execute(select(schema.session.c.quality_limits)
                                  .where(schema.session.c.session_id == session_id)).scalar_one_or_none()
    try:
        settings = json.loads(recorded) if recorded else {}
    except ValueError:
        settings = {}
    if not isinstance(settings, dict):
        return {}

    def value(name: str | None, lower: bool) -> float | None:
        found = settings.get(name) if name else None
        if not isinstance(found, (int, float)) or not math.isfinite(found) or (lower and found <= 0):
            return None
        return float(found)

    limits = {}
    for key, (low_name, high_name) in LIMIT_SETTINGS.items():
        low, high = value(low_name, True), value(high_name, False)
        if low is not None or high is not None:
            limits[key] = Limit(low=low, high=high, settings=[name for name, bound in ((low_name, low), (high_name, high))
                                                              if bound is not None])
    return limits


def beyond_limits(values: dict[str, np.ndarray], limits: dict[str, Limit]) -> dict[str, int]:
    """Per metric with limits: how many movies' values lie outside them (missing values are not counted)."""
    counts = {}
    for key, limit in limits.items():
        known = values[key][~np.isnan(values[key])]
        outside = np.zeros(known.shape, dtype=bool)
        if limit.low is not None:
            outside |= known < limit.low
        if limit.high is not None:
            outside |= known > limit.high
        counts[key] = int(outside.sum())
    return counts


# --- classification and 3D ------------------------------------------------------------------------------

def class_batches(connection: Connection, session_id: int, kind: Literal["2D", "3D"]) -> list[ClassBatch]:
    """The session's 2D or 3D classification batches, newest job first, each with its classes."""
    group, classes, job = schema.particle_classification_group, schema.particle_classification, schema.processing_job
    initial = schema.cryoem_initial_model
    groups = connection.execute(
        select(group, job.c.run_id, job.c.reprocess, job.c.processing_end_time,
               initial.c.resolution_a.label("initial_resolution_a"),
               initial.c.number_of_particles.label("initial_particles"))
        .select_from(group.join(job).outerjoin(initial))
        .where(job.c.session_id == session_id, group.c.type == kind)
        .order_by(group.c.processing_job_id.desc(), group.c.batch_number.desc())).all()
    if not groups:
        return []
    score = (classes.c.selection_score if current_version(connection) >= DASHBOARD_COLUMNS_VERSION
             else literal(None, Float))
    by_group: dict[int, list[ClassView]] = {}
    for row in connection.execute(
            select(classes.c.particle_classification_group_id, classes.c.particle_classification_id,
                   classes.c.class_number, classes.c.particles_per_class, classes.c.class_distribution,
                   classes.c.estimated_resolution_a, classes.c.selected, classes.c.class_image_full_path,
                   score.label("score"))
            .where(classes.c.particle_classification_group_id.in_([one.particle_classification_group_id
                                                                   for one in groups]))
            .order_by(classes.c.particles_per_class.desc(), classes.c.class_number)):
        by_group.setdefault(row.particle_classification_group_id, []).append(ClassView(
            class_number=row.class_number, particles=row.particles_per_class, distribution=row.class_distribution,
            resolution_a=row.estimated_resolution_a, selected=row.selected, score=row.score,
            image_id=row.particle_classification_id if row.class_image_full_path else None))
    return [ClassBatch(
        group_id=row.particle_classification_group_id, type=kind, batch_number=row.batch_number,
        particles=row.number_of_particles_per_batch, classes_per_batch=row.number_of_classes_per_batch,
        symmetry=row.symmetry, run_id=row.run_id, reprocess=row.reprocess, finished=_utc(row.processing_end_time),
        initial_model_resolution_a=row.initial_resolution_a, initial_model_particles=row.initial_particles,
        classes=by_group.get(row.particle_classification_group_id, [])) for row in groups]


def _fsc_star(processing_directory: str, run_id: str, reprocess: bool, map_path: str | None) -> Path | None:
    """postprocess.star beside the recorded post-processed map (relative paths are in the run's Relion project)."""
    if not map_path:
        return None
    path = Path(map_path)
    if not path.is_absolute():
        path = relion_project_dir(Path(processing_directory), run_id, reprocess) / path
    return path.parent / "postprocess.star"


def fsc_curve(star: Path, roots: list[Path] | None = None) -> FscCurve:
    """The FSC table of a Relion postprocess.star under the data roots; ValueError says why there is none."""
    resolved = check_under_roots(star, "postprocess.star", roots)
    if not resolved.is_file():
        raise ValueError("postprocess.star is not there (any more)")
    return _read_fsc(str(resolved), resolved.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_fsc(path: str, mtime_ns: int) -> FscCurve:
    """Read once per file version: the page polls every few seconds."""
    try:
        table = read_star(path).get("fsc")
    except ImageFileError:
        raise ValueError("postprocess.star is not a readable STAR file") from None
    wanted = ("rlnResolution", "rlnFourierShellCorrelationCorrected")
    if table is None or any(column not in table for column in wanted):
        raise ValueError("postprocess.star has no data_fsc table with rlnResolution and "
                         "rlnFourierShellCorrelationCorrected")

    def column(name: str) -> list[float] | None:
        return [round(float(one), 4) for one in table[name]] if name in table else None

    return FscCurve(frequency_inv_a=column("rlnResolution") or [],
                    corrected=column("rlnFourierShellCorrelationCorrected") or [],
                    unmasked=column("rlnFourierShellCorrelationUnmaskedMaps"),
                    masked=column("rlnFourierShellCorrelationMaskedMaps"))


def refinement_views(connection: Connection, session_id: int) -> list[RefinementView]:
    """The session's refinements, newest first, each with its FSC curve read from Relion's postprocess.star."""
    refinement, job, session = schema.refinement, schema.processing_job, schema.session
    views = []
    for row in connection.execute(
            select(refinement, job.c.run_id, job.c.reprocess, session.c.processing_directory)
            .select_from(refinement.join(job).join(session)).where(job.c.session_id == session_id)
            .order_by(refinement.c.processing_job_id.desc(), refinement.c.refinement_id.desc())):
        star = _fsc_star(row.processing_directory, row.run_id, row.reprocess, row.map_full_path)
        curve, problem = None, "no post-processed map recorded"
        if star is not None:
            try:
                curve, problem = fsc_curve(star), None
            except ConfigError:  # its message names the folders
                problem = "postprocess.star lies outside the data roots"
            except ValueError as exc:
                problem = str(exc)
        views.append(RefinementView(
            refinement_id=row.refinement_id, run_id=row.run_id, reprocess=row.reprocess, symmetry=row.symmetry,
            class_number=row.class_number, resolution_a=row.estimated_resolution_a, bfactor_a2=row.b_factor_a2,
            particles=row.number_of_particles, pixel_size_a=row.pixel_size_a, fsc=curve, fsc_problem=problem))
    return views


def bfactor_view(connection: Connection, session_id: int) -> BFactorView | None:
    """The newest job's B-factor points (as the session summary takes them) and their fit."""
    points, job = schema.bfactor_fit, schema.processing_job
    rows = connection.execute(select(points, job.c.run_id).select_from(points.join(job))
                              .where(job.c.session_id == session_id)
                              .order_by(points.c.processing_job_id.desc(), points.c.number_of_particles)).all()
    if not rows:
        return None
    newest = [row for row in rows if row.processing_job_id == rows[0].processing_job_id]
    view = BFactorView(run_id=newest[0].run_id, particles=[row.number_of_particles for row in newest],
                       resolution_a=[row.resolution_a for row in newest], bfactor_a2=None, slope_per_a2=None,
                       intercept_per_a2=None)
    if len(set(view.particles)) >= 2:
        fit = fit_bfactor([BFactorPoint(number_of_particles=n, resolution_a=d)
                           for n, d in zip(view.particles, view.resolution_a)])
        view.slope_per_a2, view.intercept_per_a2 = fit.slope_per_a2, fit.intercept_per_a2
        view.bfactor_a2 = fit.bfactor_a2 if math.isfinite(fit.bfactor_a2) else None
    return view


# --- one session ----------------------------------------------------------------------------------------

def session_detail(connection: Connection, session_id: int, offset: int = 0, limit: int = 50,
                   sort: str = "movie_number", order: Literal["asc", "desc"] = "desc",
                   status: Literal["all", "failed"] = "all") -> SessionDetail:
    """Everything the session page shows, the movie table cut to one page."""
    rows = session_rows(connection, [session_id])
    if not rows:
        raise ResultsNotFoundError(f"no session {session_id} in the results database")
    per_movie = _cached_per_movie(connection, session_id)
    summary = build_summary(connection, session_id, per_movie.summary_columns)
    summary = summary.model_copy(update={"failures": [one for one in summary.failures if one.movie is None]})
    series, histograms = plots(per_movie.times, per_movie.values)
    limits = session_limits(connection, session_id)
    newest_movie = None if per_movie.newest_with_image is None else _movie_row_of(connection, per_movie.newest_with_image)
    return SessionDetail(
        session=rows[0], summary=summary, metrics=METRICS, series=series, histograms=histograms,
        movies=movie_page(connection, session_id, offset, limit, sort, order, status), newest_movie=newest_movie,
        tilt_series=tilt_series_views(connection, session_id), limits=limits,
        beyond_limits=beyond_limits(per_movie.values, limits), classes_2d=class_batches(connection, session_id, "2D"),
        classes_3d=class_batches(connection, session_id, "3D"), refinements=refinement_views(connection, session_id),
        bfactor=bfactor_view(connection, session_id))
