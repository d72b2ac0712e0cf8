"""Rebatching: extracted particles, one micrograph at a time, into 2D classification batches of N.

As cryoem-services' SelectParticles: rows go into `Select/jobNNN/particles_split<k>.star`
(alias `Live_particle_batches`); batch 1 is smaller (`first_batch_size`) so the first classes show
up early, later batches hold `batch_size`. A batch file is written once, when it is full (or at
`flush` for the last, incomplete one), and then never changes.

Idempotent and safe for concurrent callers: the pending rows, which micrographs were seen and which
batches were emitted live in `<Select job>/.particle_batches.sqlite`, changed only under an flock
on `<Select job>/.particle_batches.lock`. A micrograph seen before (a retried extraction) has its
still-pending rows replaced; once any of its rows is in an emitted batch it is ignored, so no
particle is ever in two batches.
"""
from __future__ import annotations

import fcntl
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from pydantic import BaseModel, Field

from ..io import ImageFileError, read_star
from ..io._atomic import write_text_atomic
from ..relion_project import NodeType, RelionJob, RelionProject
from ..relion_project.data_files import optics_block
from ..relion_project.job_types import STAR_VERSION
from ..relion_project.star_text import Value, format_row, loop_header

STATE_FILE = ".particle_batches.sqlite"
LOCK_FILE = ".particle_batches.lock"
BATCH_ALIAS = "Live_particle_batches"
MICROGRAPH_COLUMN = "rlnMicrographName"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS particles (seq INTEGER PRIMARY KEY AUTOINCREMENT, micrograph TEXT NOT NULL,
                                      row TEXT NOT NULL, batch INTEGER);
CREATE INDEX IF NOT EXISTS particles_by_micrograph ON particles (micrograph);
CREATE INDEX IF NOT EXISTS particles_by_batch ON particles (batch);
CREATE TABLE IF NOT EXISTS batches (number INTEGER PRIMARY KEY, star_path TEXT NOT NULL,
                                    n_particles INTEGER NOT NULL, complete INTEGER NOT NULL);
"""


class BatchSizes(BaseModel):
    """Particles per batch: the first (smaller) batch, then every later one."""

    first_batch_size: int = Field(ge=1)
    batch_size: int = Field(ge=1)

    def size_of(self, number: int) -> int:
        return self.first_batch_size if number == 1 else self.batch_size


class CompletedBatch(BaseModel):
    """A batch file that was just written: hand it to 2D classification."""

    number: int
    star_path: str = Field(description="Project-relative, e.g. Select/job006/particles_split1.star.")
    n_particles: int
    complete: bool = Field(description="False for the last, partly filled batch written by flush().")


def batch_job(project: RelionProject) -> RelionJob:
    """The Select job that holds the batch files (created, with its Extract input, on first use)."""
    return project.job("select", alias=BATCH_ALIAS)


def particle_rows(particles_star: str | Path, micrograph: str | None = None) -> list[dict[str, Value]]:
    """Rows of a particles STAR file (e.g. Extract/job005/particles.star) as dicts, optionally of one micrograph."""
    blocks = read_star(particles_star)
    if "particles" not in blocks:
        raise ImageFileError(particles_star, f"no data_particles block (found {sorted(blocks)})")
    table = blocks["particles"]
    if micrograph is not None:
        if MICROGRAPH_COLUMN not in table.columns:
                raise ImageFileError(particles_star, f"data_particles lacks {MICROGRAPH_COLUMN}")
        table = table[table[MICROGRAPH_COLUMN].astype(str) == str(micrograph)]
    return [{column: _plain(value) for column, value in row.items()} for row in table.to_dict("records")]


def add_particles(project: RelionProject, micrograph: str | Path, rows: Sequence[Mapping[str, Value]],
                  sizes: BatchSizes) -> list[CompletedBatch]:
    """Queue one micrograph's particle rows; write and return every batch that became full."""
    job = batch_job(project)
    key = project.relative(micrograph)
    columns = _columns_of(key, rows)
    with _state(job, sizes) as db:
        if db.execute("SELECT 1 FROM particles WHERE micrograph = ? AND batch IS NOT NULL LIMIT 1",
                      (key,)).fetchone():
            return []  # already in an emitted batch: a retry must not add it again
        db.execute("DELETE FROM particles WHERE micrograph = ?", (key,))
        if rows:
            _check_columns(db, key, columns)
            db.executemany("INSERT INTO particles (micrograph, row) VALUES (?, ?)",
                           [(key, json.dumps([row[column] for column in columns])) for row in rows])
        emitted = _emit(project, job, db, sizes, final=False)
    _register(project, job, emitted, sizes)
    return emitted


def flush(project: RelionProject, sizes: BatchSizes) -> list[CompletedBatch]:
    """At session end: write the pending rows as a last, incomplete batch (nothing if none are pending)."""
    job = batch_job(project)
    with _state(job, sizes) as db:
        emitted = _emit(project, job, db, sizes, final=True)
    _register(project, job, emitted, sizes)
    return emitted


def emitted_batches(project: RelionProject) -> list[CompletedBatch]:
    """Every batch written so far, in order."""
    job = batch_job(project)
    if not (job.path / STATE_FILE).exists():
        return []
    with closing(sqlite3.connect(job.path / STATE_FILE)) as db:
        return [CompletedBatch(number=n, star_path=p, n_particles=c, complete=bool(f)) for n, p, c, f in
                db.execute("SELECT number, star_path, n_particles, complete FROM batches ORDER BY number")]


