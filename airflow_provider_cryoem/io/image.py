"""Single 2D images (gain references, defect masks) from MRC or TIFF; EPU's `.gain` files are TIFF."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._paths import require_file
from .errors import ImageFileError
from .mrc import MRC_SUFFIXES, read_mrc, read_mrc_shape
from .tiff import TIFF_SUFFIXES, read_tiff, tiff_shape

IMAGE_SUFFIXES = MRC_SUFFIXES + TIFF_SUFFIXES + (".gain",)


def read_image_2d(path: str | Path) -> tuple[Path, np.ndarray]:
    """Return the checked path and its single 2D image (a one-frame stack is accepted), loaded into memory.

    The shape comes from the header first, so a stack or a huge declared image is refused before decoding
    (the readers then check the decoded size against the memory budget).
    """
    path = require_file(path, IMAGE_SUFFIXES)
    is_mrc = path.suffix.lower() in MRC_SUFFIXES
    shape = read_mrc_shape(path) if is_mrc else tiff_shape(path)
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise ImageFileError(path, f"expected a single 2D image, found an array of shape {shape}")
    data = read_mrc(path, mmap=False) if is_mrc else read_tiff(path)
    return path, np.asarray(data).reshape(shape)
