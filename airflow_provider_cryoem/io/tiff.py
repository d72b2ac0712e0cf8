"""Multi-frame TIFF movies over tifffile (uint8/uint16/float32, any codec tifffile reads, LZW when writing)."""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import tifffile

from ._atomic import atomic_path
from ._paths import check_frame_range, require_file
from ._tiff_pages import open_tiff_pages
from .errors import ImageFileError
from .memory_budget import check_decoded_size, memory_error_as_file_error

TIFF_SUFFIXES = (".tif", ".tiff")


def _frame_shape(path: Path, pages: list[tifffile.TiffPage]) -> tuple[int, int]:
    """The common (ny, nx) of all pages; a movie must be a stack of equal grayscale frames."""
    if not pages:
        raise ImageFileError(path, "holds no readable frame (a truncated or empty page table)")
    first = pages[0]
    for index, page in enumerate(pages):
        if len(page.shape) != 2:
            raise ImageFileError(path, f"frame {index} has shape {page.shape}; expected a grayscale 2D frame")
        if page.shape != first.shape or page.dtype != first.dtype:
            raise ImageFileError(path, f"frame {index} is {page.shape} {page.dtype}, frame 0 is "
                                       f"{first.shape} {first.dtype}; frames must match")
    return first.shape[0], first.shape[1]


def tiff_shape(path: str | Path) -> tuple[int, int, int]:
    """(n_frames, ny, nx) from the page table alone, without decoding image data."""
    path = require_file(path)
    with open_tiff_pages(path, "TIFF file") as (_, pages):
        ny, nx = _frame_shape(path, pages)
        return len(pages), ny, nx


def read_tiff(path: str | Path, frame_range: tuple[int, int] | None = None,
              handle: BinaryIO | None = None) -> np.ndarray:
    """Frames `[start, stop)` (all by default) as (n_frames, ny, nx); only the pages asked for are decoded.

    Their decoded size is checked against the memory budget first: a tiny compressed file can declare huge frames.
    With `handle` (an open binary file), the file is read through it.
    """
    path = require_file(path)
    with open_tiff_pages(path, "TIFF file", handle) as (tif, pages):
        ny, nx = _frame_shape(path, pages)
        start, stop = check_frame_range(path, frame_range, len(pages))
        check_decoded_size(path, (stop - start, ny, nx), pages[0].dtype, f"TIFF frames [{start}, {stop})")
        try:
            with memory_error_as_file_error(path, f"TIFF frames [{start}, {stop})"):
                frames = tif.asarray(key=range(start, stop))
        except (tifffile.TiffFileError, ValueError, RuntimeError, OSError) as exc:
            raise ImageFileError(path, f"cannot decode TIFF frames [{start}, {stop}) ({exc})") from None
    return frames.reshape(stop - start, ny, nx)


def write_tiff(path: str | Path, frames: np.ndarray, compression: str | None = "lzw") -> Path:
    """Write a (n_frames, ny, nx) or (ny, nx) array as one page per frame, atomically; returns the path.

    Pages carry no tifffile-specific shape metadata, like the TIFF movies EPU and SerialEM write.
    """
    path = Path(path)
    array = np.asarray(frames)
    if array.ndim not in (2, 3):
        raise ImageFileError(path, f"cannot write a {array.ndim}D array as a TIFF movie")
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp) as writer:
            for frame in array.reshape(-1, *array.shape[-2:]):
                writer.write(frame, compression=compression, photometric="minisblack", metadata=None)
    return path
