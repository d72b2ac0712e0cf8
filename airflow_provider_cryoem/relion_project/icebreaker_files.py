"""Files of the IceBreaker jobs beside their STAR lists: the summary's `five_figs_test.csv` and the
micrograph jobs' `done_mics.txt`, in the layout IceBreaker 0.3.9 and cryoem-services' node creator write.

`five_figs_test.csv` (header `path,min,q1,q2=median,q3,max`) holds one row per grouped micrograph: its
five-figure summary (the grouped image's values × 10000, truncated, as `ib_5fig` prints them).
`done_mics.txt` names the micrographs a job has done, one file name a line; IceBreaker's `--in_mics` mode
skips those, so the job can be continued from Relion. Both are rewritten per micrograph (a retry replaces
its row, never adds one); callers hold the project lock.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..io._atomic import write_text_atomic

FIVE_FIGURES_FILE = "five_figs_test.csv"
DONE_MICROGRAPHS_FILE = "done_mics.txt"
FIVE_FIGURES_HEADER = "path,min,q1,q2=median,q3,max"
FIVE_FIGURE_KEYS = ("minimum", "q1", "median", "q3", "maximum")


def _replace(path: Path, lines: list[str]) -> None:
    write_text_atomic(path, "".join(f"{line}\n" for line in lines))


def upsert_five_figures(job_dir: Path, micrograph: str, figures: Mapping[str, float]) -> Path:
    """Put `micrograph`'s five figures into the job's five_figs_test.csv (its old row replaced)."""
    if "," in micrograph or "\n" in micrograph:
        raise ValueError(f"micrograph path {micrograph!r} cannot go into a CSV row (comma or newline)")
    path = job_dir / FIVE_FIGURES_FILE
    row = ",".join([micrograph, *(str(int(figures[key])) for key in FIVE_FIGURE_KEYS)])
    lines = path.read_text().splitlines() if path.is_file() else []
    rows = [line for line in lines[1:] if line.strip() and line.split(",", 1)[0] != micrograph]
    _replace(path, [FIVE_FIGURES_HEADER, *rows, row])
    return path


def add_done_micrograph(job_dir: Path, micrograph_name: str) -> None:
    """List a micrograph's file name in done_mics.txt once."""
    path = job_dir / DONE_MICROGRAPHS_FILE
    names = path.read_text().splitlines() if path.is_file() else []
    if micrograph_name not in names:
        _replace(path, [*names, micrograph_name])
