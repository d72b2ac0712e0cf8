"""SlurmHook: submit, watch and cancel Slurm batch jobs over the SSH provider's SSHHook.

`SlurmJobs` is what the stages and SlurmCommandOperator use of any cluster transport (re-attach by name,
wait, turn a failed job into an error); `slurm_hook` picks SlurmHook or the REST API's SlurmRestHook
(`hooks/slurm_rest.py`) from the Airflow connection's type.

Site settings (partition, account, qos, gres/gpus, cpus, memory, time limit, modules, set-up lines,
remote work folder) come from the SSH connection's `slurm_*` extras, so one connection describes one
cluster. The command text itself is built by `execution.slurm`; this hook only carries it over SSH.
"""
from __future__ import annotations

import shlex
import time
from abc import ABC, abstractmethod
from functools import cached_property
from typing import Any

import paramiko
from airflow.providers.ssh.hooks.ssh import SSHHook
from airflow.sdk import BaseHook

from airflow_provider_cryoem.execution.errors import ToolExecutionError
from airflow_provider_cryoem.execution.slurm import (
    OUTAGE_TOLERANCE_S,
    SlurmJob,
    SlurmJobStatus,
    SlurmOutage,
    SlurmSettings,
    SlurmUnavailable,
    cancel_command,
    find_jobs_command,
    job_paths,
    jobcomp_location_command,
    parse_found_jobs,
    parse_job_status,
    parse_submitted_job_id,
    reattachable_job,
    status_command,
    submit_command,
    tail_command,
)
from airflow_provider_cryoem.execution.spec import CommandSpec

DEFAULT_CONN_ID = "cryoem_slurm"
_COMMAND_TIMEOUT_S = 60.0


class SlurmConnectionError(ConnectionError):
    """The cluster's login node cannot be reached or refuses the credentials of the connection."""


class SlurmHostUnavailable(SlurmConnectionError, SlurmUnavailable):
    """The login node's sshd (or slurmrestd) cannot be reached or dropped the connection: unlike refused
    credentials, this passes when the daemon is back, so a watcher keeps asking (SlurmJobs.wait)."""


class SlurmJobError(ToolExecutionError):
    """A Slurm job ended without success; carries its state and whether a retry may help."""

    def __init__(self, program: str, status: SlurmJobStatus, stderr_tail: list[str], stderr_path: str) -> None:
        self.status = status
        self.retryable = status.retryable
        super().__init__(program, status.describe(), stderr_tail, stderr_path)


class SlurmCommandError(RuntimeError):
    """A Slurm client command (sbatch, squeue, scontrol, scancel) itself failed on the login node."""