def pending_count(project: RelionProject) -> int:
    """Particles queued but not yet in a batch."""
    job = batch_job(project)
    if not (job.path / STATE_FILE).exists():
        return 0
    with closing(sqlite3.connect(job.path / STATE_FILE)) as db:
        return int(db.execute("SELECT COUNT(*) FROM particles WHERE batch IS NULL").fetchone()[0])


# ----- internals ------------------------------------------------------------------------------------------

def _plain(value: object) -> Value:
    """numpy scalars from pandas → Python int/float/str (JSON and STAR writing need plain values)."""
    if hasattr(value, "item"):
        value = value.item()  # type: ignore[union-attr]
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    return str(value)


def _columns_of(micrograph: str, rows: Sequence[Mapping[str, Value]]) -> list[str]:
    if not rows:
        return []
    columns = list(rows[0])
    for index, row in enumerate(rows):
        if set(row) != set(columns):
            raise ValueError(f"particle rows of {micrograph}: row {index} has columns {sorted(row)}, "
                             f"row 0 has {sorted(columns)}")
    return columns


def _check_columns(db: sqlite3.Connection, micrograph: str, columns: list[str]) -> None:
    """Every batch file has one column set: the one of the first micrograph queued."""
    stored = db.execute("SELECT value FROM settings WHERE name = 'columns'").fetchone()
    if stored is None:
        db.execute("INSERT INTO settings VALUES ('columns', ?)", (json.dumps(columns),))
    elif json.loads(stored[0]) != columns:
        raise ValueError(f"particle rows of {micrograph} have columns {columns}, earlier micrographs had "
                         f"{json.loads(stored[0])}")


@contextmanager
def _state(job: RelionJob, sizes: BatchSizes) -> Iterator[sqlite3.Connection]:
    """The batching state under an exclusive flock, committed on success, rolled back on error."""
    job.path.mkdir(parents=True, exist_ok=True)
    with open(job.path / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with closing(sqlite3.connect(job.path / STATE_FILE, timeout=60.0, isolation_level=None)) as db:
                db.executescript(_SCHEMA)
                db.execute("BEGIN IMMEDIATE")
                try:
                    _check_sizes(db, job, sizes)
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_sizes(db: sqlite3.Connection, job: RelionJob, sizes: BatchSizes) -> None:
    """The sizes are fixed by the first call; a later call with others is a configuration mistake."""
    stored = db.execute("SELECT value FROM settings WHERE name = 'sizes'").fetchone()
    if stored is None:
        db.execute("INSERT INTO settings VALUES ('sizes', ?)", (sizes.model_dump_json(),))
    elif BatchSizes.model_validate_json(stored[0]) != sizes:
        raise ValueError(f"{job.path / STATE_FILE}: batches were started with {stored[0]}, "
                         f"now asked for {sizes.model_dump_json()}")


def _emit(project: RelionProject, job: RelionJob, db: sqlite3.Connection, sizes: BatchSizes,
          final: bool) -> list[CompletedBatch]:
    emitted = []
    while True:
        number = int(db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM batches").fetchone()[0])
        size = sizes.size_of(number)
        pending = db.execute("SELECT seq, row FROM particles WHERE batch IS NULL ORDER BY seq LIMIT ?",
                             (size,)).fetchall()
        if not pending or (len(pending) < size and not final):
            return emitted
        path = job.path / f"particles_split{number}.star"
        _write_batch(project, path, pending, db)
        db.executemany("UPDATE particles SET batch = ? WHERE seq = ?", [(number, seq) for seq, _ in pending])
        batch = CompletedBatch(number=number, star_path=project.relative(path), n_particles=len(pending),
                               complete=len(pending) == size)
        db.execute("INSERT INTO batches VALUES (?, ?, ?, ?)",
                   (number, batch.star_path, batch.n_particles, int(batch.complete)))
        emitted.append(batch)


def _write_batch(project: RelionProject, path: Path, rows: list[tuple[int, str]], db: sqlite3.Connection) -> None:
    """optics block + data_particles, written atomically (a crash before commit rewrites the same file)."""
    if project.optics is None:
        raise ValueError("RelionProject needs optics=OpticsGroup(...) with particle fields to write batches")
    columns = json.loads(db.execute("SELECT value FROM settings WHERE name = 'columns'").fetchone()[0])
    version = STAR_VERSION[project.dialect]
    text = (optics_block(project.optics, "particles", project.dialect)
            + loop_header("particles", columns, version)
            + "".join(format_row(json.loads(row)) for _, row in rows) + "\n")
    write_text_atomic(path, text)


def _register(project: RelionProject, job: RelionJob, emitted: list[CompletedBatch], sizes: BatchSizes) -> None:
    """List new batch files as the Select job's outputs, read from the Extract job's particles (job.star:
    Relion's split by subset size, the first batch's smaller size aside)."""
    if emitted:
        job.add_input(project.job("extract").output_node_name(), NodeType.PARTICLES)
        job.set_options({"do_split": "Yes", "split_size": sizes.batch_size, "nr_split": -1})
    for batch in emitted:
        job.add_output(batch.star_path, NodeType.PARTICLES)
