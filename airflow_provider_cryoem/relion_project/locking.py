"""One writer at a time in a project: an flock for our own processes plus Relion's lock directory.

Mapped Airflow tasks run as separate processes (possibly on several hosts sharing the file
system), so the lock lives in the project folder. While the pipeline is being rewritten we also
hold Relion's own `.relion_lock/lock_default_pipeline.star`, so a Relion GUI open on the same
project waits for us instead of reading a pipeline mid-update.
"""
from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".relion_lock_cryoem"
RELION_LOCK_DIR = ".relion_lock"
RELION_LOCK_FILE = "lock_default_pipeline.star"


@contextmanager
def project_lock(project_dir: Path) -> Iterator[None]:
    """Exclusive flock on `<project>/.relion_lock_cryoem` for the duration of the block."""
    with open(project_dir / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def relion_pipeline_lock(project_dir: Path, timeout_s: float = 120.0) -> Iterator[None]:
    """Hold Relion's lock directory (mkdir is atomic); TimeoutError names the stale lock to remove."""
    lock_dir = project_dir / RELION_LOCK_DIR
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            lock_dir.mkdir()
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{lock_dir / RELION_LOCK_FILE}: Relion's pipeline lock has been held for "
                                   f"{timeout_s:.0f} s; remove it if no Relion program is running") from None
            time.sleep(0.05)
    lock_file = lock_dir / RELION_LOCK_FILE
    try:
        lock_file.write_text(f"cryoem pid {os.getpid()}\n")
        yield
    finally:
        lock_file.unlink(missing_ok=True)
        lock_dir.rmdir()
