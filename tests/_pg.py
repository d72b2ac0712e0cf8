"""Fixtures for tests against the real PostgreSQL server: a fresh database per test run, dropped after.

The server is 127.0.0.1:5432, user postgres, trust auth; `CRYOEM_TEST_PG_ADMIN_URL` points elsewhere.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

ADMIN_URL = os.environ.get("CRYOEM_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new empty database `cryoem_test_<random>`; yields its URL and drops it (and its sessions) after."""
    name = f"cryoem_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {make_url(ADMIN_URL).render_as_string()}: {exc.orig}")
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """One fresh database shared by the whole test run."""
    with fresh_database() as url:
        yield url
