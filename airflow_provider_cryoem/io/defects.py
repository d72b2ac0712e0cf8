"""Camera defect maps (bad pixels, columns, rows) and their correction by the local mean of good neighbours."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._paths import require_file
from .errors import ImageFileError
from .image import IMAGE_SUFFIXES, read_image_2d


def _mask_from_text(path: Path, frame_shape: tuple[int, int]) -> np.ndarray:
    """MotionCor2 -DefectFile rectangles, one `x y w h` per line (x = column, y = row of the first pixel)."""
    ny, nx = frame_shape
    mask = np.zeros(frame_shape, dtype=bool)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise ImageFileError(path, "defect file is not text (expected lines 'x y w h', or an MRC/TIFF mask)") from None
    for line_number, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            x, y, w, h = (int(value) for value in fields)
        except ValueError:
            # Never the line itself: a wrong path could point at a file of secrets, and errors reach logs.
            raise ImageFileError(path, f"line {line_number}: expected four integers 'x y w h' "
                                       f"(got {len(fields)} fields that are not all integers)") from None
        if w < 1 or h < 1 or x < 0 or y < 0 or x >= nx or y >= ny:
            raise ImageFileError(path, f"line {line_number}: rectangle x={x} y={y} w={w} h={h} is empty or outside "
                                       f"the {nx} x {ny} frame")
        mask[y:y + h, x:x + w] = True
    return mask


def load_defect_map(path: str | Path, frame_shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask (True = bad pixel) from an MRC/TIFF mask (non-zero = bad) or a defect text file."""
    path = require_file(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return _mask_from_text(path, frame_shape)
    path, image = read_image_2d(path)
    if image.shape != tuple(frame_shape):
        raise ImageFileError(path, f"defect mask shape {image.shape} does not match the movie frames "
                                   f"{tuple(frame_shape)}")
    return image != 0


def correct_defects(frame_or_stack: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Float32 copy with bad pixels replaced by the mean of the good pixels around them.

    The mean, not the median: at ~1 count per pixel the median of Poisson counts is biased towards whole
    numbers. Neighbourhoods are gathered for all bad pixels at once, starting at 3 × 3 and widening
    (7, 15, ...) for pixels with no good neighbour yet, so whole bad columns or clusters are filled from
    their edges; bad values (even NaN or inf) never enter a mean.
    """
    data = np.array(frame_or_stack, dtype=np.float32)
    stack = data.reshape(-1, *data.shape[-2:])
    bad = np.asarray(mask, dtype=bool)
    if bad.shape != stack.shape[1:]:
        raise ValueError(f"defect mask shape {bad.shape} does not match frame shape {stack.shape[1:]}")
    if bad.all():
        raise ValueError("defect mask marks every pixel bad")
    ny, nx = bad.shape
    todo_rows, todo_cols = np.nonzero(bad)
    half = 1
    while todo_rows.size:
        dy, dx = np.mgrid[-half:half + 1, -half:half + 1].reshape(2, -1)
        rows, cols = todo_rows[:, None] + dy, todo_cols[:, None] + dx
        inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
        rows, cols = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
        usable = inside & ~bad[rows, cols]
        count = usable.sum(axis=1)
        filled = count > 0
        rows, cols, usable = rows[filled], cols[filled], usable[filled]
        for frame in stack:  # one frame's neighbourhoods in memory at a time
            total = np.sum(frame[rows, cols], axis=1, where=usable)
            frame[todo_rows[filled], todo_cols[filled]] = total / count[filled]
        todo_rows, todo_cols = todo_rows[~filled], todo_cols[~filled]
        half = 2 * half + 1
    return data
