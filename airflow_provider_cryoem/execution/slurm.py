"""Slurm without a transport: batch scripts, sbatch/squeue/scontrol command lines and their parsing.

Everything here is plain text in, plain text out, so it is tested without a cluster; the SSH side
lives in `hooks/slurm.py` and `triggers/slurm.py`, the REST side (the same options as JSON) in
`hooks/slurm_rest.py`. Every value that reaches a shell is shlex-quoted.
"""
from __future__ import annotations

import base64
import hashlib
import math
import re
import shlex
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .spec import CommandSpec

WAITING_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
    "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
})
SUCCESS_STATES = frozenset({"COMPLETED"})
# A failure caused by the machine, not the program: running it again may well succeed.
RETRYABLE_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})
STDERR_TAIL_LINES = 20


class SlurmSettings(BaseModel):
    """Site settings read from the SSH connection's extras (`slurm_<name>` keys)."""

    model_config = ConfigDict(extra="ignore")

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres: str | None = Field(None, description="e.g. 'gpu:1'; sent as --gres.")
    gpus: int | None = Field(None, ge=0, description="Sent as --gpus; default: the command's own GPU count.")
    cpus_per_task: int | None = Field(None, ge=1, description="Default: the command's thread count.")
    memory: str | None = Field(None, pattern=r"^\d+[KMGT]?$", description="--mem, e.g. '16G'.")
    time_limit: str | None = Field(None, description="--time, e.g. '02:00:00'; default from the command.")
    requeue: bool | None = Field(None, description="--requeue / --no-requeue: whether Slurm runs a job again (same "
                                 "id) after its node failed or it was pre-empted; default: the cluster's JobRequeue "
                                 "(Slurm's default 1: requeue). With false such a job ends NODE_FAIL and the "
                                 "Airflow retry submits it again.")
    modules: list[str] = Field(default_factory=list, description="Environment modules to load.")
    setup_lines: list[str] = Field(default_factory=list, description="Shell lines run before the program.")
    remote_workdir: str = Field("cryoem-slurm-jobs", description="Where batch scripts and job logs go "
                                "(relative = under the login's home).")
    jobcomp_file: str | None = Field(None, description="Slurm JobCompLoc (jobcomp/filetxt), read when a job "
                                     "has left scontrol; asked from `scontrol show config` when not set.")
    poll_interval_s: float = Field(10.0, gt=0)

    @field_validator("modules", "setup_lines", mode="before")
    @classmethod
    def _split_text(cls, value: Any) -> Any:
        """The connection form gives text: modules comma-separated, set-up lines one per line."""
        if isinstance(value, str):
            separator = "\n" if "\n" in value else ","
            return [part.strip() for part in value.split(separator) if part.strip()]
        return value

    @classmethod
    def from_extras(cls, extras: dict[str, Any]) -> "SlurmSettings":
        prefix = "slurm_"
        values = {key[len(prefix):]: value for key, value in extras.items()
                  if key.startswith(prefix) and value not in (None, "")}
        return cls.model_validate(values)


class SlurmJob(BaseModel):
    """A submitted (or re-attached) job and where its output lands."""

    job_id: int
    job_name: str
    stdout_path: str
    stderr_path: str
    reattached: bool = False


class SlurmJobStatus(BaseModel):
    """A job's state as scontrol, sacct or the jobcomp file reported it."""

    job_id: int
    state: str
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    source: str = Field(description="scontrol, sacct or jobcomp")

    @property
    def finished(self) -> bool:
        return self.state not in WAITING_STATES

    @property
    def succeeded(self) -> bool:
        return self.state in SUCCESS_STATES and not self.exit_code

    @property
    def retryable(self) -> bool:
        return self.state in RETRYABLE_STATES

    def describe(self) -> str:
        parts = [f"Slurm job {self.job_id} ended {self.state}"]
        if self.exit_code is not None:
            parts.append(f"exit code {self.exit_code}" + (f", signal {self.signal}" if self.signal else ""))
        if self.reason and self.reason != "None":
            parts.append(f"reason {self.reason}")
        return ", ".join(parts)


