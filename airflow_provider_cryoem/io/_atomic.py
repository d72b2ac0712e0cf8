"""Atomic writes: write a hidden temp file beside the target, then rename, so readers never see half a file.

A full disk (ENOSPC, or a quota: EDQUOT) while writing becomes `DiskFullError` naming the file that was being
written: the operating system's error names no file, and the temp file it leaves is removed, so the target
keeps its earlier content (or stays absent) and the task's retry writes it whole once space is back.
"""
from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFullError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """True for the operating system's "no space left" and "quota exceeded" errors."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


@contextmanager
def naming_disk_full(path: str | Path) -> Iterator[None]:
    """Turn a full-disk OSError raised inside the block into DiskFullError naming `path`."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(path, exc.errno or errno.ENOSPC) from exc
        raise


def no_space_left(folder: str | Path) -> bool:
    """True when the filesystem holding `folder` has no block left for this process (root may use the blocks
    reserved for it; others may not)."""
    try:
        stats = os.statvfs(folder)
    except OSError:  # gone or unreadable: nothing to say about its space
        return False
    return (stats.f_bfree if os.geteuid() == 0 else stats.f_bavail) == 0


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write to; on success it replaces `path`, on error it is removed.

    Writers in C can ignore a short write() when the disk fills, and their file then ends early without an
    error (measured: Pillow 13.0 saves a 400 x 400 JPEG onto a 64 kB tmpfs without error, cut at 65,536 bytes). So a temp file written while the disk became
    completely full is not trusted: it is removed and DiskFullError raised, as for a write that failed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with naming_disk_full(path):
            yield tmp
            if no_space_left(path.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace `path` with `text` whole or not at all; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)

