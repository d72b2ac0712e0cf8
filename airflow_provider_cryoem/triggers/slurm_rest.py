"""SlurmRestJobTrigger: SlurmJobTrigger's wait, through slurmrestd (async httpx) instead of SSH.

The events are SlurmJobTrigger's, so the operators resume the same way whichever transport the
connection names; `slurm_job_trigger` picks the trigger from the connection's type.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from airflow.sdk import BaseHook
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_cryoem.hooks.slurm_rest import RestEndpoint, checked_body, job_status, read_tail
from airflow_provider_cryoem.triggers.slurm import SlurmJobTrigger


def slurm_job_trigger(conn_id: str, job_id: int, stderr_path: str, jobcomp_file: str | None,
                      poll_interval_s: float) -> BaseTrigger:
    """The trigger for a job submitted through `conn_id`: slurmrestd for an HTTP(S) connection, else SSH."""
    trigger = (SlurmRestJobTrigger if BaseHook.get_connection(conn_id).conn_type in ("http", "https")
               else SlurmJobTrigger)
    return trigger(conn_id, job_id, stderr_path, jobcomp_file=jobcomp_file, poll_interval_s=poll_interval_s)


class SlurmRestJobTrigger(BaseTrigger):
    """Poll one job through slurmrestd until it ends; one event with its state and, on failure, its stderr
    tail, read from the shared job folder where the triggerer mounts it (else empty)."""

    def __init__(self, slurm_conn_id: str, job_id: int, stderr_path: str, jobcomp_file: str | None = None,
                 poll_interval_s: float = 10.0, request_timeout_s: float = 30.0,
                 max_reconnect_attempts: int = 5) -> None:
        super().__init__()
        self.slurm_conn_id = slurm_conn_id
        self.job_id = int(job_id)
        self.stderr_path = stderr_path
        self.jobcomp_file = jobcomp_file
        self.poll_interval_s = poll_interval_s
        self.request_timeout_s = request_timeout_s
        self.max_reconnect_attempts = max_reconnect_attempts

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("airflow_provider_cryoem.triggers.slurm_rest.SlurmRestJobTrigger", {
            "slurm_conn_id": self.slurm_conn_id, "job_id": self.job_id, "stderr_path": self.stderr_path,
            "jobcomp_file": self.jobcomp_file, "poll_interval_s": self.poll_interval_s,
            "request_timeout_s": self.request_timeout_s, "max_reconnect_attempts": self.max_reconnect_attempts,
        })

    def _event(self, status: str, message: str, **payload: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "job_id": self.job_id, "message": message,
                             "stderr_path": self.stderr_path, **payload})

    async def _request(self, client: httpx.AsyncClient, endpoint: RestEndpoint, method: str,
                       missing_ok: bool = False) -> dict[str, Any]:
        response = await client.request(method, f"{endpoint.base_url}/job/{self.job_id}",
                                        headers=endpoint.headers(), timeout=self.request_timeout_s)
        return checked_body(response, f"job {self.job_id}", f"{endpoint.base_url} ({self.slurm_conn_id!r})",
                            missing_ok)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        failures = 0
        try:
            endpoint = RestEndpoint.from_connection(await BaseHook.aget_connection(self.slurm_conn_id))
            async with httpx.AsyncClient() as client:
                while True:
                    try:
                        body = await self._request(client, endpoint, "GET", missing_ok=True)
                    except httpx.TransportError as exc:
                        failures += 1
                        if failures > self.max_reconnect_attempts:
                            raise
                        self.log.warning("slurmrestd of %s unreachable (%d/%d): %s", self.slurm_conn_id, failures,
                                         self.max_reconnect_attempts, exc)
                        await asyncio.sleep(min(2 ** failures, 30))
                        continue
                    failures = 0
                    status = job_status(self.job_id, body, self.jobcomp_file)
                    if status is None:
                        yield self._event("error", f"Slurm job {self.job_id} is unknown to slurmrestd and the "
                                                   f"jobcomp file")
                        return
                    if status.finished:
                        yield self._event("success" if status.succeeded else "failed", status.describe(),
                                          job=status.model_dump(), retryable=status.retryable,
                                          stderr_tail=[] if status.succeeded else read_tail(self.stderr_path))
                        return
                    await asyncio.sleep(self.poll_interval_s)
        except Exception as exc:  # the event is how the task learns about it; never crash the triggerer
            self.log.exception("Slurm REST job trigger failed")
            yield self._event("error", f"watching Slurm job {self.job_id} failed: {type(exc).__name__}: {exc}")

    async def on_kill(self) -> None:
        """The user killed the deferred task: cancel the job so it stops using the cluster."""
        endpoint = RestEndpoint.from_connection(await BaseHook.aget_connection(self.slurm_conn_id))
        async with httpx.AsyncClient() as client:
            await self._request(client, endpoint, "DELETE")
        self.log.info("cancelled Slurm job %s", self.job_id)
