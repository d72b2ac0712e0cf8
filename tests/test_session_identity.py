"""A session is its name and its watched folder: reused names never share rows, old databases migrate."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from airflow_provider_cryoem.results import ResultsNotFoundError, ResultsStore, engine_from_url, schema
from airflow_provider_cryoem.results.migrations import LATEST_VERSION, MIGRATIONS

from ._pg import empty_url  # noqa: F401  (fixture)



def _version_1_database(url: str) -> ResultsStore:
    """A database as migration 1 left it, holding a session with a claimed file and a movie."""
    store = ResultsStore(engine_from_url(url))
    now = datetime.now(timezone.utc)
    with store.engine.begin() as connection:
        schema.schema_version.create(connection)
        MIGRATIONS[0].apply(connection)
        connection.execute(schema.schema_version.insert().values(version=1, description="v1", applied_at=now))
        connection.exec_driver_sql(
            "INSERT INTO session (session_id, name, image_directory, processing_directory, created) "
            "VALUES (7, 'demo', '/data/a/raw', '/data/a/processing', CURRENT_TIMESTAMP)")
        connection.execute(schema.movie.insert().values(session_id=7, movie_number=1, movie_full_path="m1.tiff",
                                                        created_time_stamp=now, status="registered"))
        connection.execute(schema.session_file.insert().values(
            session_id=7, relative_path="m1.tiff", size_bytes=10, first_seen=now, claimed_at=now, claimed_by="r1"))
    return store


def test_a_version_1_database_migrates_keeping_its_sessions_and_their_rows(empty_url: str):
    store = _version_1_database(empty_url)
    assert store.ensure_schema() == LATEST_VERSION
    assert store.get_or_create_session("demo", "/data/a/raw", "/data/a/processing") == 7
    assert store.claimed_files(7) == {"m1.tiff"}
    with store.engine.connect() as connection:
        assert connection.execute(select(schema.movie.c.session_id)).scalars().all() == [7]
    other = store.get_or_create_session("demo", "/data/b/raw", "/data/b/processing")
    assert other != 7
    assert store.claim_files(other, [("m1.tiff", 10)], "r2") == ["m1.tiff"]
    store.engine.dispose()


def test_a_reused_session_name_in_another_folder_is_a_session_of_its_own(empty_url: str):
    store = ResultsStore(engine_from_url(empty_url))
    store.ensure_schema()
    first = store.get_or_create_session("demo", "/data/a/raw", "/data/a/processing")
    second = store.get_or_create_session("demo", "/data/b/raw", "/data/b/processing")
    assert first != second
    assert store.get_or_create_session("demo", "/data/a/raw", "/data/a/processing") == first
    assert store.claim_files(first, [("m.tiff", 1)], "run-a") == ["m.tiff"]
    assert store.claim_files(second, [("m.tiff", 1)], "run-b") == ["m.tiff"]
    assert store.session_summary(second).image_directory == "/data/b/raw"
    with pytest.raises(ResultsNotFoundError, match=r"2 sessions are named 'demo'.*/data/b/raw"):
        store.session_summary("demo")
    store.engine.dispose()
