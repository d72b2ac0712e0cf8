"""Single 2D images (gain references, defect masks) from MRC or TIFF; EPU's `.gain` files are TIFF."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._paths import require_file
from .errors import ImageFileError
from .mrc import MRC_SUFFIXES, read_mrc
from .tiff import TIFF_SUFFIXES, read_tiff

IMAGE_SUFFIXES = MRC_SUFFIXES + TIFF_SUFFIXES + (".gain",)


def read_image_2d(path: str | Path) -> tuple[Path, np.ndarray]:
    """Return the checked path and its single 2D image (a one-frame stack is accepted), loaded into memory."""
    path = require_file(path, IMAGE_SUFFIXES)
    data = read_mrc(path, mmap=False) if path.suffix.lower() in MRC_SUFFIXES else read_tiff(path)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise ImageFileError(path, f"expected a single 2D image, found an array of shape {data.shape}")
    return path, np.asarray(data)
