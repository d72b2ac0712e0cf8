"""Import the processing code once in Airflow's long-lived processes, so forked task processes start fast.

Each task process otherwise imports numpy, scipy, pandas and the pipeline again (about 1.3 s of CPU per
task, measured), which on a small worker delays every live task. With LocalExecutor (fork start method)
the scheduler's executor workers fork the task processes, so modules the scheduler imported are already
there. Opt in from the deployment's `airflow_local_settings.py` (in `$AIRFLOW_HOME/config`):

    import airflow_provider_cryoem.preload  # noqa: F401
"""
from .pipeline import movie_batch, particle_stages, session  # noqa: F401
