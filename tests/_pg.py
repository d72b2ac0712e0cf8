"""Fixtures for tests against a real PostgreSQL server: a fresh database per test run, dropped after.

The server is 127.0.0.1:5432, user postgres, trust auth (`CRYOEM_TEST_PG_ADMIN_URL` points elsewhere).
When nothing listens there, `pg_admin_url` brings up a private cluster for the run (devtools.local_postgres),
so a machine without PostgreSQL runs these tests too; PG-needing tests take their server from it.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_cryoem.devtools.local_airflow import POSTGRES_ADMIN_URL, fresh_postgres_database
from airflow_provider_cryoem.devtools.local_postgres import postgres_server

fresh_database = functools.partial(fresh_postgres_database, "cryoem_test")


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """The admin URL of the server the tests use, a private one stopped after the run if need be."""
    with postgres_server(POSTGRES_ADMIN_URL) as url:
        yield url


@pytest.fixture(scope="session")
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """One fresh database shared by the whole test run."""
    with fresh_database(admin_url=pg_admin_url) as url:
        yield url


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty results database of each back end: a fresh PostgreSQL database, or a new SQLite file."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.sqlite'}"
        return
    with fresh_database(admin_url=request.getfixturevalue("pg_admin_url")) as url:
        yield url
