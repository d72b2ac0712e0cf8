"""A cap on the bytes one read may decode, checked against header-declared shapes before any data is decoded.

A few hundred bytes of compressed TIFF or EER can declare frames of tens of GB; decoding them would raise
MemoryError at best and get the worker OOM-killed at worst (overcommitted memory is only refused when
touched). The cap is `CRYOEM_MAX_DECODED_BYTES` (bytes, an integer) or, unset, the smaller of 8 GiB and half
the physical memory: a 50-frame 5760 × 4092 uint8 K3 movie is 1.2 GB, a 4096² Falcon 4 movie of 60 uint16
fractions 2 GB, so real data stay far below it.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import ImageFileError

BUDGET_ENV = "CRYOEM_MAX_DECODED_BYTES"
_DEFAULT_CAP = 8 * 1024**3


def _physical_memory_bytes() -> int | None:
    """Total RAM of this machine, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def max_decoded_bytes() -> int:
    """The budget in bytes: `CRYOEM_MAX_DECODED_BYTES`, else min(8 GiB, half the physical memory)."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{BUDGET_ENV} must be a whole number of bytes, got {raw!r}") from None
        if value < 1:
            raise ValueError(f"{BUDGET_ENV} must be positive, got {value}")
        return value
    physical = _physical_memory_bytes()
    return min(_DEFAULT_CAP, physical // 2) if physical else _DEFAULT_CAP


def check_decoded_size(path: str | Path, shape: Sequence[int], dtype: np.dtype | type | str, what: str) -> None:
    """Raise ImageFileError naming `path` if an array of `shape` × `dtype` would exceed the budget."""
    n_bytes = math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
    budget = max_decoded_bytes()
    if n_bytes > budget:
        dims = " × ".join(str(int(n)) for n in shape)
        raise ImageFileError(path, f"{what} of {dims} {np.dtype(dtype)} would take {n_bytes} bytes decoded, over "
                                   f"the {budget}-byte budget ({BUDGET_ENV})")


@contextmanager
def memory_error_as_file_error(path: str | Path, what: str) -> Iterator[None]:
    """Turn a MemoryError while decoding into this file's ImageFileError, so one movie fails, not the batch."""
    try:
        yield
    except MemoryError:
        raise ImageFileError(path, f"out of memory while decoding {what}") from None
