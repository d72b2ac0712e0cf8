"""Faults of the cluster under running jobs, on the REAL local Slurm + sshd + slurmrestd (scripts/local_slurm.sh).

The faults are made as an administrator of these containers makes them (no systemd): a daemon is killed by its
pid file and started again with scripts/local_slurm.sh; the node is set DOWN with `scontrol update`. What must
hold: the watcher (hook and trigger) rides out the outage, the job's result is read, and nothing is submitted
twice (checked by job name with `squeue -t all --name=`). Every test leaves the cluster healthy (daemons up,
node resumed) even when it fails, since the other Slurm test files use the same cluster. Each test prints one
`FAULT ...` line with what it measured (run with -s to see them).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from airflow_provider_cryoem.execution import CommandSpec
from airflow_provider_cryoem.execution.slurm import (
    SlurmJob,
    SlurmSettings,
    SlurmUnavailable,
    find_jobs_command,
    job_name,
    parse_found_jobs,
    parse_job_status,
    rest_submission,
    submit_command,
)
from airflow_provider_cryoem.hooks.slurm import SlurmHook, SlurmJobs
from airflow_provider_cryoem.hooks.slurm_rest import SlurmRestHook
from airflow_provider_cryoem.operators.slurm import SlurmCommandOperator
from airflow_provider_cryoem.triggers.slurm_rest import slurm_job_trigger

from ._slurm_jobs import (
    POLL_S,
    SLURM_STATE_DIR,
    FakeTaskInstance,
    first_event,
    local_slurm_cluster,
    python_spec,
    start_local_slurm,
)

RUN_ID = f"{os.getpid()}-{time.time_ns()}"
NODE = socket.gethostname().split(".")[0]  # `hostname -s`, the NodeName local_slurm.sh configures
NO_REQUEUE_CONN_ID = "cryoem_slurm_norequeue"
REST_CONN_ID = "cryoem_slurm_rest"
SSHD_PID_FILE = SLURM_STATE_DIR / "sshd.pid"
SLURMCTLD_PID_FILE = Path("/run/slurmctld.pid")
# scontrol keeps trying an unreachable slurmctld for ~18 s (measured, MessageTimeout=10) before it gives up:
# a shorter outage only slows the poll down, a longer one is what the old status command misread.
SLURMCTLD_DOWN_S = 22.0
DAEMON_DOWN_S = 3.0


def unique_name(stage: str) -> str:
    return job_name(f"pytest-faults-{RUN_ID}", "item", stage)


@pytest.fixture(scope="module")
def conns():
    """The shared cluster with slurmrestd, plus an SSH connection whose jobs Slurm must not requeue."""
    for found in local_slurm_cluster(rest=True):
        no_requeue = {**found["ssh"], "extra": {**found["ssh"]["extra"], "slurm_requeue": "false"}}
        os.environ["AIRFLOW_CONN_CRYOEM_SLURM_NOREQUEUE"] = json.dumps(no_requeue)
        yield found
    os.environ.pop("AIRFLOW_CONN_CRYOEM_SLURM_NOREQUEUE", None)


@pytest.fixture
def healthy_afterwards(conns):
    """Whatever the test did or where it failed: node back in service, every daemon running again."""
    yield
    subprocess.run(["scontrol", "update", f"NodeName={NODE}", "State=RESUME"], capture_output=True, timeout=30)
    start_local_slurm("rest")  # starts what is not running and waits until the node takes jobs


def stop_daemon(pid_file: Path) -> None:
    """`kill <pid>` of a daemon's pid file, as an administrator without systemd does; wait until it is gone."""
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} of {pid_file} did not stop within 20 s")


