"""Tools for developers: a real local Airflow stack for integration tests and benchmarks."""
from .local_airflow import COMPONENTS, AirflowStack, AirflowStackError, free_port

__all__ = ["COMPONENTS", "AirflowStack", "AirflowStackError", "free_port"]
