"""Errors of the results store: one base class, so an operator can catch every results problem at once."""
from __future__ import annotations


class ResultsError(Exception):
    """Any problem with the results database."""


class ResultsUnavailableError(ResultsError, ConnectionError):
    """The database cannot be reached; raised so Airflow's task retry tries again later.

    `target` names the connection id and/or host, never the password.
    """

    def __init__(self, target: str, problem: str) -> None:
        self.target = target
        self.problem = problem
        super().__init__(f"results database unavailable: {target}: {problem}")


class ResultsInputError(ResultsError, ValueError):
    """A result handed to the store lacks a field or has one of the wrong kind; names the stage and field."""

    def __init__(self, stage: str, field: str, problem: str) -> None:
        self.stage = stage
        self.field = field
        super().__init__(f"{stage} result, field {field!r}: {problem}")


class ResultsNotFoundError(ResultsError, LookupError):
    """A session or row asked for by name or id does not exist."""
