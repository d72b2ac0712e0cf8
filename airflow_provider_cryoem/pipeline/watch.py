"""The live watcher's state, kept in the results store: which movies a run took, and when the session ends."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from .hooks.results import results_store
from .ingest import FolderScan, MovieFile, scan_folder, session_end_reason


class WatchSettings(BaseModel):
    """Everything the sensor and its trigger need; small and JSON-serialisable for the triggerer."""

    model_config = ConfigDict(extra="forbid")
    session_id: int
    watch_dir: str
    movie_glob: str
    end_marker: str
    stable_for_s: float
    idle_timeout_s: float
    max_movies: int
    results_conn_id: str | None
    processing_path: str
    opened_at_s: float


@dataclass(frozen=True)
class Look:
    """One look at the folder against the store."""

    scan: FolderScan
    unclaimed: list[MovieFile]
    claimed_total: int
    idle_for_s: float


def look_for_movies(settings: WatchSettings, now_s: float) -> Look:
    """Scan the folder and compare with what the store says was already taken."""
    store = results_store(settings.results_conn_id, settings.processing_path)
    scan = scan_folder(settings.watch_dir, settings.movie_glob, settings.end_marker, settings.stable_for_s, now_s)
    claimed = store.claimed_files(settings.session_id)
    unclaimed = [movie for movie in scan.complete if movie.relative_path not in claimed]
    last_activity_s = max([settings.opened_at_s, store.last_claim_time_s(settings.session_id) or 0.0]
                          + [movie.mtime_s for movie in scan.complete + scan.incomplete])
    return Look(scan, unclaimed, len(claimed), now_s - last_activity_s)


def take_new_movies(settings: WatchSettings, claimed_by: str) -> dict[str, Any] | None:
    """Claim unclaimed complete movies for `claimed_by` (a run id); None when there is nothing to do yet.

    A retried task gets back what its run claimed before. The result says whether the session is over,
    so the run knows not to start another.
    """
    store = results_store(settings.results_conn_id, settings.processing_path)
    now_s = time.time()
    look = look_for_movies(settings, now_s)
    room = settings.max_movies - look.claimed_total if settings.max_movies else len(look.unclaimed)
    candidates = [(m.relative_path, m.size_bytes) for m in look.unclaimed[:max(room, 0)]]
    if candidates:
        store.claim_files(settings.session_id, candidates, claimed_by)
    mine = store.files_claimed_by(settings.session_id, claimed_by)
    remaining = [m for m in look.unclaimed if m.relative_path not in set(mine)]
    reason = session_end_reason(look.scan, remaining, look.claimed_total + len(candidates), settings.max_movies,
                                0.0 if mine else look.idle_for_s, settings.idle_timeout_s)
    if not mine and reason is None:
        return None
    return {"movies": mine, "session_over": reason is not None, "reason": reason}
