"""Migration 6: a session records its quality limits and a 2D class its selection score (both for the
dashboard); databases made before it gain the columns with their rows kept, and the pipeline's writers fill them."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from sqlalchemy import inspect, select, text

from airflow_provider_cryoem.config import SessionConfig
from airflow_provider_cryoem.results import ResultsStore, engine_from_url, schema
from airflow_provider_cryoem.results.migrations import LATEST_VERSION

from ._old_database import columns, migrate_up_to
from ._pg import empty_url  # noqa: F401  (fixture)


def test_a_version_5_database_gains_quality_limits_and_selection_scores_keeping_its_rows(empty_url: str):
    store = ResultsStore(engine_from_url(empty_url))
    now = datetime.now(timezone.utc)
    with store.engine.begin() as connection:  # a database as migrations 1-5 of the code before left it
        migrate_up_to(connection, 5)
        for table, column in (("session", "quality_limits"), ("particle_classification", "selection_score")):
            if column in {c["name"] for c in inspect(connection).get_columns(table)}:  # tables made from schema.py
                connection.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        connection.execute(text(
            "INSERT INTO session (session_key, name, image_directory, processing_directory, created) "
            "VALUES (:key, 'old', '/data/raw', '/data/processing', :now)"),
            {"key": schema.session_key("old", "/data/raw"), "now": now})
    assert "quality_limits" not in columns(store, "session")

    assert store.ensure_schema() == LATEST_VERSION >= 6
    assert "quality_limits" in columns(store, "session")
    assert "selection_score" in columns(store, "particle_classification")
    session = store.get_or_create_session("old", "/data/raw", "/data/processing")
    with store.engine.connect() as connection:
        assert connection.execute(select(schema.session.c.quality_limits)).scalar_one() is None  # kept, unknown

    limits = SessionConfig(max_total_motion_a=25.0, min_defocus_a=None).quality_limits()
    store.set_quality_limits(session, limits)
    job = store.start_processing_job(session, "spa_live", "class2d", False, "run-1")
    group = store.record_classification_group(job, {"type": "2D", "batch_number": 1, "particles_per_batch": 300,
                                                    "classes_per_batch": 2}, [
        {"class_number": number, "particles_per_class": 150, "class_distribution": 0.5} for number in (1, 2)])
    store.record_class_selection(group, [2], {1: 0.25, 2: 0.875})
    with store.engine.connect() as connection:
        recorded = json.loads(connection.execute(select(schema.session.c.quality_limits)).scalar_one())
        scores = dict(connection.execute(select(schema.particle_classification.c.class_number,
                                                schema.particle_classification.c.selection_score)).all())
    assert recorded["max_total_motion_a"] == 25.0 and recorded["min_defocus_a"] is None
    assert scores == {1: 0.25, 2: 0.875}
    store.engine.dispose()
