"""The live session's chain of DAG runs: each run starts the next one as soon as its sensor has taken movies."""
from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowSkipException


class StartNextRunOperator(TriggerDagRunOperator):
    """Starts the session's next DAG run, with this run's conf, unless this run's sensor found the session over.

    One task instead of a short-circuit, a conf task and a trigger: on a live session every task hop between
    one run's sensor and the next run's sensor is time in which arriving movies wait, and each task instance
    takes an executor slot the stage tasks also want.

    :param trigger_dag_id: the DAG whose next run to start (the recipe's own DAG).
    :param sensor_task_id: the `NewMoviesSensor` of this run; its XCom key "found" says whether the session is
        over (`{"session_over": bool, "reason": str | None, ...}`).
    """

    ui_color = "#ffefeb"

    def __init__(self, *, trigger_dag_id: str, sensor_task_id: str = "wait_for_movies", **kwargs: Any) -> None:
        super().__init__(trigger_dag_id=trigger_dag_id, wait_for_completion=False, **kwargs)
        self.sensor_task_id = sensor_task_id

    def execute(self, context: Context) -> Any:
        found = context["ti"].xcom_pull(task_ids=self.sensor_task_id, key="found")
        if found is None:
            raise AirflowSkipException(f"{self.sensor_task_id} found nothing: no next run")
        if found["session_over"]:
            raise AirflowSkipException(f"the session is over ({found.get('reason')}): no next run")
        self.conf = dict(context["params"])
        return super().execute(context)
