"""The Slurm REST API backend against a REAL slurmrestd (22.05, JWT auth) on the local single-node cluster.

`scripts/local_slurm.sh rest` starts Slurm, sshd and slurmrestd on 127.0.0.1:6820 and writes the HTTP
connection (a `scontrol token` JWT as its password). Jobs are real Python programs; their output lands in
the shared job folder, which this process reads as a worker would.
"""
from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_cryoem.execution import CommandSpec
from airflow_provider_cryoem.execution.slurm import SlurmSettings, job_name, job_options, rest_submission
from airflow_provider_cryoem.hooks.slurm import SlurmCommandError, SlurmHook, slurm_hook
from airflow_provider_cryoem.hooks.slurm_rest import SlurmRestHook
from airflow_provider_cryoem.operators.slurm import SlurmCommandOperator
from airflow_provider_cryoem.pipeline.external import SlurmJobPending, stage_executor
from airflow_provider_cryoem.triggers.slurm_rest import SlurmRestJobTrigger, slurm_job_trigger

from ._slurm_jobs import (
    POLL_S,
    FakeTaskInstance,
    check_failing_job_is_reported_and_rerun,
    first_event,
    local_slurm_cluster,
    python_spec,
)

REST_CONN_ID = "cryoem_slurm_rest"
RUN_ID = f"{os.getpid()}-{time.time_ns()}"


def unique_name(stage: str) -> str:
    return job_name(f"pytest-rest-{RUN_ID}", "item", stage)


@pytest.fixture(scope="session")
def rest_cluster():
    for conns in local_slurm_cluster(rest=True):
        yield SimpleNamespace(conn=conns["rest"], hook=slurm_hook(REST_CONN_ID))


def test_rest_request_carries_the_sbatch_options_as_typed_json():
    settings = SlurmSettings(partition="gpu", memory="16G", time_limit="1-02:30:00", gres="gpu:1",
                             remote_workdir="/shared/jobs")
    spec = CommandSpec(program="relion_refine", args=["--o", "Refine3D/job1/run"], threads=4, cwd="/shared/p")
    name = unique_name("refine")
    options = job_options(spec, settings, name)
    job = rest_submission(spec, settings, name, {"PATH": "/usr/bin:/bin"})["job"]
    assert job == {"environment": {"PATH": "/usr/bin:/bin"}, "current_working_directory": "/shared/p",
                   "name": name, "standard_output": options["output"], "standard_error": options["error"],
                   "cpus_per_task": 4, "partition": "gpu", "gres": "gpu:1", "memory_per_node": 16384,
                   "time_limit": (24 + 2) * 60 + 30}


def test_connection_type_selects_the_transport(rest_cluster):
    assert isinstance(rest_cluster.hook, SlurmRestHook)
    assert rest_cluster.hook.base_url == "http://127.0.0.1:6820/slurm/v0.0.38"
    assert isinstance(slurm_hook("cryoem_slurm"), SlurmHook)


def test_python_job_completes_and_its_output_is_read_from_the_shared_folder(rest_cluster, tmp_path):
    spec = python_spec("import pathlib, sys; "
                       "pathlib.Path(sys.argv[1], 'ctf.json').write_text('{\"defocus_a\": 1.2e4}');"
                       " print('argv', sys.argv[1:])", str(tmp_path), cwd=str(tmp_path))
    job = rest_cluster.hook.submit(spec, unique_name("ctf"))
    assert not job.reattached
    status = rest_cluster.hook.wait(job, POLL_S, timeout_s=60)
    assert (status.state, status.exit_code, status.source) == ("COMPLETED", 0, "slurmrestd")
    rest_cluster.hook.raise_for_status(spec.program, job, status)
    assert json.loads((tmp_path / "ctf.json").read_text()) == {"defocus_a": 1.2e4}
    assert rest_cluster.hook.read_output(job).strip() == f"argv {[str(tmp_path)]}"


def test_failing_job_error_has_exit_code_and_stderr_tail_and_is_rerun(rest_cluster):
    check_failing_job_is_reported_and_rerun(rest_cluster.hook, unique_name("motioncorr"))


def test_retry_reattaches_to_running_job_over_rest_and_ssh_then_cancel(rest_cluster):
    name = unique_name("class2d")
    spec = python_spec("import time; time.sleep(120)")
    first = rest_cluster.hook.submit(spec, name)
    try:
        # new task tries, with a fresh hook of either transport: the same job, no second submission
        retries = [SlurmRestHook(REST_CONN_ID).submit(spec, name), SlurmHook().submit(spec, name)]
        assert [(job.reattached, job.job_id) for job in retries] == [(True, first.job_id)] * 2
        assert rest_cluster.hook.status(first.job_id).state in ("PENDING", "RUNNING")
    finally:
        rest_cluster.hook.cancel(first.job_id)
    status = rest_cluster.hook.wait(first, POLL_S, timeout_s=30)
    assert status.state == "CANCELLED"
    assert rest_cluster.hook.find_job(name) is None  # a cancelled job is not re-attached to


