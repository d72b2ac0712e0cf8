"""Open a multi-page TIFF (movie or EER) and check its page table, so truncation is an error, not fewer frames."""
from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import tifffile

from .errors import ImageFileError


class _Collect(logging.Handler):
    """Keeps tifffile's logged errors: tifffile logs (not raises) a broken page chain and returns fewer pages."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def open_tiff_pages(path: Path, what: str, handle: BinaryIO | None = None
                    ) -> Iterator[tuple[tifffile.TiffFile, list[tifffile.TiffPage]]]:
    """Yield the open TiffFile and its frame pages after checking that every page lies inside the file.

    With `handle` (an open binary file, see _unchanged.read_unchanged) the file is read through it."""
    collector = _Collect()
    logger = tifffile.logger()
    logger.addHandler(collector)
    try:
        try:
            tif = tifffile.TiffFile(path if handle is None else handle)
        except (tifffile.TiffFileError, ValueError, OSError, struct.error) as exc:
            raise ImageFileError(path, f"malformed or truncated {what} ({exc})") from None
        with tif:
            try:
                pages = list(tif.pages)
            except (tifffile.TiffFileError, ValueError, struct.error) as exc:
                raise ImageFileError(path, f"truncated or corrupt {what} ({exc})") from None
            if collector.messages:
                raise ImageFileError(path, f"truncated or corrupt {what}: {collector.messages[0]}")
            file_bytes = (path.stat() if handle is None else os.fstat(handle.fileno())).st_size
            for index, page in enumerate(pages):
                ends = [offset + count for offset, count in zip(page.dataoffsets, page.databytecounts)]
                if not ends or max(ends) > file_bytes:
                    raise ImageFileError(path, f"truncated {what}: data of frame {index} lies beyond the end "
                                               f"of the file ({file_bytes} bytes)")
            yield tif, pages
    finally:
        logger.removeHandler(collector)

