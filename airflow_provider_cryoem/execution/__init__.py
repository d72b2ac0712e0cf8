"""Where an external program runs: a local subprocess, or a Slurm batch job reached over SSH."""
from .errors import ToolExecutionError, ToolNotFoundError, ToolTimeoutError
from .local import run_local
from .spec import CommandResult, CommandSpec

__all__ = ["CommandResult", "CommandSpec", "ToolExecutionError", "ToolNotFoundError", "ToolTimeoutError",
           "run_local"]
