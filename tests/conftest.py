"""Test-wide set-up: a private AIRFLOW_HOME so tests never touch a user's Airflow installation."""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cryoem-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
