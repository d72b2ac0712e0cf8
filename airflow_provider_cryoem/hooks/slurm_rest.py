"""SlurmRestHook: the same Slurm jobs as SlurmHook, through the Slurm REST API (slurmrestd) instead of SSH.

The connection is an HTTP one: host/port/schema (or a full URL as host) of slurmrestd, login = the Slurm
user, password = a JWT from `scontrol token` (or extra `slurm_rest_token_file`, read at every request, for a
token that a cron job renews). The token travels only in the X-SLURM-USER-TOKEN header and is never logged.
The `slurm_*` extras are the SSH connection's site settings, with `slurm_remote_workdir` an absolute path on
shared storage: slurmrestd cannot read files, so this hook reads a job's stdout and stderr from the worker's
own mount of that folder (the same path as on the cluster).
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

import httpx
from airflow.sdk import BaseHook
from pydantic import BaseModel, SecretStr

from airflow_provider_cryoem.execution.slurm import (
    STDERR_TAIL_LINES,
    SlurmJob,
    SlurmJobStatus,
    SlurmSettings,
    parse_job_status,
    reattachable_job,
    rest_job_status,
    rest_submission,
)
from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.hooks.slurm import (
    SlurmCommandError,
    SlurmConnectionError,
    SlurmHostUnavailable,
    SlurmJobs,
)

DEFAULT_REST_CONN_ID = "cryoem_slurm_rest"
# The Debian 12 slurmrestd (22.05) serves v0.0.36 to v0.0.38; this is the newest of them (its /openapi/v3).
DEFAULT_API_VERSION = "v0.0.38"
DEFAULT_PORT = 6820
_REQUEST_TIMEOUT_S = 30.0
# slurmrestd starts a job with exactly this environment (it has none of the user's); modules and the
# connection's set-up lines add to it in the batch script.
DEFAULT_JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RestEndpoint(BaseModel):
    """What a connection says about slurmrestd: where, as whom, with which token, and the site settings."""

    base_url: str
    user: str
    token: SecretStr | None
    token_file: str | None
    job_path: str
    settings: SlurmSettings

    @classmethod
    def from_connection(cls, connection: Any) -> "RestEndpoint":
        extras = connection.extra_dejson
        settings = SlurmSettings.from_extras(extras)
        if not os.path.isabs(settings.remote_workdir):
            raise ValueError(f"Airflow connection {connection.conn_id!r}: slurm_remote_workdir must be an absolute "
                             f"path on storage that both the cluster and the workers mount (got "
                             f"{settings.remote_workdir!r})")
        host = connection.host or "127.0.0.1"
        base = host if "://" in host else f"{connection.schema or 'http'}://{host}:{connection.port or DEFAULT_PORT}"
        endpoint = cls(base_url=f"{base.rstrip('/')}/slurm/{extras.get('slurm_rest_api_version', DEFAULT_API_VERSION)}",
                       user=connection.login or "root", token=connection.password or None,
                       token_file=extras.get("slurm_rest_token_file"),
                       job_path=extras.get("slurm_rest_job_path", DEFAULT_JOB_PATH), settings=settings)
        if endpoint.token is None and not endpoint.token_file:
            raise ValueError(f"Airflow connection {connection.conn_id!r} has neither a password (a JWT from "
                             f"`scontrol token`) nor extra slurm_rest_token_file")
        return endpoint

    def headers(self) -> dict[str, str]:
        """The auth headers; a token file is read each time, so a renewed token is picked up."""
        token = (self.token.get_secret_value() if self.token is not None
                 else Path(self.token_file).read_text().strip().removeprefix("SLURM_JWT="))
        return {"X-SLURM-USER-NAME": self.user, "X-SLURM-USER-TOKEN": token}


def checked_body(response: httpx.Response, what: str, where: str, missing_ok: bool = False) -> dict[str, Any]:
    """The JSON of an answer, or an error; slurmrestd reports failures in `errors` (an unknown job id is
    HTTP 500 with error 2017, which `missing_ok` lets through; a rejected token, 22.05: 500 "Unspecified")."""
    if response.status_code in (401, 403):
        raise SlurmConnectionError(f"slurmrestd at {where} refused the request (HTTP {response.status_code}): "
                                   f"check the connection's login and token (scontrol token; it may have expired)")
    try:
        body = response.json()
    except ValueError:
        raise SlurmCommandError(f"{what}: slurmrestd at {where} answered HTTP {response.status_code} "
                                f"without JSON: {response.text[:200]!r}") from None
    errors = body.get("errors") or []
    if missing_ok and any(error.get("error_number") == 2017 for error in errors):
        return body
    if response.status_code >= 400 or errors:
        described = "; ".join(f"{error.get('error', '')}: {error.get('description', '')}" for error in errors)
        raise SlurmCommandError(f"{what} failed on slurmrestd at {where} (HTTP {response.status_code}): "
                                f"{described or response.text[:200]}")
    return body


def job_status(job_id: int, body: dict[str, Any], jobcomp_file: str | None) -> SlurmJobStatus | None:
    """From a `GET job/{id}` answer, else (after MinJobAge) the jobcomp record, where this machine mounts it."""
    jobs = body.get("jobs") or []
    if jobs:
        return rest_job_status(jobs[0])
    if not jobcomp_file or not os.path.exists(jobcomp_file):
        return None
    prefix = f"JobId={job_id} "
    with open(jobcomp_file, encoding="utf-8", errors="replace") as records:
        lines = [line for line in records if line.startswith(prefix)]
    return parse_job_status(job_id, lines[-1]) if lines else None


def read_tail(path: str) -> list[str]:
    """The end of a job's output file on the shared folder (slurmrestd cannot read files)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as output:
            return [line.rstrip("\n") for line in deque(output, maxlen=STDERR_TAIL_LINES)]
    except OSError:
        return []


