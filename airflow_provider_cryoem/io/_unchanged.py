"""Read a file through one open handle and make sure it did not change underneath the read.

Movies sit in a folder the microscope (or a transfer tool) still writes to. A movie can be deleted, truncated
in place or replaced (new content renamed over it, a new inode) after the watcher found it complete. Reading
through one handle, never a memory map, turns a truncation into a short read (an error naming the file)
instead of SIGBUS killing the worker; comparing the handle's and the path's size, modification time and
inode after the read tells whether the content read is the content the path now holds. If not, the read is
done again (the new content is processed once, if it is complete then); a file that is gone fails by name.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from .errors import ImageFileError

T = TypeVar("T")
READ_ATTEMPTS = 3
_BACKOFF_S = 0.2
DISAPPEARED = "file disappeared: it does not exist (deleted or moved away?)"


def _content_key(stat: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when the file under a path is replaced or rewritten: inode, size, modification time."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def read_unchanged(path: Path, read: Callable[[BinaryIO], T], attempts: int = READ_ATTEMPTS) -> T:
    """`read(handle)` on `path`, done again (up to `attempts` times) while the file changes during the read.

    Raises ImageFileError naming the file when it disappears before or during the read, when it keeps changing,
    or with `read`'s own error when the file stayed the same (a genuinely bad file).
    """
    what = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(_BACKOFF_S * attempt)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below, before the path is looked at again
        except FileNotFoundError:
            raise ImageFileError(path, DISAPPEARED) from None
        failure: ImageFileError | None = None
        with handle:
            before = os.fstat(handle.fileno())
            try:
                value = read(handle)
            except ImageFileError as exc:
                failure = exc
            after = os.fstat(handle.fileno())
        try:
            now = os.stat(path)
        except FileNotFoundError:
            raise ImageFileError(path, "file disappeared while it was being read (deleted or moved away)") from None
        if _content_key(before) != _content_key(after):
            what = "rewritten or truncated in place"
        elif _content_key(now) != _content_key(after):
            what = "replaced by another file"
        else:
            if failure is not None:
                raise failure
            return value
    raise ImageFileError(path, f"file kept changing while it was being read ({attempts} tries, last "
                               f"{what}); it was not processed")
