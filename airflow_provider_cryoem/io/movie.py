"""One entry point for movies of any format the microscope writes, dispatching on the file suffix."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._paths import require_file
from ._unchanged import DISAPPEARED, read_unchanged
from .eer import EER_SUFFIXES, eer_shape, read_eer
from .errors import ImageFileError
from .mrc import MRC_SUFFIXES, read_mrc_frames, read_mrc_shape
from .tiff import TIFF_SUFFIXES, read_tiff, tiff_shape

MOVIE_SUFFIXES = MRC_SUFFIXES + TIFF_SUFFIXES + EER_SUFFIXES


def _as_stack(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A single 2D image counts as a one-frame movie."""
    return (1, *shape) if len(shape) == 2 else (shape[0], shape[1], shape[2])


def movie_shape(path: str | Path, eer_grouping: int = 20) -> tuple[int, int, int]:
    """(n_frames, ny, nx) read from headers/page tables only; for EER, frames are fractions after grouping."""
    path = require_file(path, MOVIE_SUFFIXES)
    suffix = path.suffix.lower()
    if suffix in EER_SUFFIXES:
        return eer_shape(path, eer_grouping)
    if suffix in TIFF_SUFFIXES:
        return tiff_shape(path)
    return _as_stack(read_mrc_shape(path))


def read_movie(path: str | Path, frame_range: tuple[int, int] | None = None, eer_grouping: int = 20) -> np.ndarray:
    """Frames `[start, stop)` (all by default) as (n_frames, ny, nx) in the file's dtype (uint16 for EER).

    Read into memory through one open handle (no memory map: a movie truncated underneath is an error, not
    SIGBUS), and read again if the file was replaced or rewritten during the read (see _unchanged.py), so the
    frames always come from one complete version of the file. A movie gone since it was found fails by name.
    """
    if not Path(path).exists():
        raise ImageFileError(path, DISAPPEARED)
    path = require_file(path, MOVIE_SUFFIXES)
    suffix = path.suffix.lower()
    if suffix in EER_SUFFIXES:
        return read_unchanged(path, lambda handle: read_eer(path, frame_range, eer_grouping, handle))
    if suffix in TIFF_SUFFIXES:
        return read_unchanged(path, lambda handle: read_tiff(path, frame_range, handle))
    return read_unchanged(path, lambda handle: read_mrc_frames(path, handle, frame_range))


def check_frames_finite(frames: np.ndarray, path: str | Path) -> None:
    """Raise ImageFileError naming the first frame of `path` that holds NaN or inf (engines call this)."""
    stack = np.asarray(frames)
    if np.issubdtype(stack.dtype, np.integer):
        return
    per_frame = stack.reshape(-1, *stack.shape[-2:])
    bad = ~np.isfinite(per_frame).all(axis=(1, 2))
    if bad.any():
        indices = np.flatnonzero(bad)
        raise ImageFileError(path, f"frame {indices[0]} contains NaN or infinite values "
                                   f"({len(indices)} of {len(per_frame)} frames affected)")
