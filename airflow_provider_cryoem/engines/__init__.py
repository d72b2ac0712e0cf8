"""Built-in processing engines: pure numpy/scipy, no Airflow import."""
