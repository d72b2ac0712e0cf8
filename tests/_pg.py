"""Fixtures for tests against the real PostgreSQL server: a fresh database per test run, dropped after.

The server is 127.0.0.1:5432, user postgres, trust auth (`CRYOEM_TEST_PG_ADMIN_URL` points elsewhere).
A server that cannot be reached is an error, never a skip.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from airflow_provider_cryoem.devtools.local_airflow import fresh_postgres_database

fresh_database = functools.partial(fresh_postgres_database, "cryoem_test")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """One fresh database shared by the whole test run."""
    with fresh_database() as url:
        yield url
