"""One writer at a time in a project: an flock for our own processes plus Relion's lock directory.

Mapped Airflow tasks run as separate processes (possibly on several hosts sharing the file
system), so the lock lives in the project folder. While the pipeline is being rewritten we also
hold Relion's own `.relion_lock/lock_default_pipeline.star`, so a Relion GUI open on the same
project waits for us instead of reading a pipeline mid-update.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..io._atomic import naming_disk_full

LOCK_FILE = ".relion_lock_cryoem"
RELION_LOCK_DIR = ".relion_lock"
RELION_LOCK_FILE = "lock_default_pipeline.star"
# A pipeline write holds the lock for milliseconds; one older than this was left by a killed process.
STALE_LOCK_S = 60.0

log = logging.getLogger(__name__)


@contextmanager
def project_lock(project_dir: Path) -> Iterator[None]:
    """Exclusive flock on `<project>/.relion_lock_cryoem` for the duration of the block."""
    with open(project_dir / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holder_is_gone(lock_dir: Path, stale_after_s: float) -> bool:
    """Whether the pipeline lock was left by a process that is no longer running: ours on this host
    with a dead pid, or anyone's held far longer than a pipeline write takes."""
    lock_file = lock_dir / RELION_LOCK_FILE
    try:
        age_s = time.time() - lock_dir.stat().st_mtime
        holder = lock_file.read_text().split() if lock_file.exists() else []
    except OSError:
        return False  # released meanwhile
    if len(holder) == 5 and holder[:2] == ["cryoem", "pid"] and holder[3] == "host" \
            and holder[4] == socket.gethostname() and holder[2].isdigit():
        try:
            os.kill(int(holder[2]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
    return age_s > stale_after_s


def _break(lock_dir: Path) -> None:
    """Remove a stale lock; renaming it first means only one of several breakers removes it."""
    aside = lock_dir.with_name(f"{lock_dir.name}.stale.{os.getpid()}.{time.monotonic_ns()}")
    try:
        lock_dir.rename(aside)
    except OSError:
        return  # another process broke or released it
    log.warning("%s: removed a stale Relion pipeline lock (its holder is gone)", lock_dir)
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def relion_pipeline_lock(project_dir: Path, timeout_s: float = 120.0,
                         stale_after_s: float = STALE_LOCK_S) -> Iterator[None]:
    """Hold Relion's lock directory (mkdir is atomic). A lock left by a killed process is broken (see
    `_holder_is_gone`); one held by a live program past `timeout_s` is a TimeoutError naming it."""
    lock_dir = project_dir / RELION_LOCK_DIR
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            lock_dir.mkdir()
            break
        except FileExistsError:
            if _holder_is_gone(lock_dir, stale_after_s):
                _break(lock_dir)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{lock_dir / RELION_LOCK_FILE}: Relion's pipeline lock has been held for "
                                   f"{timeout_s:.0f} s; remove it if no Relion program is running") from None
            time.sleep(0.05)
    lock_file = lock_dir / RELION_LOCK_FILE
    try:
        with naming_disk_full(lock_file):
            lock_file.write_text(f"cryoem pid {os.getpid()} host {socket.gethostname()}\n")
        yield
    finally:
        lock_file.unlink(missing_ok=True)
        lock_dir.rmdir()
