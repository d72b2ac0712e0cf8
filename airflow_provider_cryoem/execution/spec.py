"""What to run (CommandSpec) and what came back (CommandResult), independent of where it runs."""
from __future__ import annotations

import shlex

from pydantic import BaseModel, ConfigDict, Field, field_validator


class CommandSpec(BaseModel):
    """One program invocation as an argument list: never a shell string, so paths stay literal."""

    model_config = ConfigDict(extra="forbid")

    program: str = Field(min_length=1, description="Executable name (looked up on PATH) or path.")
    args: list[str] = Field(default_factory=list)
    cwd: str | None = Field(None, description="Working directory; programs such as crYOLO write relative to it.")
    env: dict[str, str] = Field(default_factory=dict, description="Added to the inherited environment.")
    stdin_text: str | None = Field(None, description="Fed to standard input (CTFFIND reads its answers here).")
    log_path: str | None = Field(None, description="File that receives the program's output as it runs.")
    timeout_s: float | None = Field(None, gt=0)
    threads: int = Field(1, ge=1, le=1024)
    gpus: int = Field(0, ge=0, le=64)
    memory_mb: int | None = Field(None, ge=1)

    @field_validator("program", "args", mode="after")
    @classmethod
    def _no_nul(cls, value: str | list[str]) -> str | list[str]:
        for item in [value] if isinstance(value, str) else value:
            if "\x00" in item:
                raise ValueError("must not contain NUL bytes")
        return value

    def display(self) -> str:
        """The command as a person would type it (for logs and error messages only, never executed)."""
        return shlex.join([self.program, *self.args])


class CommandResult(BaseModel):
    """A finished, successful run: the output is kept so a tool module can parse it."""

    program: str
    args: list[str]
    returncode: int
    duration_s: float
    output: str = Field(description="Standard output and standard error, interleaved as written.")
    log_path: str | None = None
