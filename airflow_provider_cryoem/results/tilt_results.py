"""What the per-tilt stages left for each movie of a session: the inputs of tilt-series alignment.

A tilt series gathers tilts processed by many DAG runs, so its inputs are read back from the results
store rather than passed along: per movie the newest motion correction and CTF of the live jobs (or of
one reprocess job), and whether a stage failed on it.
"""
from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import Connection, Row, Table, select

from . import schema


class TiltMovieResult(BaseModel):
    """One movie's per-tilt results; `failed_stage` is set when a stage gave up on it."""

    movie_id: int
    relative_path: str
    micrograph: str | None = None
    frame_count: int | None = None
    total_motion_a: float | None = None
    early_motion_a: float | None = None
    late_motion_a: float | None = None
    defocus_u_a: float | None = None
    defocus_v_a: float | None = None
    astigmatism_angle_deg: float | None = None
    ctf_fit_resolution_a: float | None = None
    ctf_figure_of_merit: float | None = None
    ctf_image: str | None = None
    failed_stage: str | None = None
    failure_reason: str | None = None

    @property
    def processed(self) -> bool:
        """Motion correction and CTF are done, or a stage failed on it: nothing more will come."""
        return self.failed_stage is not None or (self.micrograph is not None and self.defocus_u_a is not None)


def tilt_movie_results(connection: Connection, session_id: int,
                       processing_job_id: int | None = None) -> dict[str, TiltMovieResult]:
    """Per movie path of the session: its results from the live jobs, or from `processing_job_id` only."""
    job = schema.processing_job
    jobs = select(job.c.processing_job_id).where(job.c.session_id == session_id)
    jobs = jobs.where(job.c.processing_job_id == processing_job_id) if processing_job_id is not None \
        else jobs.where(job.c.reprocess.is_(False))
    job_ids = set(connection.execute(jobs).scalars())
    movies = {row.movie_id: TiltMovieResult(movie_id=row.movie_id, relative_path=row.movie_full_path)
              for row in connection.execute(select(schema.movie).where(schema.movie.c.session_id == session_id))}
    for row in _newest(connection, schema.motion_correction, job_ids):
        if row.movie_id in movies:
            movies[row.movie_id] = movies[row.movie_id].model_copy(update={
                "micrograph": row.micrograph_full_path, "frame_count": row.last_frame - row.first_frame + 1,
                "total_motion_a": row.total_motion_a, "early_motion_a": row.early_motion_a,
                "late_motion_a": row.late_motion_a})
    for row in _newest(connection, schema.ctf, job_ids):
        if row.movie_id in movies:
            movies[row.movie_id] = movies[row.movie_id].model_copy(update={
                "defocus_u_a": row.defocus_u_a, "defocus_v_a": row.defocus_v_a,
                "astigmatism_angle_deg": row.astigmatism_angle_deg,
                "ctf_fit_resolution_a": row.estimated_resolution_a, "ctf_figure_of_merit": row.cc_value,
                "ctf_image": row.fft_theoretical_full_path})
    failure = schema.processing_failure
    for row in connection.execute(select(failure).where(failure.c.processing_job_id.in_(job_ids))
                                  .order_by(failure.c.processing_failure_id)):
        if row.movie_id in movies:
            movies[row.movie_id] = movies[row.movie_id].model_copy(update={
                "failed_stage": row.stage, "failure_reason": row.reason})
    return {movie.relative_path: movie for movie in movies.values()}


def _newest(connection: Connection, table: Table, job_ids: set[int]) -> list[Row]:
    """One row per movie among `job_ids`: the newest job's."""
    newest: dict[int, Row] = {}
    for row in connection.execute(select(table).where(table.c.processing_job_id.in_(job_ids))
                                  .order_by(table.c.processing_job_id)):
        newest[row.movie_id] = row
    return list(newest.values())
