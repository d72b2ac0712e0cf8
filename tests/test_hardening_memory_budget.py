"""Readers refuse files whose declared shape exceeds the decode budget, before decoding (issue 12, item 13)."""
from __future__ import annotations

import struct
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from airflow_provider_cryoem.io import ImageFileError, load_gain, movie_shape, read_movie, read_mrc, write_eer, \
    write_mrc, write_tiff
from airflow_provider_cryoem.io import memory_budget

HUGE = 60_000  # 60000² uint16 = 7.2 GB a frame: two frames exceed any default budget (at most 8 GiB)
_TIFF_FORMATS = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8


def declare_frame_size(path: Path, ny: int, nx: int) -> Path:
    """Rewrite every page's width, height and rows-per-strip in place, leaving the few compressed bytes as they are.

    This is what a crafted or corrupt file looks like: a tiny page table that declares enormous frames.
    """
    with tifffile.TiffFile(path) as tif:
        byteorder = tif.byteorder
        patches = [(tag.valueoffset, tag.dtype, value) for page in tif.pages
                   for name, value in (("ImageWidth", nx), ("ImageLength", ny), ("RowsPerStrip", ny))
                   for tag in [page.tags[name]]]
    raw = bytearray(path.read_bytes())
    for offset, dtype, value in patches:
        packed = struct.pack(byteorder + _TIFF_FORMATS[int(dtype)], value)
        raw[offset:offset + len(packed)] = packed
    path.write_bytes(bytes(raw))
    return path


def zero_tiff(path: Path, n_frames: int = 2) -> Path:
    """A deflate TIFF of all-zero 16 × 16 frames, one strip a page, so the size tags can be rewritten."""
    tifffile.imwrite(path, np.zeros((n_frames, 16, 16), np.uint16), compression="zlib", photometric="minisblack",
                     metadata=None, rowsperstrip=16)
    return path


def test_tiff_declaring_huge_frames_is_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    path = declare_frame_size(zero_tiff(tmp_path / "movie.tif"), HUGE, HUGE)
    assert path.stat().st_size < 1000
    assert movie_shape(path) == (2, HUGE, HUGE)  # the header alone is fine to read

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoding started")
    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_decoding)
    with pytest.raises(ImageFileError, match=r"movie\.tif: .*2 × 60000 × 60000 uint16 .*budget") as error:
        read_movie(path)
    assert error.value.path == str(path)


def test_eer_declaring_huge_frames_is_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    events = np.zeros((2, 16, 16), np.uint8)
    path = declare_frame_size(write_eer(tmp_path / "movie.eer", events, pixel_size_a=1.0), HUGE, HUGE)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoding started")
    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_decoding)
    with pytest.raises(ImageFileError, match=r"movie\.eer: EER fractions .*budget"):
        read_movie(path, eer_grouping=1)


def test_tiff_gain_declaring_a_huge_image_is_refused(tmp_path: Path) -> None:
    path = declare_frame_size(zero_tiff(tmp_path / "reference.gain", n_frames=1), 2 * HUGE, 2 * HUGE)
    with pytest.raises(ImageFileError, match=r"reference\.gain: .*budget"):
        load_gain(path, expected_shape=(16, 16))


def test_mrc_gain_as_large_as_it_declares_is_refused_before_reading(tmp_path: Path, monkeypatch) -> None:
    path = write_mrc(tmp_path / "gain.mrc", np.ones((16, 16), np.float32), pixel_size_a=1.0)
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.header.nx = mrc.header.ny = mrc.header.mx = mrc.header.my = HUGE
    with open(path, "r+b") as handle:  # sparse: the file holds every declared byte without using the disk
        handle.truncate(1024 + HUGE * HUGE * 4)

    open_header = mrcfile.open

    def header_only(*args, **kwargs):
        assert kwargs.get("header_only"), "reading the data started"
        return open_header(*args, **kwargs)
    monkeypatch.setattr(mrcfile, "open", header_only)
    with pytest.raises(ImageFileError, match=r"gain\.mrc: MRC data of 1 × 60000 × 60000 float32 .*budget"):
        load_gain(path)


def test_budget_comes_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    path = write_tiff(tmp_path / "movie.tif", np.ones((4, 16, 16), np.uint16))  # 2048 bytes decoded
    monkeypatch.setenv(memory_budget.BUDGET_ENV, "2048")
    assert read_movie(path).shape == (4, 16, 16)
    monkeypatch.setenv(memory_budget.BUDGET_ENV, "2047")
    with pytest.raises(ImageFileError, match="2048 bytes decoded, over the 2047-byte budget"):
        read_movie(path)
    monkeypatch.setenv(memory_budget.BUDGET_ENV, "8G")
    with pytest.raises(ValueError, match="CRYOEM_MAX_DECODED_BYTES must be a whole number of bytes"):
        read_movie(path)


def test_default_budget_is_8_gib_or_half_the_physical_memory(monkeypatch) -> None:
    monkeypatch.delenv(memory_budget.BUDGET_ENV, raising=False)
    monkeypatch.setattr(memory_budget, "_physical_memory_bytes", lambda: 4 * 1024**3)
    assert memory_budget.max_decoded_bytes() == 2 * 1024**3
    monkeypatch.setattr(memory_budget, "_physical_memory_bytes", lambda: None)
    assert memory_budget.max_decoded_bytes() == 8 * 1024**3


def _out_of_memory(*args, **kwargs):
    raise MemoryError


@pytest.mark.parametrize("kind", ["tiff", "eer", "mrc"])
def test_memory_error_while_decoding_is_that_files_error(tmp_path: Path, monkeypatch, kind: str) -> None:
    frames = np.ones((2, 16, 16), np.uint8)
    if kind == "tiff":
        path = write_tiff(tmp_path / "movie.tif", frames)
        monkeypatch.setattr(tifffile.TiffFile, "asarray", _out_of_memory)
    elif kind == "eer":
        path = write_eer(tmp_path / "movie.eer", frames, pixel_size_a=1.0)
        monkeypatch.setattr(tifffile.TiffPage, "asarray", _out_of_memory)
    else:
        path = write_mrc(tmp_path / "movie.mrc", frames, pixel_size_a=1.0)
        open_header = mrcfile.open
        monkeypatch.setattr(mrcfile, "open", lambda *args, **kwargs: open_header(*args, **kwargs)
                            if kwargs.get("header_only") else _out_of_memory())
    with pytest.raises(ImageFileError, match="out of memory while decoding") as error:
        if kind == "mrc":
            read_mrc(path, mmap=False)
        else:
            read_movie(path, eer_grouping=1)
    assert error.value.path == str(path)
