"""One entry point for movies of any format the microscope writes, dispatching on the file suffix."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._paths import check_frame_range, require_file
from .eer import EER_SUFFIXES, eer_shape, read_eer
from .errors import ImageFileError
from .mrc import MRC_SUFFIXES, read_mrc, read_mrc_shape
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

    MRC data come from a memory map, so only the frames asked for are read from disk.
    """
    path = require_file(path, MOVIE_SUFFIXES)
    suffix = path.suffix.lower()
    if suffix in EER_SUFFIXES:
        return read_eer(path, frame_range, eer_grouping)
    if suffix in TIFF_SUFFIXES:
        return read_tiff(path, frame_range)
    n_frames, ny, nx = _as_stack(read_mrc_shape(path))
    start, stop = check_frame_range(path, frame_range, n_frames)
    return np.array(read_mrc(path, mmap=True).reshape(n_frames, ny, nx)[start:stop])


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
