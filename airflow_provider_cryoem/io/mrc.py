"""MRC stacks and images over mrcfile: memory-mapped reads, writes with the pixel size in the header."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import BinaryIO

import mrcfile
import numpy as np
from mrcfile.mrcinterpreter import MrcInterpreter

from ._atomic import atomic_path
from ._paths import check_frame_range, require_file
from .errors import ImageFileError
from .memory_budget import check_decoded_size, memory_error_as_file_error

MRC_SUFFIXES = (".mrc", ".mrcs", ".st", ".map")


def read_mrc(path: str | Path, mmap: bool = True) -> np.ndarray:
    """Return the data of an MRC file (a read-only memory map when `mmap`), raising ImageFileError if malformed.

    The memory map stays valid after the file is closed, so callers can slice frames lazily. Without `mmap`
    the header's shape is checked against the file size and the memory budget before the data are read.
    """
    path = require_file(path)
    if not mmap:
        shape, dtype = _checked_header(path)
        check_decoded_size(path, shape, dtype, "MRC data")
    opener = mrcfile.mmap if mmap else mrcfile.open
    try:
        with memory_error_as_file_error(path, "MRC data"), opener(path, mode="r", permissive=False) as mrc:
            data = mrc.data
    except (ValueError, OSError, OverflowError) as exc:  # OverflowError: a negative size reaching mmap
        raise ImageFileError(path, f"malformed or truncated MRC file ({exc})") from None
    if data is None:
        raise ImageFileError(path, "MRC file has no data block")
    return data


def _layout(path: Path, header: np.recarray, file_bytes: int) -> tuple[tuple[int, int, int], np.dtype, int]:
    """Shape `(nz, ny, nx)`, data dtype and data offset of a header, after checking that a file of `file_bytes`
    holds all the data it declares."""
    shape = (int(header.nz), int(header.ny), int(header.nx))
    data_start = header.nbytes + int(header.nsymbt)
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError as exc:
        raise ImageFileError(path, f"malformed MRC header ({exc})") from None
    if min(shape) < 1:
        raise ImageFileError(path, f"malformed MRC header: dimensions {shape} must be positive")
    expected_bytes = data_start + math.prod(shape) * dtype.itemsize
    if file_bytes < expected_bytes:
        raise ImageFileError(path, f"truncated MRC file: header declares {shape} {dtype} = {expected_bytes} bytes, "
                                   f"file has {file_bytes}")
    return shape, dtype, data_start


def _checked_header(path: Path) -> tuple[tuple[int, int, int], np.dtype]:
    """Header shape `(nz, ny, nx)` and data dtype, after checking the file holds all the data they declare."""
    try:
        with mrcfile.open(path, mode="r", header_only=True, permissive=False) as mrc:
            header = mrc.header
    except (ValueError, OSError) as exc:
        raise ImageFileError(path, f"malformed MRC header ({exc})") from None
    shape, dtype, _ = _layout(path, header, path.stat().st_size)
    return shape, dtype


def read_mrc_frames(path: Path, handle: BinaryIO, frame_range: tuple[int, int] | None = None) -> np.ndarray:
    """Sections `[start, stop)` (all by default) of an open MRC file as (n, ny, nx), copied into memory.

    Read through `handle`, never a memory map: a file truncated underneath gives a short read, an error naming
    the file, where a memory map would kill the process with SIGBUS.
    """
    try:
        header = MrcInterpreter(iostream=handle, permissive=False, header_only=True).header
    except (ValueError, OSError) as exc:
        raise ImageFileError(path, f"malformed MRC header ({exc})") from None
    (nz, ny, nx), dtype, data_start = _layout(path, header, os.fstat(handle.fileno()).st_size)
    start, stop = check_frame_range(path, frame_range, nz)
    check_decoded_size(path, (stop - start, ny, nx), dtype, f"MRC sections [{start}, {stop})")
    with memory_error_as_file_error(path, f"MRC sections [{start}, {stop})"):
        frames = np.empty((stop - start, ny, nx), dtype=dtype)
    wanted = frames.nbytes
    handle.seek(data_start + start * ny * nx * dtype.itemsize)
    got = handle.readinto(memoryview(frames.reshape(-1)).cast("B"))
    if got != wanted:
        raise ImageFileError(path, f"truncated while being read: {got} of {wanted} bytes of sections "
                                   f"[{start}, {stop}) could be read")
    return frames


def read_mrc_shape(path: str | Path) -> tuple[int, ...]:
    """Data shape `(nz, ny, nx)` (or `(ny, nx)` for a single image) from the header alone, checked against the size."""
    shape, _ = _checked_header(require_file(path))
    return shape if shape[0] > 1 else shape[1:]


def read_mrc_pixel_size_a(path: str | Path) -> float:
    """Pixel size in Å from the MRC header voxel size (x); 0.0 means the writer did not set it."""
    path = require_file(path)
    try:
        with mrcfile.open(path, mode="r", header_only=True, permissive=False) as mrc:
            return float(mrc.voxel_size.x)
    except (ValueError, OSError) as exc:
        raise ImageFileError(path, f"malformed MRC header ({exc})") from None


def write_mrc(path: str | Path, data: np.ndarray, pixel_size_a: float, is_stack: bool = False) -> Path:
    """Write `data` atomically (temp file + rename) with `pixel_size_a` in the header; returns the path.

    A 3D array is written as a volume unless `is_stack`, in which case it is an image stack (.mrcs, ISPG 0).
    float64 is stored as float32; uint8 is stored as uint16 (mode 6) by mrcfile, since MRC mode 0 is signed.
    """
    path = Path(path)
    array = np.asarray(data)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.ndim not in (2, 3):
        raise ImageFileError(path, f"cannot write a {array.ndim}D array as MRC (need 2D image or 3D stack)")
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            try:
                mrc.set_data(array)
            except ValueError as exc:
                raise ImageFileError(path, f"cannot write {array.dtype} data as MRC ({exc})") from None
            if is_stack and array.ndim == 3:
                mrc.set_image_stack()
            mrc.voxel_size = pixel_size_a
    return path
