"""Where an external program runs: a local subprocess, or a Slurm batch job reached over SSH."""
from collections.abc import Callable

from .errors import SlurmJobPending, ToolExecutionError, ToolNotFoundError, ToolTimeoutError
from .local import run_local, run_output
from .spec import CommandResult, CommandSpec

Execute = Callable[[CommandSpec], str]
"""Runs one command somewhere (this worker, a Slurm job) and returns its output."""

__all__ = ["CommandResult", "CommandSpec", "Execute", "SlurmJobPending", "ToolExecutionError", "ToolNotFoundError",
           "ToolTimeoutError", "run_local", "run_output"]
