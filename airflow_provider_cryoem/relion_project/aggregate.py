"""Aggregate STAR files that grow one micrograph at a time, without duplicates.

A new micrograph's rows are appended as plain lines (cheap, as cryoem-services does); a
micrograph seen before (a retried task) has its rows replaced by rewriting the file atomically.
Which micrographs are present is kept in a sidecar `.<file>.keys`, written before the rows so that
a crash between the two only ever leads to the rewrite path. A table written whole at once (a tilt
series after alignment) is replaced with `replace_rows`. Callers hold the project lock.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from ..io import ImageFileError
from ..io._atomic import naming_disk_full
from ..io._atomic import write_text_atomic as _atomic_write
from .star_text import Value, format_row, parse_star


def _keys_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.keys")


def append_whole(path: Path, text: str) -> None:
    """Append `text` whole or not at all: a short write (full disk, quota) is retried for the rest, and a
    write that fails part-way is cut back off, so no truncated row is ever left; a full disk is a
    DiskFullError naming `path`. Callers hold the lock."""
    data = memoryview(text.encode())
    with naming_disk_full(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size_before = os.fstat(fd).st_size
            try:
                while data:
                    written = os.write(fd, data)
                    if written == 0:
                        raise OSError(errno.ENOSPC, f"no progress writing {len(data)} bytes", str(path))
                    data = data[written:]
            except BaseException:
                os.ftruncate(fd, size_before)
                raise
        finally:
            os.close(fd)


def _split_header(path: Path, text: str) -> tuple[str, list[str]]:
    """Header text up to the last column label, and the row lines after it."""
    lines = text.splitlines(keepends=True)
    last_label = max((i for i, line in enumerate(lines) if line.startswith("_")), default=-1)
    if last_label < 0:
        raise ImageFileError(path, "no loop columns: not an aggregate STAR file")
    return "".join(lines[: last_label + 1]), [line for line in lines[last_label + 1:] if line.strip()]


def _present_keys(path: Path, key_column: str) -> set[str]:
    keys_file = _keys_path(path)
    if keys_file.exists():
        return set(keys_file.read_text().split())
    if not path.exists():
        return set()
    try:
        block = list(parse_star(path.read_text()).values())[-1]
        keys = {row[block.column(key_column)] for row in block.rows}
    except (ValueError, IndexError) as exc:
        raise ImageFileError(path, f"cannot rebuild the micrograph index ({exc})") from None
    _atomic_write(keys_file, "".join(f"{key}\n" for key in sorted(keys)))
    return keys


def _data_columns(path: Path, block: str) -> list[str]:
    """Column labels of `data_<block>`, reading only the head of the file."""
    columns: list[str] = []
    in_block = False
    with open(path) as handle:
        for line in handle:
            text = line.strip()
            if text.startswith("data_"):
                in_block = text == f"data_{block}"
            elif in_block and text.startswith("_"):
                columns.append(text.split()[0][1:])
            elif in_block and columns and text and not text.startswith(("#", "loop_")):
                break
    return columns


def upsert_rows(path: Path, header: str, block: str, columns: Sequence[str], key_column: str, key: str,
                rows: Sequence[Sequence[Value]]) -> None:
    """Make `rows` the only rows of `path` whose `key_column` equals `key` (header written if new)."""
    key_index = list(columns).index(key_column)
    if any(str(row[key_index]) != key for row in rows):
        raise ValueError(f"{path}: every row must have {key_column} = {key}")
    new_lines = "".join(format_row(row) for row in rows)
    if not path.exists():
        _atomic_write(_keys_path(path), f"{key}\n")
        _atomic_write(path, header + new_lines)
        return
    found = _data_columns(path, block)
    if found != list(columns):
        raise ImageFileError(path, f"data_{block} has columns {found}, cannot add rows with {list(columns)}")
    if key not in _present_keys(path, key_column):
        append_whole(_keys_path(path), f"{key}\n")
        append_whole(path, new_lines)
        return
    existing_header, lines = _split_header(path, path.read_text())
    kept = [line for line in lines if line.split()[key_index] != key]
    _atomic_write(path, existing_header + "".join(kept) + new_lines)


def replace_rows(path: Path, header: str, rows: Sequence[Sequence[Value]]) -> None:
    """Make `rows` the whole table of `path`, atomically: for tables written at once, never row by row.

    The key sidecar is dropped first, so a later `upsert_rows` on the file rebuilds it from the rows.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _keys_path(path).unlink(missing_ok=True)
    _atomic_write(path, header + "".join(format_row(row) for row in rows))
