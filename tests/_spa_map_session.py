"""The demo's simulated session taken from movies to a post-processed map through spa_live, once per test run.

Run once (about 6 minutes on 2 cores, BENCHMARKS.md) and shared by the tests that look at its results
(tests/test_spa_live_3d.py) and at its Relion project (tests/test_doppio_project.py): 8 movies of 2 Å pixels
and 40 e⁻/Å² under `airflow dags test` with the demo recipe (recipes/demo), 2D and 3D classification,
re-extraction, refinement, post-processing and a B-factor series.
"""
from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from airflow_provider_cryoem.demo import SIMULATION, SMALL_SESSION
from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.simulate import (
    END_MARKER_NAME,
    GAIN_REFERENCE_NAME,
    SpaSimulationSettings,
    write_spa_session,
)

SETTINGS = SpaSimulationSettings(n_movies=8, **SIMULATION)  # the demo's session
CONF = {"session_name": "to_map", "pixel_size_a": SETTINGS.pixel_size_a, "particle_diameter_a": SETTINGS.particle_diameter_a,
        "dose_per_frame_e_a2": SETTINGS.dose_per_frame_e_a2, **SMALL_SESSION}


@pytest.fixture(scope="session")
def spa_map_session(tmp_path_factory, airflow_env) -> dict[str, Any]:
    """The finished session: `truth` (simulator), `run` (the dags test process), `processing`, `relion`
    (the Relion project folder) and `store` (its results)."""
    from .conftest import AIRFLOW, REPO

    root = tmp_path_factory.mktemp("spa_map_session")
    watch_dir = root / "session" / "raw"
    truth = write_spa_session(SETTINGS, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    conf = {**CONF, "watch_dir": str(watch_dir), "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME)}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(root), "CRYOEM_RECIPES_DIR": str(REPO / "recipes" / "demo")}
    run = subprocess.run([AIRFLOW, "dags", "test", "spa_live", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True, timeout=3600)
    processing = root / "session" / "processing"
    return {"truth": truth, "run": run, "processing": processing, "relion": processing / "relion",
            "store": results_store(None, str(processing))}
