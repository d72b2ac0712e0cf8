"""The error types readers and writers raise for a file, so callers catch one thing and the file is named."""
from __future__ import annotations

import errno
import os
from pathlib import Path


class ImageFileError(ValueError):
    """A movie, micrograph, gain or STAR file that cannot be used; names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (None if unknown)."""
    for folder in (path.parent, *path.parents):
        try:
            stats = os.statvfs(folder)
        except OSError:
            continue
        return stats.f_bavail * stats.f_frsize
    return None


class DiskFullError(OSError):
    """The disk (or quota) filled while writing `path`: an infrastructure fault, not a bad movie, so it fails
    the task (Airflow retries it) instead of failing the movie; the file was not left half-written."""

    def __init__(self, path: str | Path, code: int = errno.ENOSPC, when: str = "while writing it",
                 outcome: str = "it was not written") -> None:
        self.path = str(path)
        free = _free_bytes(Path(path))
        super().__init__(code, f"{os.strerror(code)} {when}"
                               f"{'' if free is None else f' ({free} bytes free there)'}; {outcome}", self.path)

    def __str__(self) -> str:
        return f"{self.path}: {self.strerror}"
