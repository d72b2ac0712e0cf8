"""SlurmCommandOperator: run one CommandSpec as a Slurm batch job (over SSH or slurmrestd), optionally deferrable.

Submission re-attaches to a queued, running or completed job of the same name (see
`execution.slurm.job_name`), so an Airflow retry never runs the same work twice on the cluster.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.configuration import conf
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_cryoem.execution.slurm import SlurmJob, SlurmJobStatus
from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.hooks.slurm import (
    DEFAULT_CONN_ID,
    SlurmJobError,
    SlurmJobs,
    slurm_hook,
)
from airflow_provider_cryoem.triggers.slurm_rest import slurm_job_trigger

XCOM_KEY = "slurm_job"


class SlurmCommandOperator(BaseOperator):
    """Submit `command` as a batch job, then wait (poll here, or defer to the connection's job trigger).

    `ssh_conn_id` names the cluster: an SSH connection, or an HTTP one for slurmrestd (hooks.slurm_rest)."""

    template_fields: Sequence[str] = ("command", "job_name", "ssh_conn_id")
    ui_color = "#d9e7f5"

    def __init__(self, *, command: CommandSpec | dict[str, Any], job_name: str,
                 ssh_conn_id: str = DEFAULT_CONN_ID, poll_interval_s: float | None = None,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Kept as a dict so Jinja can render paths inside it.
        self.command = command.model_dump() if isinstance(command, CommandSpec) else dict(command)
        self.job_name = job_name
        self.ssh_conn_id = ssh_conn_id
        self.poll_interval_s = poll_interval_s
        self.deferrable = deferrable
        self._job: SlurmJob | None = None

    def _hook(self) -> SlurmJobs:
        """SSH or slurmrestd, as the connection says (see hooks.slurm.slurm_hook)."""
        return slurm_hook(self.ssh_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        spec = CommandSpec.model_validate(self.command)
        hook = self._hook()
        self._job = hook.submit(spec, self.job_name)
        context["ti"].xcom_push(key=XCOM_KEY, value=self._job.model_dump())
        if self.deferrable:
            self.defer(trigger=slurm_job_trigger(
                self.ssh_conn_id, self._job.job_id, self._job.stderr_path, jobcomp_file=hook.jobcomp_file,
                poll_interval_s=self.poll_interval_s or hook.settings.poll_interval_s,
            ), method_name="execute_complete")
        status = hook.wait(self._job, self.poll_interval_s)
        try:
            hook.raise_for_status(spec.program, self._job, status)
        except SlurmJobError as exc:
            raise _airflow_error(str(exc), exc.retryable) from None
        return _result(self._job, status)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Back from the trigger: return the job result, or fail with the end of its stderr."""
        job = SlurmJob.model_validate(context["ti"].xcom_pull(task_ids=self.task_id, key=XCOM_KEY))
        self._job = job
        if event.get("status") != "success":
            tail = event.get("stderr_tail") or []
            message = f"{self.command['program']}: {event.get('message', 'Slurm job failed')}"
            if tail:
                message += f" (stderr: {job.stderr_path})\n--- last lines of its output ---\n" + "\n".join(tail)
            raise _airflow_error(message, retryable=event.get("status") == "error" or event.get("retryable", False))
        return _result(job, SlurmJobStatus.model_validate(event["job"]))

    def on_kill(self) -> None:
        """The task was killed while polling: cancel the job so it does not keep the cluster busy."""
        if self._job is not None:
            self._hook().cancel(self._job.job_id)


def _airflow_error(message: str, retryable: bool) -> AirflowException:
    """Machine trouble (node failure, pre-emption, lost watcher) may pass on retry; a failing program won't."""
    return AirflowException(message) if retryable else AirflowFailException(message)


def _result(job: SlurmJob, status: SlurmJobStatus) -> dict[str, Any]:
    return {"job_id": job.job_id, "job_name": job.job_name, "state": status.state, "exit_code": status.exit_code,
            "stdout_path": job.stdout_path, "reattached": job.reattached}
