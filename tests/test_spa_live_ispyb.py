"""spa_live end to end (`airflow dags test`) with the results connection pointing at ISPyB on MariaDB.

The run's own bookkeeping database holds exactly what the default store records for it, so ISPyB's rows are
compared with it row by row: one ISPyB MotionCorrection / CTF / ParticlePicker per good movie, same values.
Then the per-movie tasks run again in the same DAG run (`airflow tasks test`, as a retry does): their rows are
rewritten, none added.
"""
from __future__ import annotations

import json
import subprocess

import pytest
from ispyb.sqlalchemy import CTF, Movie, MotionCorrection, ParticlePicker, ProcessingJob
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.results import schema
from airflow_provider_cryoem.results.ispyb_store import link
from airflow_provider_cryoem.simulate import END_MARKER_NAME, GAIN_REFERENCE_NAME, write_spa_session

from ._mariadb import ispyb_url, mariadb_admin_url, register_data_collection  # noqa: F401 (fixtures)
from .conftest import AIRFLOW
from .test_spa_live_dag import SETTINGS  # the same small session as the default store's DAG test
CONN_ID = "cryoem_ispyb"
RETRIED_TASKS = ("motioncorr", "ctf", "pick")


def _counts(ispyb_url: str, collection: int) -> dict[str, int]:
    """The data collection's rows per ISPyB table the per-movie stages write."""
    engine = create_engine(ispyb_url)
    with engine.connect() as connection:
        counts = {"ProcessingJob": connection.execute(select(func.count()).select_from(ProcessingJob).where(
            ProcessingJob.dataCollectionId == collection)).scalar_one(),
            "Movie": connection.execute(select(func.count()).select_from(Movie).where(
                Movie.dataCollectionId == collection)).scalar_one()}
        motion = MotionCorrection.__table__.alias("motion")
        for model, column in ((MotionCorrection, "motionCorrectionId"), (CTF, "motionCorrectionId"),
                              (ParticlePicker, "firstMotionCorrectionId")):
            table = model.__table__
            counts[table.name] = connection.execute(
                select(func.count()).select_from(table.join(motion, table.c[column] == motion.c.motionCorrectionId))
                .where(motion.c.dataCollectionId == collection)).scalar_one()
    engine.dispose()
    return counts


def _link_times(ispyb_url: str) -> dict[str, object]:
    """When each ISPyB table's newest row was last written through the link table."""
    engine = create_engine(ispyb_url)
    with engine.connect() as connection:
        rows = connection.execute(select(link.c.ispyb_table, func.max(link.c.updated)).group_by(link.c.ispyb_table))
        times = dict(rows.all())
    engine.dispose()
    return times


