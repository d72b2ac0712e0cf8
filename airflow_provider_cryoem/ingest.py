"""Finding complete movies in a watched folder and deciding when a live session is over (no Airflow here).

A movie counts as complete when its EPU-style metadata sidecar (`<stem>.xml`) exists, or when its size has
not changed for `stable_for_s` (judged by modification time, so one scan suffices and a restarted watcher
needs no memory). Which movies were already taken lives in the results store, never in the watcher.
"""
from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass, field
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
    """What one scan of the watched folder saw; `rejected` are settled files whose names no stage can take
    (see `name_problem`), kept apart so they are reported once and never block the session's end."""

    complete: list[MovieFile]
    incomplete: list[MovieFile]
    end_marker_present: bool
    rejected: list[MovieFile] = field(default_factory=list)


@dataclass(frozen=True)
class FolderSnapshot:
    """A compact summary of a scan: enough to notice that something relevant changed."""

    complete_count: int
    newest_complete_mtime_s: float
    end_reached: bool

    @classmethod
    def of(cls, scan: FolderScan) -> "FolderSnapshot":
        """Changes when a movie completes, or when the end marker is there and nothing is still growing."""
        settled = scan.complete + scan.rejected
        return cls(len(settled), max((m.mtime_s for m in settled), default=0.0),
                   scan.end_marker_present and not scan.incomplete)


def _has_metadata(path: Path) -> bool:
    return path.with_suffix(".xml").is_file()


def glob_problem(movie_glob: str) -> str | None:
    """Why `movie_glob` could match outside the watched folder (absolute, or with a `..` part), or None."""
    if movie_glob.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", movie_glob):
        return "must be a pattern inside the watched folder (no leading '/', no '..')"
    if "**" in movie_glob:
        return "must not contain '**' (sub-folders are searched already)"
    return None


def file_name_problem(name: str) -> str | None:
    """Why `name` cannot be a plain file name inside the watched folder (the end marker), or None."""
    if name in (".", "..") or "/" in name or "\\" in name:
        return "must be a file name inside the watched folder, without '/' or '..'"
    return name_problem(name)


def name_problem(relative_path: str) -> str | None:
    """Why a file's path cannot go through the pipeline, or None.

    Control characters would reach programs' stdin answers (CTFFIND) and log lines; whitespace would
    split a STAR file's columns; a name that is not UTF-8 cannot be stored or written into text files.
    """
    try:
        relative_path.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    if any(unicodedata.category(ch).startswith("C") for ch in relative_path):
        return "its name contains a control character"
    if any(ch.isspace() for ch in relative_path):
        return "its name contains whitespace, which STAR files cannot hold"
    return None


def printable_name(relative_path: str) -> str:
    """The path with undecodable bytes and control characters escaped: safe for logs and the database."""
    text = relative_path.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(ch if not unicodedata.category(ch).startswith("C") else ascii(ch)[1:-1] for ch in text)


def scan_folder(watch_dir: str | Path, movie_glob: str, end_marker: str, stable_for_s: float,
                now_s: float | None = None, skip_dir: str | Path | None = None) -> FolderScan:
    """List movies under `watch_dir` (recursively, sorted by name) split into complete and still-growing.

    Only regular files whose real location is inside the watched folder count: a glob or a symbolic
    link that leads elsewhere is ignored, and so are files that cannot be looked at (permissions). A
    file that stopped changing counts as complete even when empty, so the stage that reads it fails
    it by name instead of the session waiting for it forever. Files under `skip_dir` (the session's own
    processing folder, when it lies inside the watched one) are outputs, never movies.
    """
    root = Path(watch_dir).resolve()
    skipped = Path(skip_dir).resolve() if skip_dir else None
    now_s = time.time() if now_s is None else now_s
    complete: list[MovieFile] = []
    incomplete: list[MovieFile] = []
    rejected: list[MovieFile] = []
    if glob_problem(movie_glob) is not None or file_name_problem(end_marker) is not None:
        raise ValueError(f"{watch_dir}: movie_glob or end_marker reaches outside the watched folder")
    for path in sorted(root.rglob(movie_glob)):
        try:
            real = path.resolve(strict=True)
            stat = real.stat()
        except OSError:  # removed between listing and stat, a dangling link, no permission
            continue
        if root not in real.parents or not real.is_file() or (skipped is not None and (
                skipped in real.parents or skipped in path.parents)):
            continue
        movie = MovieFile(str(path.relative_to(root)), stat.st_size, stat.st_mtime)
        settled = now_s - stat.st_mtime >= stable_for_s
        if not (settled or (stat.st_size > 0 and _has_metadata(path))):
            incomplete.append(movie)
        elif name_problem(movie.relative_path) is not None:
            rejected.append(movie)
        else:
            complete.append(movie)
    return FolderScan(complete, incomplete, (root / end_marker).exists(), rejected)


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
