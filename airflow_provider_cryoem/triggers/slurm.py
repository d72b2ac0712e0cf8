"""SlurmJobTrigger: wait for a Slurm job in the triggerer, over the SSH provider's async hook.

Same pattern as the SSH provider's SSHRemoteJobTrigger: one asyncssh connection reused for the whole
poll loop, reconnect with backoff when it drops, and a single event when the job has ended, so a
deferred task holds no worker slot while Slurm runs the program.
"""
from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
from airflow.providers.ssh.hooks.ssh import SSHHookAsync
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_cryoem.execution.slurm import (
    OUTAGE_TOLERANCE_S,
    SlurmOutage,
    SlurmUnavailable,
    cancel_command,
    parse_job_status,
    status_command,
    tail_command,
)

# Errors of the connection, not of the job: reconnect instead of failing.
_CONNECTION_ERRORS = (OSError, asyncssh.Error, TimeoutError)


class SlurmJobTrigger(BaseTrigger):
    """Poll one Slurm job until it ends; the event carries its state and, on failure, its stderr tail."""

    def __init__(self, ssh_conn_id: str, job_id: int, stderr_path: str, jobcomp_file: str | None = None,
                 poll_interval_s: float = 10.0, command_timeout_s: float = 30.0,
                 max_reconnect_attempts: int = 5, outage_tolerance_s: float = OUTAGE_TOLERANCE_S) -> None:
        super().__init__()
        self.ssh_conn_id = ssh_conn_id
        self.job_id = int(job_id)
        self.stderr_path = stderr_path
        self.jobcomp_file = jobcomp_file
        self.poll_interval_s = poll_interval_s
        self.command_timeout_s = command_timeout_s
        self.max_reconnect_attempts = max_reconnect_attempts
        self.outage_tolerance_s = outage_tolerance_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("airflow_provider_cryoem.triggers.slurm.SlurmJobTrigger", {
            "ssh_conn_id": self.ssh_conn_id, "job_id": self.job_id, "stderr_path": self.stderr_path,
            "jobcomp_file": self.jobcomp_file, "poll_interval_s": self.poll_interval_s,
            "command_timeout_s": self.command_timeout_s, "max_reconnect_attempts": self.max_reconnect_attempts,
            "outage_tolerance_s": self.outage_tolerance_s,
        })

    async def _connect(self) -> asyncssh.SSHClientConnection:
        return await SSHHookAsync(ssh_conn_id=self.ssh_conn_id).get_conn()

    async def _run(self, conn: asyncssh.SSHClientConnection, command: str) -> str:
        """The command's stdout; a connection lost under it (sshd restarted) is an error to reconnect on, never
        an empty answer (asyncssh then returns a result without exit status)."""
        result = await conn.run(command, timeout=self.command_timeout_s, check=False)
        if result.exit_status is None:
            raise ConnectionResetError(f"SSH connection of {self.ssh_conn_id!r} closed before the command ended")
        stdout = result.stdout or ""
        return stdout.decode("utf-8", "replace") if isinstance(stdout, bytes) else stdout

    def _event(self, status: str, message: str, **payload: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "job_id": self.job_id, "message": message,
                             "stderr_path": self.stderr_path, **payload})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        conn: asyncssh.SSHClientConnection | None = None
        failures = 0
        outage = SlurmOutage(self.outage_tolerance_s)
        try:
            while True:
                try:
                    if conn is None:
                        conn = await self._connect()
                    status = parse_job_status(self.job_id,
                                              await self._run(conn, status_command(self.job_id, self.jobcomp_file)))
                except SlurmUnavailable as exc:  # slurmctld down or restarting: the job is still there
                    outage.note(exc, self.log)
                    await asyncio.sleep(self.poll_interval_s)
                    continue
                except _CONNECTION_ERRORS as exc:
                    failures += 1
                    if failures > self.max_reconnect_attempts:
                        raise
                    self.log.warning("SSH to %s failed (%d/%d), reconnecting: %s", self.ssh_conn_id, failures,
                                     self.max_reconnect_attempts, exc)
                    if conn is not None:
                        conn.close()
                        conn = None
                    base_s = min(2 ** (failures - 1), 30)
                    await asyncio.sleep(base_s + random.uniform(0, base_s))
                    continue
                failures = 0
                outage.over(self.log)
                if status is None:
                    yield self._event("error", f"Slurm job {self.job_id} is unknown to scontrol, sacct and "
                                               f"the jobcomp file")
                    return
                if status.finished:
                    tail = [] if status.succeeded else (await self._run(conn, tail_command(self.stderr_path))
                                                        ).splitlines()
                    yield self._event("success" if status.succeeded else "failed", status.describe(),
                                      job=status.model_dump(), retryable=status.retryable, stderr_tail=tail)
                    return
                await asyncio.sleep(self.poll_interval_s)
        except Exception as exc:  # the event is how the task learns about it; never crash the triggerer
            self.log.exception("Slurm job trigger failed")
            yield self._event("error", f"watching Slurm job {self.job_id} failed: {type(exc).__name__}: {exc}")
        finally:
            if conn is not None:
                conn.close()

    async def on_kill(self) -> None:
        """The user killed the deferred task: cancel the job so it stops using the cluster."""
        async with await self._connect() as conn:
            await self._run(conn, cancel_command(self.job_id))
        self.log.info("cancelled Slurm job %s", self.job_id)

