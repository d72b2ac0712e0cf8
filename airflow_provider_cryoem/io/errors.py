"""The one error type every reader raises for a bad file, so callers catch one thing."""
from __future__ import annotations

from pathlib import Path


class ImageFileError(ValueError):
    """A movie, micrograph, gain or STAR file that cannot be used; names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
