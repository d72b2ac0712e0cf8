"""Migration 4: refinements and B-factor points record the pixel size they were refined at (re-extracted
particles or the classification's binned ones); databases made before it gain the column, rows kept."""
from __future__ import annotations

from sqlalchemy import select, text

from airflow_provider_cryoem.results import ResultsStore, engine_from_url, schema
from airflow_provider_cryoem.results.migrations import LATEST_VERSION

from ._old_database import columns, migrate_up_to
from ._pg import empty_url  # noqa: F401  (fixture)

REFINED = {"resolution_a": 8.1, "number_of_particles": 270, "symmetry": "C1", "class_number": 2,
           "bfactor_a2": -900.0, "map": "/p/postprocess.mrc"}


def test_a_version_3_database_gains_the_pixel_size_keeping_its_refinements(empty_url: str):
    store = ResultsStore(engine_from_url(empty_url))
    with store.engine.begin() as connection:  # a database as migrations 1-3 of the code before left it
        migrate_up_to(connection, 3)
        for table in ("refinement", "bfactor_fit"):
            connection.execute(text(f"ALTER TABLE {table} DROP COLUMN pixel_size_a"))
        connection.execute(text("ALTER TABLE tilt_series DROP COLUMN completed_by_run_id"))  # migration 5's
    assert "pixel_size_a" not in columns(store, "refinement") | columns(store, "bfactor_fit")
    session = store.get_or_create_session("old", "/data/raw", "/data/processing")
    job = store.start_processing_job(session, "spa_live", "refine3d", False, "run-1")
    with store.engine.begin() as connection:
        connection.execute(text("INSERT INTO refinement (processing_job_id, symmetry, estimated_resolution_a, "
                                "number_of_particles) VALUES (:job, 'C1', 14.2, 279)"), {"job": job})

    assert store.ensure_schema() == LATEST_VERSION >= 4
    assert "pixel_size_a" in columns(store, "refinement") & columns(store, "bfactor_fit")
    assert "completed_by_run_id" in columns(store, "tilt_series")
    with store.engine.connect() as connection:
        (old,) = connection.execute(select(schema.refinement)).all()
    assert (old.estimated_resolution_a, old.pixel_size_a) == (14.2, None)

    store.record_refinement(job, {**REFINED, "pixel_size_a": 2.0})
    store.record_bfactor_fit(job, {"number_of_particles": 135, "resolution_a": 11.0, "pixel_size_a": 2.0})
    with store.engine.connect() as connection:
        (new,) = connection.execute(select(schema.refinement)).all()
        (point,) = connection.execute(select(schema.bfactor_fit)).all()
    assert (new.estimated_resolution_a, new.pixel_size_a, point.pixel_size_a) == (8.1, 2.0, 2.0)
    assert store.ensure_schema() == LATEST_VERSION
    store.engine.dispose()


def test_a_new_database_has_the_pixel_size_columns_once(empty_url: str):
    store = ResultsStore(engine_from_url(empty_url))
    assert store.ensure_schema() == LATEST_VERSION
    assert "pixel_size_a" in columns(store, "refinement") & columns(store, "bfactor_fit")
    store.engine.dispose()
