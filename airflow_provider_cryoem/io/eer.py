"""Thermo Fisher EER movies (Falcon 4/4i/C): decode with tifffile + imagecodecs, sum `eer_grouping` frames per fraction.

An EER file is a BigTIFF whose pages are detector frames, each one strip coded as a bit stream of electron
events (compression 65000: 8-bit runs, 65001: 7-bit runs, 65002: run/sub-pixel sizes in tags 65007-65009;
each run is followed by 2+2 sub-pixel bits unless it is all ones). Decoding is done by imagecodecs'
`eer_decode` through tifffile, the same path the `eerfile` package takes; `eerfile.render` groups by dose
and decodes a whole chunk at once, so fractions are summed here page by page instead (memory: one fraction).
Sub-pixel positions are ignored (no super-resolution), as with Relion's default EER upsampling of 1.
"""
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

EER_SUFFIXES = (".eer",)
EER_COMPRESSIONS = (65000, 65001, 65002)
_RUN_BITS = 7  # compression 65001
_SUBPIXEL_BITS = 4


def _event_pages(path: Path, pages: list[tifffile.TiffPage]) -> list[tifffile.TiffPage]:
    """The EER frame pages; a leading uncompressed page (the integrated image some writers add) is skipped."""
    frames = [page for page in pages if page.compression in EER_COMPRESSIONS]
    if not frames:
        codes = sorted({int(page.compression) for page in pages})
        raise ImageFileError(path, f"not an EER movie: no page uses EER compression 65000-65002 (found {codes})")
    return frames


def _n_fractions(path: Path, n_eer_frames: int, eer_grouping: int) -> int:
    """Whole fractions only: trailing frames that do not fill a group are dropped, as Relion does."""
    if eer_grouping < 1:
        raise ImageFileError(path, f"eer_grouping must be >= 1, got {eer_grouping}")
    if eer_grouping > n_eer_frames:
        raise ImageFileError(path, f"eer_grouping {eer_grouping} exceeds the {n_eer_frames} EER frames in the file")
    return n_eer_frames // eer_grouping


def eer_shape(path: str | Path, eer_grouping: int = 20) -> tuple[int, int, int]:
    """(n_fractions, ny, nx) after grouping, from the page table alone."""
    path = require_file(path, EER_SUFFIXES)
    with open_tiff_pages(path, "EER file") as (_, pages):
        frames = _event_pages(path, pages)
        ny, nx = frames[0].shape[:2]
        return _n_fractions(path, len(frames), eer_grouping), ny, nx


def read_eer(path: str | Path, frame_range: tuple[int, int] | None = None, eer_grouping: int = 20,
             handle: BinaryIO | None = None) -> np.ndarray:
    """Fractions `[start, stop)` (all by default) as uint16 (n_fractions, ny, nx) electron counts.

    Fraction i is the sum of EER frames `[i * eer_grouping, (i + 1) * eer_grouping)`. With `handle` (an open
    binary file), the file is read through it.
    """
    path = require_file(path, EER_SUFFIXES)
    with open_tiff_pages(path, "EER file", handle) as (_, pages):
        frames = _event_pages(path, pages)
        ny, nx = frames[0].shape[:2]
        start, stop = check_frame_range(path, frame_range, _n_fractions(path, len(frames), eer_grouping))
        # the fractions and one decoded EER frame (uint8 or less, counted here as uint16) are held at once
        check_decoded_size(path, (stop - start + 1, ny, nx), np.uint16,
                           f"EER fractions [{start}, {stop}) and one decoded frame")
        with memory_error_as_file_error(path, f"EER fractions [{start}, {stop})"):
            fractions = np.zeros((stop - start, ny, nx), dtype=np.uint16)
            for fraction_index in range(start, stop):
                for eer_index in range(fraction_index * eer_grouping, (fraction_index + 1) * eer_grouping):
                    try:
                        events = frames[eer_index].asarray()
                    except (tifffile.TiffFileError, ValueError, RuntimeError, OSError) as exc:
                        raise ImageFileError(path, f"cannot decode EER frame {eer_index} ({exc})") from None
                    fractions[fraction_index - start] += events.reshape(ny, nx)
    return fractions


def encode_eer_frame(events: np.ndarray) -> bytes:
    """Code one 0/1 event frame as an EER 7-bit-run bit stream (compression 65001), sub-pixel bits zero.

    Runs of 127 (all ones) continue without an event; a final run to the end of the frame ends the stream
    (the decoder stops there, so padding bits are never read); the strip is padded to an even byte count.
    """
    flat = np.flatnonzero(events.ravel())
    positions = np.append(flat, events.size)  # the end of the frame acts as a last, never-decoded event
    gaps = np.diff(positions, prepend=-1) - 1
    max_run = (1 << _RUN_BITS) - 1
    codes_per_event = gaps // max_run + 1
    n_codes = int(codes_per_event.sum())
    values = np.full(n_codes, max_run, dtype=np.int64)
    widths = np.full(n_codes, _RUN_BITS, dtype=np.int64)
    event_codes = np.cumsum(codes_per_event) - 1
    values[event_codes] = gaps % max_run
    widths[event_codes] = _RUN_BITS + _SUBPIXEL_BITS
    bit_in_code = np.arange(int(widths.sum())) - np.repeat(np.cumsum(widths) - widths, widths)
    bits = ((np.repeat(values, widths) >> bit_in_code) & 1).astype(np.uint8)
    packed = np.packbits(bits, bitorder="little").tobytes()
    return packed + bytes(len(packed) % 2)


def _metadata_xml(n_frames: int, ny: int, nx: int, pixel_size_a: float) -> bytes:
    """The acquisition metadata block (tag 65001) that marks a BigTIFF as EER for tifffile and eerfile."""
    pixel_m = pixel_size_a * 1e-10
    items = {"numberOfFrames": n_frames, "sensorImageHeight": ny, "sensorImageWidth": nx,
             "sensorPixelSize.height": pixel_m, "sensorPixelSize.width": pixel_m}
    body = "".join(f'<item name="{name}">{value}</item>' for name, value in items.items())
    return f"<metadata>{body}</metadata>".encode()


def write_eer(path: str | Path, events: np.ndarray, pixel_size_a: float) -> Path:
    """Write (n_frames, ny, nx) 0/1 event frames as an EER file (compression 65001), atomically.

    For synthetic sessions and tests: a pixel holds at most one event per EER frame, as in the format.
    tifffile cannot encode EER, so strips are coded here, written under a placeholder codec, and the
    Compression tag is then set to 65001.
    """
    path = Path(path)
    frames = np.asarray(events)
    if frames.ndim != 3 or (frames.size and (frames.min() < 0 or frames.max() > 1)):
        raise ImageFileError(path, "EER frames must be a (n_frames, ny, nx) array of 0/1 events")
    n_frames, ny, nx = frames.shape
    xml = _metadata_xml(n_frames, ny, nx, pixel_size_a)
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as writer:
            for frame in frames:
                writer.write(iter([encode_eer_frame(frame)]), shape=(ny, nx), dtype=np.uint8,
                             compression="zlib", rowsperstrip=ny, photometric="minisblack", metadata=None,
                             extratags=[(65001, 7, len(xml), xml, True)])
        with tifffile.TiffFile(tmp, mode="r+b") as tif:
            for page in tif.pages:
                page.tags[259].overwrite(65001)
    return path
