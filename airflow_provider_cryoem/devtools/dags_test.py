"""The environment for `airflow dags test` runs of the demo, the tests and the benchmarks."""
from __future__ import annotations

import os
from pathlib import Path

from .local_airflow import REPO


def dags_test_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment with a private AIRFLOW_HOME and SQLite metadata in `home`, the repo's dags folder, no
    example DAGs, and results in each session's own SQLite file (CRYOEM_RESULTS_CONN_ID unset); `extra` on top."""
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}", **extra}
    env.pop("CRYOEM_RESULTS_CONN_ID", None)
    return env
