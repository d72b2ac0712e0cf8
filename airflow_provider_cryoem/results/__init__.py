"""Results store: ISPyB-shaped tables (PostgreSQL, or SQLite for the demo) with idempotent writes."""
from __future__ import annotations

from .engine import default_sqlite_path, engine_from_url, sqlite_engine
from .errors import (
    ResultsError,
    ResultsInputError,
    ResultsNotFoundError,
    ResultsUnavailableError,
)
from .store import ResultsStore
from .summary import FailureRecord, SessionSummary, StageCount

__all__ = [
    "FailureRecord", "ResultsError", "ResultsInputError", "ResultsNotFoundError", "ResultsStore",
    "ResultsUnavailableError", "SessionSummary", "StageCount", "default_sqlite_path", "engine_from_url",
    "sqlite_engine",
]
