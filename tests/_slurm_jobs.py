"""What the SSH and REST Slurm tests share: the local cluster, job specs, an XCom-only task instance, the
failing-job check."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cryoem.execution import CommandSpec
from airflow_provider_cryoem.hooks.slurm import SlurmJobError, SlurmJobs

POLL_S = 0.5


def python_spec(code: str, *args: str, **kwargs) -> CommandSpec:
    return CommandSpec(program=sys.executable, args=["-c", code, *args], **kwargs)


class FakeTaskInstance:
    """Just the XCom part of a task instance, which is all the operator uses of it."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value

    def xcom_pull(self, task_ids: str, key: str) -> object:
        assert task_ids == self.task_id
        return self.xcom[key]


def check_failing_job_is_reported_and_rerun(hook: SlurmJobs, name: str) -> None:
    """A job exiting 3: its error names the state and exit code and ends with the last stderr line (not the
    start of a long stderr); it is not retryable, and a new submission runs it again instead of re-attaching."""
    spec = python_spec("import sys\nfor i in range(40): print('noise', i, file=sys.stderr)\n"
                       "print('frame 7 of movie_01.tiff is corrupt', file=sys.stderr)\nsys.exit(3)")
    job = hook.submit(spec, name)
    status = hook.wait(job, POLL_S, timeout_s=60)
    with pytest.raises(SlurmJobError) as caught:
        hook.raise_for_status(spec.program, job, status)
    message = str(caught.value)
    assert f"Slurm job {job.job_id} ended FAILED" in message and "exit code 3" in message
    assert message.rstrip().endswith("frame 7 of movie_01.tiff is corrupt") and "noise 20" not in message
    assert not caught.value.retryable
    again = hook.submit(spec, name)
    assert not again.reattached and again.job_id != job.job_id
    hook.cancel(again.job_id)


REPO = Path(__file__).resolve().parents[1]
SLURM_STATE_DIR = Path("/var/lib/cryoem-slurm")


def start_local_slurm(*modes: str) -> subprocess.CompletedProcess:
    """scripts/local_slurm.sh [mode]: start (idempotently) what is not running; what an administrator runs too."""
    return subprocess.run(["bash", str(REPO / "scripts" / "local_slurm.sh"), *modes], check=True,
                          capture_output=True, text=True, timeout=600)


def local_slurm_cluster(rest: bool = False) -> Iterator[dict[str, dict]]:
    """Fixture body: start Slurm + sshd (+ slurmrestd), publish the connections as AIRFLOW_CONN_* variables,
    yield them ({'ssh': ..., 'rest': ...}), and afterwards stop only what this run started."""
    setup = start_local_slurm(*(["rest"] if rest else []))
    conns = {"ssh": json.loads((SLURM_STATE_DIR / "airflow_conn.json").read_text())}
    os.environ["AIRFLOW_CONN_CRYOEM_SLURM"] = json.dumps(conns["ssh"])
    if rest:
        conns["rest"] = json.loads((SLURM_STATE_DIR / "airflow_conn_rest.json").read_text())
        os.environ["AIRFLOW_CONN_CRYOEM_SLURM_REST"] = json.dumps(conns["rest"])
    yield conns
    stop = "stop" if "starting slurmctld" in setup.stderr else (
        "stop-rest" if "starting slurmrestd" in setup.stderr else None)
    if stop:
        subprocess.run(["bash", str(REPO / "scripts" / "local_slurm.sh"), stop], check=True, timeout=60)


def first_event(trigger: Any, timeout_s: float = 60) -> dict:
    """Run a trigger as the triggerer does and return its first event's payload."""
    async def run() -> dict:
        async for event in trigger.run():
            return event.payload
    return asyncio.run(asyncio.wait_for(run(), timeout=timeout_s))
