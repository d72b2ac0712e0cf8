"""Relion-style STAR text: writing blocks exactly as Relion lays them out, and reading them back.

Written by hand rather than through starfile so that rows can be appended as plain lines (as
cryoem-services does) and so that the pipeline file keeps Relion's own tokens (`None`, labels).
"""
from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Value = str | int | float


def format_value(value: Value, quote: bool = False) -> str:
    """One STAR token: floats with 6 decimals, `""` for empty; with `quote`, strings with spaces are quoted."""
    if isinstance(value, bool):
        raise TypeError("STAR values are numbers or strings, not bool")
    if isinstance(value, float):
        return f"{value:.6f}"
    text = str(value)
    if text == "":
        return '""'
    if any(ch.isspace() for ch in text) or text.startswith(("data_", "loop_", "_", "#")):
        if not quote:
            raise ValueError(f"STAR value {text!r} would break the file (whitespace or reserved start)")
        return '"' + text.replace('"', "'") + '"'
    return text


def pair_block(name: str, pairs: dict[str, Value], version: str, quote: bool = False) -> str:
    """A `data_<name>` block of `_rlnLabel value` lines."""
    width = max((len(label) for label in pairs), default=0) + 1
    lines = [f"\n# version {version}\n", f"data_{name}\n"]
    lines += [f"_{label:<{width}} {format_value(value, quote)}" for label, value in pairs.items()]
    return "\n".join(lines) + "\n \n"


def loop_header(name: str, columns: Sequence[str], version: str) -> str:
    """`data_<name>` + `loop_` + numbered column labels, ready for rows to be appended."""
    lines = [f"\n# version {version}\n", f"data_{name}\n", "loop_ "]
    lines += [f"_{column} #{i} " for i, column in enumerate(columns, start=1)]
    return "\n".join(lines) + "\n"


def format_row(values: Iterable[Value], quote: bool = False) -> str:
    return " ".join(format_value(value, quote) for value in values) + " \n"


def loop_block(name: str, columns: Sequence[str], rows: Iterable[Sequence[Value]], version: str,
               quote: bool = False) -> str:
    """A complete loop block (header, rows and Relion's closing blank line)."""
    return loop_header(name, columns, version) + "".join(format_row(row, quote) for row in rows) + " \n"


@dataclass
class StarBlock:
    """One data block: `pairs` for `_label value` blocks, `columns` + `rows` for loops."""

    pairs: dict[str, str] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)

    def column(self, label: str) -> int:
        return self.columns.index(label)


def _tokens(line: str) -> list[str]:
    return shlex.split(line) if ('"' in line or "'" in line) else line.split()


def parse_star(text: str) -> dict[str, StarBlock]:
    """Parse STAR text into blocks by name (without `data_`); raises ValueError on a malformed line."""
    blocks: dict[str, StarBlock] = {}
    block: StarBlock | None = None
    in_loop = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip() if raw.lstrip().startswith(("_", "#")) else raw.strip()
        if not line:
            continue
        if line.startswith("data_"):
            block = blocks.setdefault(line[5:], StarBlock())
            in_loop = False
        elif block is None:
            raise ValueError(f"line {number}: content before the first data_ block")
        elif line.startswith("loop_"):
            in_loop = True
        elif line.startswith("_"):
            tokens = _tokens(line)
            if in_loop and not block.rows:
                block.columns.append(tokens[0][1:])
            else:
                if len(tokens) < 2:
                    raise ValueError(f"line {number}: label without value")
                block.pairs[tokens[0][1:]] = tokens[1]
        elif in_loop:
            row = _tokens(line)
            if len(row) != len(block.columns):
                raise ValueError(f"line {number}: {len(row)} values for {len(block.columns)} columns")
            block.rows.append(row)
        else:
            raise ValueError(f"line {number}: unexpected content")
    return blocks