def test_operator_runs_a_job_through_the_rest_connection(rest_cluster):
    operator = SlurmCommandOperator(task_id="slurm_rest", command=python_spec("print(6 * 7)"),
                                    job_name=unique_name("operator"), ssh_conn_id=REST_CONN_ID,
                                    poll_interval_s=POLL_S, deferrable=False)
    result = operator.execute({"ti": FakeTaskInstance("slurm_rest")})
    assert (result["state"], result["exit_code"], result["reattached"]) == ("COMPLETED", 0, False)
    assert Path(result["stdout_path"]).read_text().strip() == "42"


def test_deferred_operator_waits_in_the_rest_trigger(rest_cluster):
    operator = SlurmCommandOperator(task_id="deferred", command=python_spec("print('particles: 42')"),
                                    job_name=unique_name("pick"), ssh_conn_id=REST_CONN_ID, poll_interval_s=POLL_S,
                                    deferrable=True)
    context = {"ti": FakeTaskInstance("deferred")}
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == "airflow_provider_cryoem.triggers.slurm_rest.SlurmRestJobTrigger"
    module_name, class_name = classpath.rsplit(".", 1)
    event = first_event(getattr(importlib.import_module(module_name), class_name)(**kwargs))  # as the triggerer
    result = operator.execute_complete(context, event)
    assert result["state"] == "COMPLETED" and Path(result["stdout_path"]).read_text() == "particles: 42\n"


def test_rest_trigger_reports_failure_with_stderr_tail_and_on_kill_cancels(rest_cluster):
    failing = rest_cluster.hook.submit(python_spec("import sys; sys.exit('no particles found')"),
                                       unique_name("extract"))
    event = first_event(SlurmRestJobTrigger(REST_CONN_ID, failing.job_id, failing.stderr_path,
                                            poll_interval_s=POLL_S))
    assert (event["status"], event["job"]["exit_code"]) == ("failed", 1)
    assert event["stderr_tail"] == ["no particles found"]
    running = rest_cluster.hook.submit(python_spec("import time; time.sleep(120)"), unique_name("kill"))
    asyncio.run(SlurmRestJobTrigger(REST_CONN_ID, running.job_id, running.stderr_path).on_kill())
    assert rest_cluster.hook.wait(running, POLL_S, timeout_s=30).state == "CANCELLED"


def test_tokens_and_job_environment_are_never_logged_and_a_rejected_token_fails_clearly(rest_cluster, caplog,
                                                                                        capfd):
    secret = f"licence-{RUN_ID}"
    bad_token = "eyJhbGciOiJIUzI1NiJ9.not-a-real-token.h5"
    os.environ["AIRFLOW_CONN_CRYOEM_SLURM_REST_BAD"] = json.dumps(dict(rest_cluster.conn, password=bad_token))
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    job = rest_cluster.hook.submit(python_spec("import os; print(len(os.environ['SITE_LICENCE']))",
                                               env={"SITE_LICENCE": secret}), unique_name("secret"))
    assert rest_cluster.hook.wait(job, POLL_S, timeout_s=60).succeeded
    with pytest.raises(SlurmCommandError) as caught:
        SlurmRestHook("cryoem_slurm_rest_bad").find_job(unique_name("never"))
    assert "slurmrestd at http://127.0.0.1:6820" in str(caught.value) and bad_token not in str(caught.value)
    captured = capfd.readouterr()  # Airflow's hook loggers write through structlog to the console
    logged = caplog.text + captured.out + captured.err
    assert f"as Slurm job {job.job_id}" in logged and "send_request_headers" in logged  # logs were captured
    for never in (rest_cluster.conn["password"], bad_token, secret):
        assert never not in logged


def test_stage_placed_on_the_rest_connection_submits_once_and_waits_in_the_trigger(rest_cluster, tmp_path):
    """A stage's `runs_on: {slurm_conn_id: <HTTP connection>}`: the job is submitted through slurmrestd, the
    task would defer on SlurmRestJobTrigger, and running the step again reads the same job back."""
    placement = {"slurm_conn_id": REST_CONN_ID, "cpus": 1, "gpus": 0, "memory_gb": 0.5, "time_limit_min": 5}
    submitted: dict[str, int] = {}
    execute = stage_executor("ctf", "ctffind4", placement, f"pytest-rest-{RUN_ID}/{tmp_path.name}", submitted)
    spec = python_spec("import time; time.sleep(2); print('fitted', 3.2)", "-o", str(tmp_path / "ctf.txt"))
    with pytest.raises(SlurmJobPending) as pending:
        execute(spec)
    (name, job_id), = submitted.items()
    trigger = slurm_job_trigger(pending.value.conn_id, job_id, pending.value.job["stderr_path"],
                                pending.value.jobcomp_file, POLL_S)
    assert isinstance(trigger, SlurmRestJobTrigger)
    assert first_event(trigger)["status"] == "success"
    assert execute(spec).strip() == "fitted 3.2"  # the step again: read back by id, not submitted anew
    assert submitted == {name: job_id} and rest_cluster.hook.find_job(name) == job_id
