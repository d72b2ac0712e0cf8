"""Finding complete movies in a watched folder and deciding when a live session is over (no Airflow here).

A movie counts as complete when its EPU-style metadata sidecar (`<stem>.xml`) exists, or when its size has
not changed for `stable_for_s` (judged by modification time, so one scan suffices and a restarted watcher
needs no memory). Which movies were already taken lives in the results store, never in the watcher.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class MovieFile:
    """A movie found in the watched folder; `relative_path` is relative to the folder."""

    relative_path: str
    size_bytes: int
    mtime_s: float


@dataclass(frozen=True)
class FolderScan:
    """What one scan of the watched folder saw."""

    complete: list[MovieFile]
    incomplete: list[MovieFile]
    end_marker_present: bool


@dataclass(frozen=True)
class FolderSnapshot:
    """A compact summary of a scan: enough to notice that something relevant changed."""

    complete_count: int
    newest_complete_mtime_s: float
    end_reached: bool

    @classmethod
    def of(cls, scan: FolderScan) -> "FolderSnapshot":
        """Changes when a movie completes, or when the end marker is there and nothing is still growing."""
        return cls(len(scan.complete), max((m.mtime_s for m in scan.complete), default=0.0),
                   scan.end_marker_present and not scan.incomplete)


def _has_metadata(path: Path) -> bool:
    return path.with_suffix(".xml").is_file()


def scan_folder(watch_dir: str | Path, movie_glob: str, end_marker: str, stable_for_s: float,
                now_s: float | None = None) -> FolderScan:
    """List movies under `watch_dir` (recursively, sorted by name) split into complete and still-growing."""
    root = Path(watch_dir)
    now_s = time.time() if now_s is None else now_s
    complete: list[MovieFile] = []
    incomplete: list[MovieFile] = []
    for path in sorted(root.rglob(movie_glob)):
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed between listing and stat
            continue
        if not path.is_file():
            continue
        movie = MovieFile(str(path.relative_to(root)), stat.st_size, stat.st_mtime)
        settled = stat.st_size > 0 and now_s - stat.st_mtime >= stable_for_s
        (complete if settled or (stat.st_size > 0 and _has_metadata(path)) else incomplete).append(movie)
    return FolderScan(complete, incomplete, (root / end_marker).exists())


def session_end_reason(scan: FolderScan, unclaimed: list[MovieFile], claimed_total: int, max_movies: int,
                       idle_for_s: float, idle_timeout_s: float) -> str | None:
    """Why the session is over, or None while it goes on.

    It ends on the movie limit, on the end marker once every complete movie has been taken and none is
    still being written, or when nothing new arrived for `idle_timeout_s`.
    """
    if max_movies and claimed_total >= max_movies:
        return f"movie limit of {max_movies} reached"
    if scan.end_marker_present and not unclaimed and not scan.incomplete:
        return "end-of-session marker found"
    if not unclaimed and not scan.incomplete and idle_for_s >= idle_timeout_s:
        return f"no new movie for {idle_timeout_s:g} s"
    return None


def split_into_batches(items: list[T], max_per_batch: int, parallel_tasks: int) -> list[list[T]]:
    """Spread `items` over about `parallel_tasks` batches of at most `max_per_batch`, keeping order.

    Few movies give one movie per task (lowest latency); a burst gives batches of up to `max_per_batch`, so
    the scheduler's load grows with batches, not movies.
    """
    if not items:
        return []
    per_batch = min(max_per_batch, max(1, -(-len(items) // parallel_tasks)))
    return [items[i:i + per_batch] for i in range(0, len(items), per_batch)]
