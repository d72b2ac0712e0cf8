"""The live watcher's decisions against the results store: what a run takes, and when the session ends."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..ingest import FolderScan, FolderSnapshot, MovieFile, name_problem, printable_name, scan_folder, session_end_reason
from ..results import ResultsStore
from .stores import results_store

log = logging.getLogger(__name__)
# The shortest wait between two looks at the folder when the session is kept open past its idle deadline.
MIN_WAIT_S = 2.0


class WatchSettings(BaseModel):
    """Everything the sensor needs; small and JSON-serialisable."""

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
    processing_job_id: int


def scan_session_folder(settings: WatchSettings, now_s: float | None = None,
                        stable_for_s: float | None = None) -> FolderScan:
    """Scan the session's watched folder, leaving out its own processing folder."""
    return scan_folder(settings.watch_dir, settings.movie_glob, settings.end_marker,
                       settings.stable_for_s if stable_for_s is None else stable_for_s, now_s,
                       skip_dir=settings.processing_path)


def report_rejected(settings: WatchSettings, store: ResultsStore, rejected: list[MovieFile],
                    claimed_by: str) -> list[str]:
    """Take files whose names no stage can handle (see ingest.name_problem) out of the session once: each
    is claimed under its printable name and recorded as a failed movie with the reason, so it shows in the
    summary instead of holding the session open or being read."""
    names = {printable_name(m.relative_path): m for m in rejected}
    new = store.claim_files(settings.session_id, [(name, m.size_bytes) for name, m in names.items()], claimed_by)
    for name in new:
        movie_id = store.register_movie(settings.session_id, name)
        store.record_failure(settings.processing_job_id, movie_id, "ingest",
                             f"file not processed: {name_problem(names[name].relative_path)}")
        log.warning("%s: not processed, %s", name, name_problem(names[name].relative_path))
    return new


def take_new_movies(settings: WatchSettings, claimed_by: str) -> dict[str, Any] | None:
    """Claim the complete movies nobody took yet for `claimed_by` (a run id); None while there is nothing to do.

    A retried task gets back what its run claimed before. The result says whether the session is over,
    so the run knows not to start another: `{"movies": [...], "session_over": bool, "reason": str | None}`.
    A stop request recorded for the session (the dashboard's "End session now") ends it like the end-of-session
    marker, except that no further movie is claimed.
    """
    store = results_store(settings.results_conn_id, settings.processing_path)
    now_s = time.time()
    scan = scan_session_folder(settings, now_s)
    claimed = store.claimed_files(settings.session_id)
    rejected = report_rejected(settings, store, [m for m in scan.rejected
                                                 if printable_name(m.relative_path) not in claimed], claimed_by)
    claimed |= set(rejected)
    before_total = len(claimed)
    unclaimed = [m for m in scan.complete if m.relative_path not in claimed]
    stopped_by = store.stop_requested_by(settings.session_id)  # asked to end now: claim nothing more
    room = 0 if stopped_by else max(settings.max_movies - before_total, 0) if settings.max_movies else len(unclaimed)
    new = store.claim_files(settings.session_id, [(m.relative_path, m.size_bytes) for m in unclaimed[:room]],
                            claimed_by)
    not_movies = {printable_name(m.relative_path) for m in scan.rejected}
    mine = set(new) | (store.files_claimed_by(settings.session_id, claimed_by) - not_movies)
    taken = mine | claimed
    remaining = [m for m in scan.complete if m.relative_path not in taken]
    reason = f"stopped from the dashboard by {stopped_by}" if stopped_by else session_end_reason(
        scan, remaining, len(taken), settings.max_movies, now_s - _last_activity_s(settings, store, scan),
        settings.idle_timeout_s)
    if not mine and reason is None:
        return None
    return {"movies": sorted(mine), "session_over": reason is not None, "reason": reason}


def _last_activity_s(settings: WatchSettings, store: ResultsStore, scan: FolderScan) -> float:
    """When the session last saw something happen: opened, a claim, or a movie written."""
    return max([settings.opened_at_s, store.last_claim_time_s(settings.session_id) or 0.0]
               + [m.mtime_s for m in scan.complete + scan.incomplete])


def wake_up_plan(settings: WatchSettings) -> dict[str, Any]:
    """What the trigger waits for: the folder's current snapshot, and when the session would go idle."""
    store = results_store(settings.results_conn_id, settings.processing_path)
    scan = scan_session_folder(settings)
    # Never a deadline already past: a session kept open by a file that never settles must still wait
    # between checks instead of deferring and firing back to back.
    deadline_s = max(_last_activity_s(settings, store, scan) + settings.idle_timeout_s,
                      time.time() + MIN_WAIT_S)
    return {"snapshot": asdict(FolderSnapshot.of(scan)), "idle_deadline_s": deadline_s}
