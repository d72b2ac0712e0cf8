"""Test-wide set-up: a private AIRFLOW_HOME so tests never touch a user's Airflow installation, and the
PostgreSQL server of the run (`pg_admin_url`, tests/_pg.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from airflow_provider_cryoem.devtools.dags_test import dags_test_env

from ._pg import pg_admin_url  # noqa: F401  (fixture: every PG-needing test, whichever module)
from ._spa_map_session import spa_map_session  # noqa: F401  (fixture: the demo session, run once)

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cryoem-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).parent / "airflow")


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory):
    """Environment for `airflow dags test` runs: SQLite metadata migrated once, the repo's dags folder."""
    env = dags_test_env(tmp_path_factory.mktemp("airflow_home"))
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    return env
