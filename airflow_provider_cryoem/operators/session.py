"""The live session's chain of DAG runs: each run starts the next one as soon as its sensor has taken movies."""
from __future__ import annotations

import hashlib
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

    The next run's id is a function of this run's (`next_run_id`), so a retry of this task (its Celery message
    lost with the broker, its worker killed after the trigger) finds the run it already started and skips,
    instead of starting a second chain of runs for the session.
    """

    ui_color = "#ffefeb"

    def __init__(self, *, trigger_dag_id: str, sensor_task_id: str = "wait_for_movies", **kwargs: Any) -> None:
        super().__init__(trigger_dag_id=trigger_dag_id, wait_for_completion=False, skip_when_already_exists=True,
                         **kwargs)
        self.sensor_task_id = sensor_task_id

    def execute(self, context: Context) -> Any:
        found = context["ti"].xcom_pull(task_ids=self.sensor_task_id, key="found")
        if found is None:
            raise AirflowSkipException(f"{self.sensor_task_id} found nothing: no next run")
        if found["session_over"]:
            raise AirflowSkipException(f"the session is over ({found.get('reason')}): no next run")
        self.conf = dict(context["params"])
        self.trigger_run_id = next_run_id(context["run_id"])
        return super().execute(context)


def next_run_id(run_id: str) -> str:
    """The id of the run that follows `run_id` in a live session (the same every time it is asked)."""
    return "live_next__" + hashlib.sha256(run_id.encode()).hexdigest()[:20]