def job_name(session: str, item: str, stage: str, attempt: int = 0) -> str:
    """Stable name of one unit of work, so a retried task finds the job it already submitted.

    `attempt` is a processing generation (raise it to force a fresh run), deliberately not Airflow's
    try number: a retry must re-attach to the job of the previous try.
    """
    digest = hashlib.sha256("\x00".join((session, item, stage, str(attempt))).encode()).hexdigest()[:16]
    stage_tag = re.sub(r"[^a-z0-9]+", "", stage.lower())[:20] or "stage"
    return f"cryoem-{stage_tag}-{digest}"


def _check_job_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name):
        raise ValueError(f"Slurm job name {name!r} must be 1-128 letters, digits, '_', '.', '-'")
    return name


def time_limit(spec: CommandSpec, settings: SlurmSettings) -> str | None:
    """--time: the site setting wins, else the command's own timeout rounded up to whole minutes."""
    if settings.time_limit:
        return settings.time_limit
    if spec.timeout_s is not None:
        return str(max(1, math.ceil(spec.timeout_s / 60)))
    return None


def render_batch_script(spec: CommandSpec, settings: SlurmSettings) -> str:
    """The batch script: modules, site set-up, then exactly the argument list of `spec`."""
    lines = ["#!/bin/bash", "# Written by airflow-provider-cryoem: one external program as a Slurm batch job.",
             "set -e"]
    lines += [f"module load {shlex.quote(module)}" for module in settings.modules]
    lines += settings.setup_lines  # site administrator's own shell lines, verbatim by design
    if spec.cwd:
        lines.append(f"cd -- {shlex.quote(spec.cwd)}")
    if spec.threads > 1:
        lines.append(f"export OMP_NUM_THREADS={spec.threads}")
    lines += [f"export {_env_name(key)}={shlex.quote(value)}" for key, value in sorted(spec.env.items())]
    command = "exec " + shlex.join([spec.program, *spec.args])
    if spec.stdin_text is not None:
        command += " <<< " + shlex.quote(spec.stdin_text.rstrip("\n"))
    lines.append(command)
    return "\n".join(lines) + "\n"


