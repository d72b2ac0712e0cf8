"""Which DAG run does a once-per-session job (a 3D round), safe against crashes of the run that took it.

A claim is a marker file in the job folder, created whole or not at all (written aside, then hard-linked
into place). While the work runs its holder refreshes the marker's time; when the work is over (done or
recorded as failed) a `done` marker is written. A claim that is neither done nor refreshed for
`stale_after_s` belongs to a run that died (killed worker, lost node): another run takes it over, so a
crash never skips the round forever. Works across hosts that share the project folder.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..io._atomic import naming_disk_full

CLAIM_FILE = ".claimed_by"
DONE_FILE = ".claim_done"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


def _create_whole(path: Path, text: str) -> bool:
    """Create `path` holding `text`, atomically; False if it exists already."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with naming_disk_full(path):
            aside.write_text(text)
        os.link(aside, path)
        return True
    except FileExistsError:
        return False
    finally:
        aside.unlink(missing_ok=True)


def claim_is_live(job_path: Path, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether the job is done, or held by a run that refreshed its claim within `stale_after_s`."""
    if (job_path / DONE_FILE).exists():
        return True
    try:
        return time.time() - (job_path / CLAIM_FILE).stat().st_mtime < stale_after_s
    except FileNotFoundError:
        return False


def claim(job_path: Path, owner: str, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether `owner` (a DAG run) does this job: the first to claim it, its own retry, or the run that
    takes over a claim whose holder stopped refreshing it before the job was done."""
    marker = job_path / CLAIM_FILE
    for _ in range(3):
        if _create_whole(marker, owner):
            return True
        try:
            if marker.read_text() == owner:
                return True
        except FileNotFoundError:
            continue  # another run is taking it over right now; look again
        if claim_is_live(job_path, stale_after_s):
            return False
        try:  # only one of several runs taking over wins this rename
            os.rename(marker, marker.with_name(f"{CLAIM_FILE}.stale.{uuid.uuid4().hex}"))
        except FileNotFoundError:
            return False
    return False


@contextmanager
def holding(job_path: Path, interval_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Refresh the claim while the block runs; mark the job done when the block ends without raising
    (a raised error leaves the claim to go stale, so the run's retry or another run does the job)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                os.utime(job_path / CLAIM_FILE)
            except FileNotFoundError:
                return

    beater = threading.Thread(target=beat, name=f"claim heartbeat {job_path.name}", daemon=True)
    beater.start()
    try:
        yield
        _create_whole(job_path / DONE_FILE, "")
    finally:
        stop.set()
        beater.join()