@pytest.mark.integration
def test_spa_live_writes_its_results_into_ispyb(tmp_path, airflow_env, ispyb_url: str) -> None:
    watch_dir = tmp_path / "session" / "raw"
    truth = write_spa_session(SETTINGS, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    collection = register_data_collection(ispyb_url, str(watch_dir))
    url = make_url(ispyb_url)
    conf = {"session_name": "ispyb", "watch_dir": str(watch_dir), "pixel_size_a": SETTINGS.pixel_size_a,
            "particle_diameter_a": SETTINGS.particle_diameter_a, "dose_per_frame_e_a2": SETTINGS.dose_per_frame_e_a2,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME)}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(tmp_path), "CRYOEM_RESULTS_CONN_ID": CONN_ID,
           f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps({
               "conn_type": "mysql", "host": url.host, "port": url.port, "login": url.username,
               "schema": url.database, "extra": {"ispyb": True}})}
    env.pop("CRYOEM_RESULTS_SQLITE", None)
    run = subprocess.run([AIRFLOW, "dags", "test", "spa_live", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    before, written = _counts(ispyb_url, collection), _link_times(ispyb_url)
    assert before["Movie"] == before["CTF"] == before["ParticlePicker"] == len(truth.movies)

    bookkeeping = results_store(None, str(tmp_path / "session" / "processing"))  # the run's own SQLite
    run_id = bookkeeping.read(lambda c: c.execute(select(schema.processing_job.c.run_id)).scalars().one())
    for task_id in RETRIED_TASKS:  # forced retries: each stage's first movie batch runs again in the same run
        retry = subprocess.run([AIRFLOW, "tasks", "test", "spa_live", task_id, run_id, "--map-index", "0"], env=env,
                               capture_output=True, text=True)
        assert retry.returncode == 0, retry.stdout[-4000:] + retry.stderr[-4000:]
    assert _counts(ispyb_url, collection) == before
    rewritten = _link_times(ispyb_url)
    for table in ("MotionCorrection", "CTF", "ParticlePicker"):
        assert rewritten[table] > written[table]  # the retries did write: into the rows they had written
    movie, motion, ctf, picks = schema.movie, schema.motion_correction, schema.ctf, schema.particle_picker
    own = {str(watch_dir / row.movie_full_path): row for row in bookkeeping.read(lambda c: c.execute(
        select(movie.c.movie_full_path, motion.c.total_motion_a, ctf.c.defocus_u_a, ctf.c.defocus_v_a,
               picks.c.number_of_particles)
        .join(motion, motion.c.movie_id == movie.c.movie_id).join(ctf, ctf.c.movie_id == movie.c.movie_id)
        .join(picks, picks.c.movie_id == movie.c.movie_id)).all())}
    assert len(own) == len(truth.movies)
    engine = create_engine(ispyb_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Movie.movieFullPath, MotionCorrection.totalMotion, CTF.estimatedDefocus,
                   ParticlePicker.numberOfParticles)
            .join(MotionCorrection, MotionCorrection.movieId == Movie.movieId)
            .join(CTF, CTF.motionCorrectionId == MotionCorrection.motionCorrectionId)
            .join(ParticlePicker, ParticlePicker.firstMotionCorrectionId == MotionCorrection.motionCorrectionId)
            .where(Movie.dataCollectionId == collection)).mappings().all()
        stages = connection.execute(select(ProcessingJob.displayName)
                                    .where(ProcessingJob.dataCollectionId == collection)).scalars().all()
    engine.dispose()
    assert sorted(row["movieFullPath"] for row in rows) == sorted(own)  # one row each: no duplicate joins
    for row in rows:
        mine = own[row["movieFullPath"]]
        assert row["totalMotion"] == pytest.approx(mine.total_motion_a, rel=1e-5)
        assert row["estimatedDefocus"] == pytest.approx((mine.defocus_u_a + mine.defocus_v_a) / 2, rel=1e-5)
        assert row["numberOfParticles"] == mine.number_of_particles
    assert "preprocessing" in stages and len(stages) == len(set(stages))


@pytest.mark.integration
def test_spa_live_without_a_data_collection_fails_at_opening(tmp_path, airflow_env, ispyb_url: str) -> None:
    """A folder ISPyB does not know: the run fails in open_session, saying so, and writes nothing to ISPyB."""
    watch_dir = tmp_path / "unknown" / "raw"
    watch_dir.mkdir(parents=True)
    url = make_url(ispyb_url)
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(tmp_path), "CRYOEM_RESULTS_CONN_ID": CONN_ID,
           f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps({
               "conn_type": "mysql", "host": url.host, "port": url.port, "login": url.username,
               "schema": url.database, "extra": {"ispyb": True}})}
    before = _processing_jobs(ispyb_url)
    run = subprocess.run([AIRFLOW, "dags", "test", "spa_live", "--conf", json.dumps(
        {"session_name": "unknown", "watch_dir": str(watch_dir)})], env=env, capture_output=True, text=True)
    output = run.stdout + run.stderr
    assert "DataCollectionNotFoundError" in output and f"imageDirectory is {watch_dir}" in output
    assert _processing_jobs(ispyb_url) == before


def _processing_jobs(ispyb_url: str) -> int:
    engine = create_engine(ispyb_url)
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(ProcessingJob)).scalar_one()
    engine.dispose()
    return count