def _established(port_filter: str) -> list[tuple[int, int, list[int]]]:
    """(local port, peer port, owning pids) of established TCP connections matching an `ss` filter."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", port_filter], capture_output=True, text=True,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        addresses = re.findall(r"\S+:(\d+)\s", line + " ")
        if len(addresses) >= 2:
            rows.append((int(addresses[0]), int(addresses[1]), [int(pid) for pid in re.findall(r"pid=(\d+)", line)]))
    return rows


def sshd_serving_this_process(port: int) -> dict[int, list[int]]:
    """Per SSH connection of this test process (its local port): the sshd processes at the other end."""
    ours = {local for local, _, pids in _established(f"( dport = :{port} )") if os.getpid() in pids}
    return {peer: pids for _, peer, pids in _established(f"( sport = :{port} )") if peer in ours}


def jobs_named(name: str) -> list[tuple[int, str]]:
    """Every job of this name Slurm remembers, finished ones included: (id, state)."""
    out = subprocess.run(["bash", "-c", find_jobs_command(name)], capture_output=True, text=True, check=True)
    return parse_found_jobs(out.stdout)


def wait_until(what: str, check, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    queue = subprocess.run(["squeue", "-o", "%i %j %T %r"], capture_output=True, text=True).stdout
    raise AssertionError(f"{what} not within {timeout_s:g} s; squeue:\n{queue}")


def timed(watch, *args):
    """Run a watcher; its result and the moment (time.monotonic()) it returned, for the measured figures."""
    return watch(*args), time.monotonic()


def running(hook: SlurmJobs, *job_ids: int) -> bool:
    return all(hook.status(job_id).state == "RUNNING" for job_id in job_ids)


def watch_running_job(pool: ThreadPoolExecutor, hook: SlurmJobs, conn_id: str, spec: CommandSpec, name: str,
                      timeout_s: float) -> tuple[SlurmJob, Future, Future]:
    """Submit, wait until the job runs, then watch it both ways at once, each in a thread: the hook's blocking
    wait and the connection's trigger. The futures give (result, moment it returned)."""
    job = hook.submit(spec, name)
    wait_until("the job running", lambda: running(hook, job.job_id))
    trigger = slurm_job_trigger(conn_id, job.job_id, job.stderr_path, None, POLL_S)
    return (job, pool.submit(timed, hook.wait, job, POLL_S, timeout_s),
            pool.submit(timed, first_event, trigger, timeout_s))


def test_sshd_restarted_under_a_running_job_hook_and_trigger_reconnect_and_read_it(conns, healthy_afterwards,
                                                                                     capfd):
    name = unique_name("motioncorr")
    spec = python_spec("import time; time.sleep(8); print('motion corrected')")
    hook = SlurmHook()
    port = conns["ssh"]["port"]
    with ThreadPoolExecutor(2) as pool:
        job, waited, event = watch_running_job(pool, hook, "cryoem_slurm", spec, name, 90)
        # the hook's and the trigger's connections both open, then sshd goes away with them
        sessions = wait_until("two SSH connections of this process", lambda: (
            found if len(found := sshd_serving_this_process(port)) >= 2 else None))
        transport_before = hook.client.get_transport()
        fault_at = time.monotonic()
        stop_daemon(SSHD_PID_FILE)
        for pid in {pid for pids in sessions.values() for pid in pids}:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:  # a privilege-separated child that ended with its monitor
                pass
        time.sleep(DAEMON_DOWN_S)
        back_at = time.monotonic()  # the start command; the daemon answers within about a second of it
        start_local_slurm("rest")
        (status, waited_at), (payload, event_at) = waited.result(timeout=90), event.result(timeout=90)
    assert (status.state, status.exit_code) == ("COMPLETED", 0)
    assert payload["status"] == "success" and payload["job"]["state"] == "COMPLETED", payload
    assert hook.client.get_transport() is not transport_before  # the hook really connected anew
    assert "reconnecting" in "".join(capfd.readouterr())  # and so did the trigger
    assert hook.read_output(job) == "motion corrected\n"
    retry = SlurmHook().submit(spec, name)  # an Airflow retry of the task now: the same job, read back
    assert (retry.reattached, retry.job_id) == (True, job.job_id)
    assert jobs_named(name) == [(job.job_id, "COMPLETED")]
    print(f"\nFAULT sshd restart: down {back_at - fault_at:.1f} s ({len(sessions)} connections cut), read by the "
          f"hook {waited_at - back_at:.1f} s and the trigger {event_at - back_at:.1f} s after the start command; "
          f"jobs of the name: 1")


