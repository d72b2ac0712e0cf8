"""A DAG written by hand with the provider's operators, no recipe: motion correction, CTF estimation and
particle picking of the movies in a folder, in micro-batches of four.

The session form (watch_dir, pixel size, dose, ...) is the provider's, so the same conf works as for
spa_live. Put this file in the DAGs folder and trigger it, or run it once in one process with
`airflow dags test preprocess_folder --conf '{...}'`:

    airflow dags trigger preprocess_folder --conf '{"watch_dir": "/data/visit/raw", "pixel_size_a": 1.1,
        "dose_per_frame_e_a2": 1.0, "particle_diameter_a": 120, "max_movies": 20}'
"""
from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG

from airflow_provider_cryoem.operators.movie_steps import (
    CtfEstimationOperator,
    MotionCorrectionOperator,
    ParticlePickingOperator,
)
from airflow_provider_cryoem.params import session_params
from airflow_provider_cryoem.recipes.stages import PickingParams
from airflow_provider_cryoem.sensors.new_movies import NewMoviesSensor

with DAG(
    dag_id="preprocess_folder",
    schedule=None,
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    params=session_params({}),
    render_template_as_native_obj=True,
    tags=["cryoem", "example"],
) as dag:
    # Opens the session, claims the complete movies and cuts them into micro-batches.
    batches = NewMoviesSensor(task_id="wait_for_movies", recipe_name="preprocess_folder", stable_for_s=2,
                              relion_dialect="relion5", max_movies_per_task=4, parallel_tasks=2).output
    motion = MotionCorrectionOperator.partial(
        task_id="motioncorr", settings={"patches_x": 3, "patches_y": 3}).expand(movies=batches)
    ctf = CtfEstimationOperator.partial(task_id="ctf", tool="builtin").expand(movies=batches)
    pick = ParticlePickingOperator.partial(
        task_id="pick", settings=PickingParams(threshold=2.5, max_particles=500)).expand(movies=batches)
    motion >> [ctf, pick]