class SlurmRestHook(SlurmJobs, BaseHook):
    """Jobs through slurmrestd's JSON API; output files are read from the shared job folder."""

    conn_name_attr = "slurm_conn_id"
    default_conn_name = DEFAULT_REST_CONN_ID
    conn_type = "http"
    hook_name = "Slurm (REST API)"

    def __init__(self, slurm_conn_id: str = DEFAULT_REST_CONN_ID) -> None:
        super().__init__()
        self.slurm_conn_id = slurm_conn_id
        self.endpoint = RestEndpoint.from_connection(self.get_connection(slurm_conn_id))
        self.settings = self.endpoint.settings

    @property
    def base_url(self) -> str:
        return self.endpoint.base_url

    @property
    def where(self) -> str:
        return f"{self.base_url} (connection {self.slurm_conn_id!r})"

    @property
    def jobcomp_file(self) -> str | None:
        return self.settings.jobcomp_file

    def _request(self, method: str, path: str, what: str, json: dict[str, Any] | None = None,
                 missing_ok: bool = False) -> dict[str, Any]:
        try:
            response = httpx.request(method, f"{self.base_url}/{path}", headers=self.endpoint.headers(),
                                     json=json, timeout=_REQUEST_TIMEOUT_S)
        except httpx.TransportError as exc:  # slurmrestd down or restarting: SlurmJobs.wait asks again
            raise SlurmHostUnavailable(f"cannot reach slurmrestd at {self.where}: {type(exc).__name__}: {exc}"
                                       ) from None
        return checked_body(response, what, self.where, missing_ok)

    def find_job(self, name: str) -> int | None:
        jobs = self._request("GET", "jobs", "listing jobs").get("jobs", [])
        return reattachable_job(sorted((job["job_id"], str(job["job_state"]).split()[0].upper())
                                       for job in jobs if job.get("name") == name))

    def _submit_new(self, spec: CommandSpec, name: str) -> int:
        """POST the script and options (the worker creates the shared job folder: Slurm would not)."""
        os.makedirs(self.settings.remote_workdir, exist_ok=True)
        body = rest_submission(spec, self.settings, name, {"PATH": self.endpoint.job_path})
        return int(self._request("POST", "job/submit", "submitting a job", json=body)["job_id"])

    def status(self, job_id: int) -> SlurmJobStatus:
        status = job_status(int(job_id), self._request("GET", f"job/{int(job_id)}", "job status", missing_ok=True),
                            self.jobcomp_file)
        if status is None:
            raise SlurmCommandError(f"Slurm job {job_id} is unknown to slurmrestd and the jobcomp file "
                                    f"{self.jobcomp_file or '(none configured)'}")
        return status

    def read_tail(self, path: str) -> list[str]:
        return read_tail(path)

    def read_output(self, job: SlurmJob) -> str:
        try:
            return Path(job.stdout_path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise SlurmCommandError(f"reading the output of Slurm job {job.job_id} from the shared folder "
                                    f"{self.settings.remote_workdir} failed on this worker: {exc}") from None

    def cancel(self, job_id: int) -> None:
        self._request("DELETE", f"job/{int(job_id)}", "cancelling a job")
        self.log.info("cancelled Slurm job %s", job_id)