def test_node_down_without_requeue_ends_node_fail_retried_once_by_the_next_try(conns, healthy_afterwards):
    """slurm_requeue=false (sbatch --no-requeue; a site with JobRequeue=0 sees the same): the node failure ends the
    job NODE_FAIL, the task fails with a retryable AirflowException (polled and deferred alike), and the next
    try submits the job once more, which completes."""
    spec = python_spec("import time; time.sleep(6); print('picked 17')")
    names = {"polled": unique_name("pick"), "deferred": unique_name("ctf")}
    contexts = {kind: {"ti": FakeTaskInstance(kind)} for kind in names}

    def operator(kind: str, deferrable: bool) -> SlurmCommandOperator:
        return SlurmCommandOperator(task_id=kind, command=spec, job_name=names[kind], ssh_conn_id=NO_REQUEUE_CONN_ID,
                                    poll_interval_s=POLL_S, deferrable=deferrable)

    deferred_try = operator("deferred", True)
    with pytest.raises(TaskDeferred) as deferred:
        deferred_try.execute(contexts["deferred"])
    hook = SlurmHook(NO_REQUEUE_CONN_ID)
    with ThreadPoolExecutor(2) as pool:
        polled_try = pool.submit(operator("polled", False).execute, contexts["polled"])
        event = pool.submit(first_event, deferred.value.trigger, 60)
        first_ids = wait_until("both jobs submitted", lambda: (
            ids if len(ids := [job_id for name in names.values() for job_id, _ in jobs_named(name)]) == 2 else None))
        wait_until("both jobs running", lambda: running(hook, *first_ids))
        down_at = time.monotonic()
        subprocess.run(["scontrol", "update", f"NodeName={NODE}", "State=DOWN", "Reason=pytest-node-failure"],
                       check=True, timeout=30)
        polled_error, payload = polled_try.exception(timeout=60), event.result(timeout=60)
        seen_after_s = time.monotonic() - down_at
    assert isinstance(polled_error, AirflowException) and not isinstance(polled_error, AirflowFailException)
    assert "ended NODE_FAIL" in str(polled_error)
    assert payload["status"] == "failed" and payload["retryable"] and payload["job"]["state"] == "NODE_FAIL"
    with pytest.raises(AirflowException, match="ended NODE_FAIL") as caught:
        deferred_try.execute_complete(contexts["deferred"], payload)
    assert not isinstance(caught.value, AirflowFailException)
    # the administrator resumes the node (ReturnToService=2 may already have: then Slurm refuses the update)
    subprocess.run(["scontrol", "update", f"NodeName={NODE}", "State=RESUME"], capture_output=True, timeout=30)
    retried_at = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # the Airflow retries of both tasks
        results = dict(zip(names, pool.map(lambda kind: operator(kind, False).execute(contexts[kind]), names)))
    retry_s = time.monotonic() - retried_at
    for kind, name in names.items():
        result = results[kind]
        assert (result["state"], result["exit_code"], result["reattached"]) == ("COMPLETED", 0, False)
        assert Path(result["stdout_path"]).read_text() == "picked 17\n"
        assert [state for _, state in jobs_named(name)] == ["NODE_FAIL", "COMPLETED"]  # exactly one resubmission
    print(f"\nFAULT node DOWN, no requeue: NODE_FAIL seen {seen_after_s:.1f} s after the node went down, both "
          f"retries completed in {retry_s:.1f} s; jobs per name: 2 (NODE_FAIL + COMPLETED)")


def test_node_down_with_slurms_default_requeue_is_waited_for_not_resubmitted(conns, healthy_afterwards):
    """Slurm's default (JobRequeue=1, as in local_slurm.sh): the job goes back to PENDING under the same id
    (Restarts=1) and runs again; the watcher keeps waiting and reads the second run's output; a retry of the
    task meanwhile re-attaches to it. Slurm holds a requeued job for 120 s (Reason=BeginTime; measured: the
    job started again 149 s after the node failure); the test releases it at once as an administrator can."""
    name = unique_name("extract")
    spec = python_spec("import os, time; time.sleep(3); print('run', os.environ.get('SLURM_RESTART_COUNT', 0))")
    hook = SlurmHook()
    job = hook.submit(spec, name)
    wait_until("the job running", lambda: running(hook, job.job_id))
    with ThreadPoolExecutor(1) as pool:
        waited = pool.submit(hook.wait, job, POLL_S, 60)
        subprocess.run(["scontrol", "update", f"NodeName={NODE}", "State=DOWN", "Reason=pytest-node-failure"],
                       check=True, timeout=30)
        requeued = wait_until("the job requeued", lambda: (
            status if (status := hook.status(job.job_id)).state == "PENDING" else None))
        retry = SlurmHook().submit(spec, name)
        subprocess.run(["scontrol", "update", f"NodeName={NODE}", "State=RESUME"], capture_output=True, timeout=30)
        subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"], check=True, timeout=30)
        status = waited.result(timeout=60)
    assert requeued.state == "PENDING" and (retry.reattached, retry.job_id) == (True, job.job_id)
    assert (status.state, status.exit_code) == ("COMPLETED", 0)
    assert hook.read_output(job) == "run 1\n"  # the requeued run's output (Slurm truncates the file again)
    assert jobs_named(name) == [(job.job_id, "COMPLETED")]
    print("\nFAULT node DOWN, Slurm requeues: the same job id waited for and read; jobs of the name: 1")


