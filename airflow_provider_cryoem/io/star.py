"""Relion STAR files over starfile: every block as a DataFrame on reading, atomic writes."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import starfile

from ._atomic import atomic_path
from ._paths import require_file
from .errors import ImageFileError


def read_star(path: str | Path) -> dict[str, pd.DataFrame]:
    """All data blocks by name; a key-value block (e.g. `data_general`) becomes a one-row DataFrame.

    starfile tolerates text that is not STAR (returns nothing) and short last rows (pads with NaN);
    both are errors here, since they mean a wrong or truncated file.
    """
    path = require_file(path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except (ValueError, KeyError, IndexError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ImageFileError(path, f"malformed STAR file ({type(exc).__name__}: {exc})") from None
    if not blocks:
        raise ImageFileError(path, "no STAR data blocks found (expected 'data_<name>' sections)")
    tables: dict[str, pd.DataFrame] = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            if len(block) and block.iloc[-1].isna().any():
                raise ImageFileError(path, f"block data_{name}: last row has fewer values than columns "
                                           "(truncated file?)")
            tables[name] = block
        else:
            tables[name] = pd.DataFrame([block])
    return tables


def write_star(path: str | Path, blocks: Mapping[str, pd.DataFrame | Mapping[str, Any]]) -> Path:
    """Write blocks atomically (temp + rename): DataFrames as loops, plain mappings as key-value blocks."""
    path = Path(path)
    for name, block in blocks.items():
        if not isinstance(block, (pd.DataFrame, Mapping)):
            raise TypeError(f"STAR block {name!r} for {path} must be a DataFrame or a mapping, "
                            f"not {type(block).__name__}")
    with atomic_path(path) as tmp:
        starfile.write(dict(blocks), tmp)
    return path
