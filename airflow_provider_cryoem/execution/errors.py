"""Errors of external programs, shared by every place a program can run (local, Slurm)."""
from __future__ import annotations

from typing import Any


class ToolNotFoundError(FileNotFoundError):
    """The executable is not on PATH; the caller adds which recipe setting chose it."""

    def __init__(self, program: str, searched_path: str = "") -> None:
        self.program = program
        where = f" (searched PATH={searched_path})" if searched_path else ""
        super().__init__(f"program {program!r} was not found{where}; install it or choose another tool")


class ToolExecutionError(RuntimeError):
    """The program ran and failed; the message names it and shows the end of its log."""

    def __init__(self, program: str, problem: str, log_tail: list[str] | None = None,
                 log_path: str | None = None) -> None:
        self.program = program
        self.problem = problem
        self.log_tail = list(log_tail or [])
        self.log_path = log_path
        message = f"{program}: {problem}"
        if log_path:
            message += f" (log: {log_path})"
        if self.log_tail:
            message += "\n--- last lines of its output ---\n" + "\n".join(self.log_tail)
        super().__init__(message)


class ToolTimeoutError(ToolExecutionError):
    """The program ran longer than its time limit and was stopped."""


class SlurmJobPending(Exception):
    """A Slurm job of a stage that waits in the triggerer is still queued or running: the task defers until it
    ends, then runs the stage again, which reads the finished job back by its id instead of submitting it anew.
    Not a failure: code that marks its job failed on any exception lets this one through unmarked."""

    def __init__(self, conn_id: str, job: dict[str, Any], jobcomp_file: str | None, poll_interval_s: float,
                 message: str | None = None) -> None:
        super().__init__(message or f"Slurm job {job['job_name']} has not ended yet")
        self.conn_id, self.job, self.jobcomp_file, self.poll_interval_s = conn_id, job, jobcomp_file, poll_interval_s
