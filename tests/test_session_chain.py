"""The live session's chain of runs: each run starts the next one, exactly once even when retried."""
from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowSkipException, DagRunTriggerException

from airflow_provider_cryoem.operators.session import StartNextRunOperator


class _TaskInstance:
    def __init__(self, found: dict[str, Any] | None) -> None:
        self.found = found

    def xcom_pull(self, task_ids: str, key: str) -> dict[str, Any] | None:
        assert (task_ids, key) == ("wait_for_movies", "found")
        return self.found


def _start_next(run_id: str, found: dict[str, Any] | None) -> DagRunTriggerException:
    operator = StartNextRunOperator(task_id="start_next_batch", trigger_dag_id="spa_live")
    context = {"ti": _TaskInstance(found), "run_id": run_id, "params": {"session_name": "grid_a"}}
    with pytest.raises(DagRunTriggerException) as raised:
        operator.execute(context)  # type: ignore[arg-type]
    return raised.value


GOING_ON = {"session_over": False, "reason": None}


def test_a_retried_start_next_batch_asks_for_the_run_it_already_started_and_skips_if_it_exists():
    first, retried = _start_next("live_1", GOING_ON), _start_next("live_1", GOING_ON)
    assert first.dag_run_id == retried.dag_run_id
    assert first.skip_when_already_exists and not first.reset_dag_run
    assert first.conf == {"session_name": "grid_a"}  # the session's conf goes on


def test_each_run_starts_a_next_run_of_its_own():
    assert _start_next("live_1", GOING_ON).dag_run_id != _start_next("live_2", GOING_ON).dag_run_id


@pytest.mark.parametrize("found", [None, {"session_over": True, "reason": "end marker"}])
def test_no_next_run_when_the_session_is_over_or_nothing_was_found(found):
    operator = StartNextRunOperator(task_id="start_next_batch", trigger_dag_id="spa_live")
    with pytest.raises(AirflowSkipException):
        operator.execute({"ti": _TaskInstance(found), "run_id": "live_1", "params": {}})  # type: ignore[arg-type]