class SlurmJobs(ABC):
    """Submit / status / cancel / re-attach by name, whatever carries them to the cluster (SSH or slurmrestd).

    A transport supplies the primitives (find a job by name, submit, status, cancel, read files); the
    semantics the stages rely on (never two jobs of one name, waiting, what counts as failure) live here once.
    """

    settings: SlurmSettings
    log: Any

    @property
    @abstractmethod
    def where(self) -> str:
        """The cluster's address, for log lines and errors (never a credential)."""

    @property
    @abstractmethod
    def jobcomp_file(self) -> str | None:
        """Where finished jobs are recorded when Slurm has forgotten them (jobcomp/filetxt)."""

    @abstractmethod
    def find_job(self, name: str) -> int | None:
        """A job of this name that is queued, running or completed, so it is not submitted twice."""

    @abstractmethod
    def _submit_new(self, spec: CommandSpec, name: str) -> int:
        """Submit the batch job (nothing of its script or environment logged); its id."""

    @abstractmethod
    def status(self, job_id: int) -> SlurmJobStatus: ...

    @abstractmethod
    def read_tail(self, path: str) -> list[str]:
        """The last lines of a job's output file (empty when it does not exist)."""

    @abstractmethod
    def read_output(self, job: SlurmJob) -> str: ...

    @abstractmethod
    def cancel(self, job_id: int) -> None: ...

    def job(self, job_id: int, name: str, reattached: bool = False) -> SlurmJob:
        _, stdout_path, stderr_path = job_paths(self.settings, name, job_id)
        return SlurmJob(job_id=job_id, job_name=name, stdout_path=stdout_path, stderr_path=stderr_path,
                        reattached=reattached)

    def submit(self, spec: CommandSpec, name: str) -> SlurmJob:
        """Re-attach to a live or completed job called `name`, else submit it."""
        existing = self.find_job(name)
        if existing is not None:
            self.log.info("re-attaching to Slurm job %s (%s) instead of submitting again", existing, name)
            return self.job(existing, name, reattached=True)
        job_id = self._submit_new(spec, name)
        self.log.info("submitted %s as Slurm job %s (%s) on %s", spec.program, job_id, name, self.where)
        return self.job(job_id, name)

    def raise_for_status(self, program: str, job: SlurmJob, status: SlurmJobStatus) -> None:
        """Raise SlurmJobError with the end of the job's stderr unless it completed with status 0."""
        if not status.succeeded:
            raise SlurmJobError(program, status, self.read_tail(job.stderr_path), job.stderr_path)

    def wait(self, job: SlurmJob, poll_interval_s: float | None = None, timeout_s: float | None = None,
             outage_tolerance_s: float = OUTAGE_TOLERANCE_S) -> SlurmJobStatus:
        """Poll until the job ends (blocking; the trigger does the same without holding a worker).

        While Slurm cannot answer (SlurmUnavailable: slurmctld, sshd or slurmrestd restarting) the job is still
        there, so polling goes on for up to `outage_tolerance_s` of continuous outage.
        """
        interval_s = poll_interval_s or self.settings.poll_interval_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        outage = SlurmOutage(outage_tolerance_s)
        while True:
            try:
                status = self.status(job.job_id)
            except SlurmUnavailable as exc:
                outage.note(exc, self.log)
                state = "unanswered"
            else:
                outage.over(self.log)
                if status.finished:
                    return status
                state = status.state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Slurm job {job.job_id} still {state} after {timeout_s:g} s")
            time.sleep(interval_s)


def slurm_hook(conn_id: str = DEFAULT_CONN_ID) -> SlurmJobs:
    """The transport a connection names: an HTTP(S) connection is slurmrestd, anything else SSH."""
    if BaseHook.get_connection(conn_id).conn_type in ("http", "https"):
        from .slurm_rest import SlurmRestHook

        return SlurmRestHook(conn_id)
    return SlurmHook(ssh_conn_id=conn_id)