def _env_name(key: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise ValueError(f"environment variable name {key!r} is not a valid shell name")
    return key


def job_paths(settings: SlurmSettings, name: str, job_id: int | str = "%j") -> tuple[str, str, str]:
    """(script, stdout, stderr) paths of a job; `%j` is Slurm's own placeholder for the job id."""
    base = f"{settings.remote_workdir.rstrip('/')}/{_check_job_name(name)}"
    return f"{base}.sh", f"{base}.{job_id}.out", f"{base}.{job_id}.err"


def job_options(spec: CommandSpec, settings: SlurmSettings, name: str) -> dict[str, str]:
    """The job's sbatch options (long names without `--`), shared by the sbatch line and the REST request."""
    _, stdout_path, stderr_path = job_paths(settings, name)
    gpus = settings.gpus if settings.gpus is not None else spec.gpus
    options = {"job-name": name, "output": stdout_path, "error": stderr_path,
               "cpus-per-task": str(settings.cpus_per_task or spec.threads),
               "partition": settings.partition, "account": settings.account, "qos": settings.qos,
               "gres": settings.gres, "mem": settings.memory or (f"{spec.memory_mb}M" if spec.memory_mb else None),
               "time": time_limit(spec, settings), "gpus": str(gpus) if gpus else None,
               "requeue": None if settings.requeue is None else str(settings.requeue).lower()}
    return {key: value for key, value in options.items() if value}


def submit_command(spec: CommandSpec, settings: SlurmSettings, name: str) -> str:
    """One shell line: create the work folder, write the script (base64, no quoting traps), sbatch it."""
    script_path, _, _ = job_paths(settings, name)
    options = [_sbatch_option(flag, value) for flag, value in job_options(spec, settings, name).items()]
    encoded = base64.b64encode(render_batch_script(spec, settings).encode()).decode()
    workdir = shlex.quote(settings.remote_workdir)
    return (f"mkdir -p -- {workdir} && printf %s {encoded} | base64 -d > {shlex.quote(script_path)} && "
            f"sbatch --parsable {shlex.join(options)} {shlex.quote(script_path)}")


def _sbatch_option(flag: str, value: str) -> str:
    """`--flag=value`; requeue is the switch --requeue or --no-requeue."""
    if flag == "requeue":
        return "--requeue" if value == "true" else "--no-requeue"
    return f"--{flag}={value}"


def memory_mb(text: str) -> int:
    """sbatch's --mem text (`16G`, `512M`, `2048`: megabytes by default) in megabytes."""
    match = re.fullmatch(r"(\d+)([KMGT]?)", text.strip().upper())
    if match is None:
        raise ValueError(f"memory {text!r} is not <number>[K|M|G|T]")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[match.group(2)]
    return max(1, math.ceil(int(match.group(1)) * scale))


def minutes(text: str) -> int:
    """sbatch's --time text (`M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`) in whole minutes, rounded up."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if match is None:
        raise ValueError(f"time limit {text!r} is not one of Slurm's forms (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S)")
    days, first, second, third = (int(part) if part else None for part in match.groups())
    if days is not None:  # D-H[:M[:S]]
        seconds = ((days * 24 + first) * 60 + (second or 0)) * 60 + (third or 0)
    elif third is not None:  # H:M:S
        seconds = (first * 60 + second) * 60 + third
    else:  # M or M:S
        seconds = first * 60 + (second or 0)
    return max(1, math.ceil(seconds / 60))


# sbatch option -> slurmrestd v0.0.38 job property, and how its text becomes the property's JSON value.
_REST_PROPERTIES: dict[str, tuple[str, Any]] = {
    "job-name": ("name", str), "output": ("standard_output", str), "error": ("standard_error", str),
    "cpus-per-task": ("cpus_per_task", int), "partition": ("partition", str), "account": ("account", str),
    "qos": ("qos", str), "gres": ("gres", str), "gpus": ("gpus", str),
    "mem": ("memory_per_node", memory_mb), "time": ("time_limit", minutes),
    "requeue": ("requeue", lambda value: value == "true"),
}


def rest_submission(spec: CommandSpec, settings: SlurmSettings, name: str,
                    environment: dict[str, str]) -> dict[str, Any]:
    """The body of slurmrestd's `POST job/submit`: the same script and options as the sbatch line.

    slurmrestd passes no environment of its own (v0.0.38 requires one), so `environment` is the job's whole
    starting environment; the script's module and set-up lines build on it as they do under sbatch.
    """
    job: dict[str, Any] = {"environment": environment,
                           "current_working_directory": spec.cwd or settings.remote_workdir}
    for flag, value in job_options(spec, settings, name).items():
        key, convert = _REST_PROPERTIES[flag]
        job[key] = convert(value)
    return {"script": render_batch_script(spec, settings), "job": job}


def parse_submitted_job_id(stdout: str) -> int:
    """`sbatch --parsable` prints `<id>` or `<id>;<cluster>`."""
    match = re.search(r"^(\d+)(?:;\S+)?\s*$", stdout.strip(), re.MULTILINE)
    if match is None:
        raise ValueError(f"sbatch did not print a job id (got {stdout.strip()!r})")
    return int(match.group(1))


def find_jobs_command(name: str) -> str:
    """All jobs of that name that Slurm still remembers, finished ones included."""
    return f"squeue -h -t all --name={shlex.quote(_check_job_name(name))} -o '%i|%T'"


def parse_found_jobs(stdout: str) -> list[tuple[int, str]]:
    jobs = []
    for line in stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id.isdigit() and state:
            jobs.append((int(job_id), state.split()[0].upper()))
    return sorted(jobs)


def reattachable_job(jobs: list[tuple[int, str]]) -> int | None:
    """Newest job that is still going or that succeeded; failed ones are run again."""
    for job_id, state in reversed(jobs):
        if state in WAITING_STATES or state in SUCCESS_STATES:
            return job_id
    return None


def status_command(job_id: int, jobcomp_file: str | None) -> str:
    """scontrol while Slurm remembers the job, then sacct (if accounting is on), then the jobcomp file.

    The jobcomp file is read only when scontrol says the job id is invalid (Slurm has forgotten the job): while
    slurmctld is unreachable it would mislead, since a job requeued after a node failure has a NODE_FAIL record
    there yet runs again. An unreachable controller prints `unreachable|<scontrol's error>` instead.
    """
    job = int(job_id)
    command = (f"out=$(scontrol show job -o {job} 2>&1) && {{ printf '%s\\n' \"$out\"; exit 0; }}; "
               f"acct=$(sacct -n -X -P -j {job} -o JobID,State,ExitCode 2>/dev/null) && [ -n \"$acct\" ] "
               f"&& {{ echo \"sacct|$acct\"; exit 0; }}; "
               f"case \"$out\" in *'Invalid job id'*) ;; "
               f"*) echo \"unreachable|$(printf '%s' \"$out\" | head -n 1)\"; exit 0 ;; esac")
    if jobcomp_file:
        command += f"; grep -h -- '^JobId={job} ' {shlex.quote(jobcomp_file)} 2>/dev/null | tail -n 1"
    return command + "; exit 0"


class SlurmUnavailable(ConnectionError):
    """Slurm cannot answer just now (slurmctld, slurmrestd or the login node's sshd is down or restarting).

    The jobs keep running meanwhile, so a watcher asks again later instead of reading the silence as a
    finished, failed or vanished job.
    """


# How long a watcher keeps asking through such an outage before it gives up (a restart takes seconds, a
# login node's reboot minutes; beyond this the task fails and Airflow's retry re-attaches to the job).
OUTAGE_TOLERANCE_S = 1800.0


class SlurmOutage:
    """How long Slurm has not answered a watcher (hook or trigger, either transport): polling goes on for
    `tolerance_s`, then the last error ends the wait (the task fails, Airflow retries, the retry re-attaches)."""

    def __init__(self, tolerance_s: float) -> None:
        self.tolerance_s = tolerance_s
        self.since: float | None = None

    def note(self, error: Exception, log: Any) -> None:
        """One unanswered poll: raise `error` once the outage has lasted longer than the tolerance."""
        now = time.monotonic()
        self.since = now if self.since is None else self.since
        if now - self.since > self.tolerance_s:
            raise error
        log.warning("no answer from Slurm for %.0f s, asking again: %s", now - self.since, error)

    def over(self, log: Any) -> None:
        if self.since is not None:
            log.info("Slurm answers again after %.1f s", time.monotonic() - self.since)
            self.since = None


_KEY_VALUE = re.compile(r"(?:^|\s)(JobId|JobState|ExitCode|Reason)=(\S*)")


def parse_job_status(job_id: int, stdout: str) -> SlurmJobStatus | None:
    """Read the status printed by `status_command`; None when no source knows the job, SlurmUnavailable when
    slurmctld could not be asked."""
    text = stdout.strip()
    if not text:
        return None
    if text.startswith("unreachable|"):
        raise SlurmUnavailable(f"Slurm job {job_id}: slurmctld did not answer ({text[len('unreachable|'):]})")
    if text.startswith("sacct|"):
        for line in text[len("sacct|"):].splitlines():
            fields = line.split("|")
            if len(fields) >= 3 and fields[0] == str(job_id):
                exit_code, signal = _exit_code(fields[2])
                return SlurmJobStatus(job_id=job_id, state=fields[1].split()[0].upper(), exit_code=exit_code,
                                      signal=signal, source="sacct")
        return None
    line = next((line for line in text.splitlines() if line.startswith(f"JobId={job_id} ")), None)
    if line is None:
        return None
    values = dict(_KEY_VALUE.findall(line))
    if "JobState" not in values:
        return None
    exit_code, signal = _exit_code(values.get("ExitCode", ""))
    return SlurmJobStatus(job_id=job_id, state=values["JobState"].upper(), exit_code=exit_code, signal=signal,
                          reason=values.get("Reason"), source="scontrol" if "Reason" in values else "jobcomp")


def _exit_code(text: str) -> tuple[int | None, int | None]:
    """Slurm writes `<exit status>:<signal>`."""
    match = re.fullmatch(r"(\d+):(\d+)", text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else (None, None)


def jobcomp_location_command() -> str:
    return "scontrol show config | sed -n 's/^JobCompLoc *= *//p'"


def tail_command(path: str, lines: int = STDERR_TAIL_LINES) -> str:
    return f"tail -n {int(lines)} -- {shlex.quote(path)} 2>/dev/null; exit 0"


def cancel_command(job_id: int) -> str:
    return f"scancel {int(job_id)}"


def rest_job_status(job: dict[str, Any]) -> SlurmJobStatus:
    """A job of slurmrestd's `GET job/{id}` answer; its exit_code is the raw wait status (768 = exit 3)."""
    raw = job.get("exit_code")
    exit_code, signal = (None, None) if raw is None else ((raw >> 8) & 0xFF, raw & 0x7F)
    return SlurmJobStatus(job_id=job["job_id"], state=str(job["job_state"]).split()[0].upper(),
                          exit_code=exit_code, signal=signal, reason=job.get("state_reason"), source="slurmrestd")
