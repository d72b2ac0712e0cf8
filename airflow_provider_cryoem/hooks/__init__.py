"""Airflow hooks: SlurmHook (jobs over SSH) and ResultsHook (the results database)."""