def test_slurmctld_down_longer_than_scontrol_waits_is_not_read_as_a_lost_job(conns, healthy_afterwards, capfd):
    """The job ends while slurmctld is down; scontrol then fails ("Unable to contact slurm controller") and
    the jobcomp file has no record yet: before the fix, the status command fell through to the jobcomp file
    and the watcher reported the job unknown. Now both watchers keep asking and read the job afterwards."""
    name = unique_name("ctffind")
    spec = python_spec("import time; time.sleep(3); print('ctf fitted')")
    hook = SlurmHook()
    with ThreadPoolExecutor(2) as pool:
        job, waited, event = watch_running_job(pool, hook, "cryoem_slurm", spec, name, 120)
        fault_at = time.monotonic()
        stop_daemon(SLURMCTLD_PID_FILE)
        time.sleep(SLURMCTLD_DOWN_S)
        back_at = time.monotonic()
        start_local_slurm("rest")
        (status, waited_at), (payload, event_at) = waited.result(timeout=120), event.result(timeout=120)
    assert (status.state, status.exit_code) == ("COMPLETED", 0)
    assert payload["status"] == "success"
    logged = "".join(capfd.readouterr())
    assert "slurmctld did not answer" in logged  # the outage was really seen (not hidden in scontrol's retries)
    assert hook.read_output(job) == "ctf fitted\n" and jobs_named(name) == [(job.job_id, "COMPLETED")]
    print(f"\nFAULT slurmctld restart: down {back_at - fault_at:.1f} s, read by the hook "
          f"{waited_at - back_at:.1f} s and the trigger {event_at - back_at:.1f} s after the start command; "
          f"jobs of the name: 1")


def test_slurmrestd_restarted_under_a_running_job_hook_and_trigger_read_it(conns, healthy_afterwards, capfd):
    name = unique_name("restpick")
    spec = python_spec("import time; time.sleep(6); print('picked over REST')")
    hook = SlurmRestHook(REST_CONN_ID)
    with ThreadPoolExecutor(2) as pool:
        job, waited, event = watch_running_job(pool, hook, REST_CONN_ID, spec, name, 90)
        time.sleep(1)  # both watchers polling
        fault_at = time.monotonic()
        start_local_slurm("stop-rest")
        time.sleep(DAEMON_DOWN_S)
        back_at = time.monotonic()  # the start command; the daemon answers within about a second of it
        start_local_slurm("rest")
        (status, waited_at), (payload, event_at) = waited.result(timeout=90), event.result(timeout=90)
    assert (status.state, status.exit_code) == ("COMPLETED", 0) and payload["status"] == "success"
    logged = "".join(capfd.readouterr())
    assert "cannot reach slurmrestd" in logged and "unreachable" in logged  # hook and trigger saw the outage
    assert hook.read_output(job) == "picked over REST\n"
    assert hook.find_job(name) == job.job_id and jobs_named(name) == [(job.job_id, "COMPLETED")]
    print(f"\nFAULT slurmrestd restart: down {back_at - fault_at:.1f} s, read by the hook "
          f"{waited_at - back_at:.1f} s and the trigger {event_at - back_at:.1f} s after the start command; "
          f"jobs of the name: 1")


def test_an_unreachable_controller_is_an_outage_and_requeue_is_a_site_setting():
    """Without a cluster: what the status command prints while slurmctld is down is SlurmUnavailable (not None,
    which means "Slurm knows no such job"), and slurm_requeue reaches sbatch and slurmrestd alike."""
    with pytest.raises(SlurmUnavailable, match="Unable to contact slurm controller"):
        parse_job_status(7, "unreachable|slurm_load_jobs error: Unable to contact slurm controller (connect failure)")
    assert parse_job_status(7, "") is None
    spec = python_spec("print(1)")
    for requeue, flag in ((False, "--no-requeue"), (True, "--requeue")):
        settings = SlurmSettings.from_extras({"slurm_requeue": str(requeue).lower()})
        assert flag in submit_command(spec, settings, "cryoem-pick-1").split()
        assert rest_submission(spec, settings, "cryoem-pick-1", {})["job"]["requeue"] is requeue
    assert "requeue" not in submit_command(spec, SlurmSettings(), "cryoem-pick-1")  # the cluster's JobRequeue