class SlurmHook(SlurmJobs, SSHHook):
    """SSHHook plus the Slurm client commands; credentials are never logged (only the commands are, except the
    submission line and batch script)."""

    default_conn_name = DEFAULT_CONN_ID
    hook_name = "Slurm (over SSH)"

    def __init__(self, ssh_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(ssh_conn_id=ssh_conn_id, **kwargs)
        self.settings = SlurmSettings.from_extras(self.get_connection(ssh_conn_id).extra_dejson)

    # -- transport -------------------------------------------------------------------------------
    def _client(self) -> paramiko.SSHClient:
        where = f"{self.username}@{self.remote_host}:{self.port}"
        try:
            return self.get_conn()
        except paramiko.AuthenticationException:
            raise SlurmConnectionError(
                f"SSH authentication as {where} failed for Airflow connection {self.ssh_conn_id!r}: "
                f"check its login and key_file / private_key") from None
        except (paramiko.SSHException, OSError) as exc:
            raise SlurmHostUnavailable(
                f"cannot open SSH to {where} (Airflow connection {self.ssh_conn_id!r}): "
                f"{type(exc).__name__}: {exc}") from None

    def run_remote(self, command: str, timeout_s: float = _COMMAND_TIMEOUT_S) -> tuple[int, str, str]:
        """Run one shell line on the login node: (exit status, stdout, stderr); SSHHook logs the line at INFO.

        A connection that drops under the command (sshd restarted, login node rebooting) is SlurmHostUnavailable,
        never an empty answer: paramiko reports such a command with exit status -1 and whatever output came.
        """
        client = self._client()
        try:
            status, stdout, stderr = self.exec_ssh_client_command(client, command, get_pty=False,
                                                                  environment=None, timeout=timeout_s)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self._drop_client()
            raise SlurmHostUnavailable(f"SSH to {self.remote_host} (connection {self.ssh_conn_id!r}) dropped: "
                                       f"{type(exc).__name__}: {exc}") from None
        if status == -1:
            self._drop_client()
            raise SlurmHostUnavailable(f"SSH to {self.remote_host} (connection {self.ssh_conn_id!r}) closed "
                                       f"before the command reported its exit status")
        return status, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")

    def _drop_client(self) -> None:
        """Forget a broken SSH client so the next command connects afresh."""
        if self.client is not None:
            self.client.close()
            self.client = None

    def _run_unlogged(self, command: str, timeout_s: float = _COMMAND_TIMEOUT_S) -> tuple[int, str, str]:
        """run_remote for the submission line, which carries the whole batch script (the site's set-up lines,
        the job's environment) base64-coded: SSHHook would log it at INFO, so paramiko is called directly."""
        _, stdout, stderr = self._client().exec_command(command, timeout=timeout_s)
        try:
            out, err = stdout.read(), stderr.read()
        except TimeoutError:
            raise SlurmCommandError(f"no answer from {self.remote_host} within {timeout_s:g} s "
                                    f"(connection {self.ssh_conn_id!r})") from None
        return stdout.channel.recv_exit_status(), out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def _checked(self, command: str, what: str, log_command: bool = True) -> str:
        run = self.run_remote if log_command else self._run_unlogged
        status, stdout, stderr = run(command)
        if status != 0:
            raise SlurmCommandError(f"{what} failed with status {status} on {self.remote_host} "
                                    f"(connection {self.ssh_conn_id!r}): {stderr.strip() or stdout.strip()}")
        return stdout

    # -- jobs ------------------------------------------------------------------------------------
    @cached_property
    def jobcomp_file(self) -> str | None:
        """Where finished jobs are recorded when scontrol has forgotten them (jobcomp/filetxt)."""
        if self.settings.jobcomp_file:
            return self.settings.jobcomp_file
        location = self._checked(jobcomp_location_command(), "scontrol show config").strip()
        return location if location.startswith("/") else None

    @property
    def where(self) -> str:
        return f"{self.remote_host} (connection {self.ssh_conn_id!r})"

    def find_job(self, name: str) -> int | None:
        """A job of this name that is queued, running or completed, so it is not submitted twice."""
        return reattachable_job(parse_found_jobs(self._checked(find_jobs_command(name), "squeue")))

    def _submit_new(self, spec: CommandSpec, name: str) -> int:
        """Write the batch script and sbatch it. Neither the script nor the line that uploads it is logged: the
        set-up lines and the job's environment may hold site credentials. The script stays on the cluster."""
        script_path, _, _ = job_paths(self.settings, name)
        self.log.info("writing the batch script of %s to %s on %s and submitting it", name, script_path,
                      self.remote_host)
        return parse_submitted_job_id(self._checked(submit_command(spec, self.settings, name), "sbatch",
                                                    log_command=False))

    def status(self, job_id: int) -> SlurmJobStatus:
        _, stdout, _ = self.run_remote(status_command(job_id, self.jobcomp_file))
        status = parse_job_status(job_id, stdout)
        if status is None:
            raise SlurmCommandError(f"Slurm job {job_id} is unknown to scontrol, sacct and the jobcomp file "
                                    f"{self.jobcomp_file or '(none configured)'}")
        return status

    def read_tail(self, path: str) -> list[str]:
        _, stdout, _ = self.run_remote(tail_command(path))
        return stdout.splitlines()

    def read_output(self, job: SlurmJob) -> str:
        return self._checked(f"cat -- {shlex.quote(job.stdout_path)}", "reading the job output")

    def cancel(self, job_id: int) -> None:
        self._checked(cancel_command(job_id), "scancel")
        self.log.info("cancelled Slurm job %s", job_id)
