"""The files Relion expects inside and beside a job folder: job.star, note.txt, exit markers, alias link."""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..io import ImageFileError
from ..io._atomic import naming_disk_full, write_text_atomic
from .aggregate import append_whole
from .job_types import STAR_VERSION, Dialect, JobKind
from .star_text import Value, loop_block, pair_block, parse_star

SUCCESS_MARKER = "RELION_JOB_EXIT_SUCCESS"
FAILURE_MARKER = "RELION_JOB_EXIT_FAILURE"


def job_star_text(kind: JobKind, dialect: Dialect, options: dict[str, Value]) -> str:
    """job.star: Relion 3.1 names the type by integer (_rlnJobType), Relion 5 by label (_rlnJobTypeLabel)."""
    version = STAR_VERSION[dialect]
    header: dict[str, Value] = (
        {"rlnJobType": kind.relion3_type, "rlnJobIsContinue": 0} if dialect == "relion3"
        else {"rlnJobTypeLabel": kind.relion5_label, "rlnJobIsContinue": 0, "rlnJobIsTomo": int(kind.is_tomo)})
    return (pair_block("job", header, version)
            + loop_block("joboptions_values", ["rlnJobOptionVariable", "rlnJobOptionValue"],
                         sorted(options.items()), version, quote=True))


def write_job_files(job_dir: Path, kind: JobKind, dialect: Dialect, options: dict[str, Value],
                    command: str | None) -> None:
    """Create the job folder with job.star and, when known, the command in note.txt."""
    job_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(job_dir / "job.star", job_star_text(kind, dialect, options))
    if command:
        append_note(job_dir, command)


def read_job_options(job_dir: Path) -> dict[str, str]:
    """The job options in a job folder's job.star (empty if it has none yet)."""
    path = job_dir / "job.star"
    if not path.exists():
        return {}
    try:
        block = parse_star(path.read_text()).get("joboptions_values")
    except ValueError as exc:
        raise ImageFileError(path, f"not a readable job.star ({exc})") from None
    return {row[0]: row[1] for row in block.rows} if block is not None else {}


def update_job_options(job_dir: Path, kind: JobKind, dialect: Dialect, options: dict[str, Value]) -> None:
    """Set some job.star options of an existing job, keeping the others; the file is replaced atomically
    (doppio and the Relion GUI read it while the session runs)."""
    merged: dict[str, Value] = {**read_job_options(job_dir), **options}
    write_text_atomic(job_dir / "job.star", job_star_text(kind, dialect, merged))


def log_written_file(job_dir: Path, node: str, count: int) -> None:
    """Put ` Written: <node> with <count> objects.` into run.out, replacing an earlier line for `node`."""
    path = job_dir / "run.out"
    prefix = f" Written: {node} "
    lines = [line for line in (path.read_text().splitlines() if path.exists() else []) if not line.startswith(prefix)]
    write_text_atomic(path, "".join(f"{line}\n" for line in [*lines, f"{prefix}with {count} objects."]))


def append_note(job_dir: Path, command: str) -> None:
    """Add a command to note.txt in Relion's ` ++++ ` layout."""
    stamp = time.strftime("%d/%m/%Y %H:%M:%S")
    append_whole(job_dir / "note.txt", f" ++++ Executing new job on {stamp}\n ++++ with the following command(s): \n"
                                       f"{command}\n ++++ \n")


def mark_exit(job_dir: Path, success: bool) -> None:
    """Leave exactly one of RELION_JOB_EXIT_SUCCESS / RELION_JOB_EXIT_FAILURE in the job folder."""
    keep, drop = (SUCCESS_MARKER, FAILURE_MARKER) if success else (FAILURE_MARKER, SUCCESS_MARKER)
    (job_dir / drop).unlink(missing_ok=True)
    (job_dir / keep).touch()


def point_alias(type_dir: Path, alias: str, job_name: str) -> None:
    """Make `<Type>/<alias>` a relative symlink to `jobNNN`, replacing an older one atomically."""
    link = type_dir / alias
    tmp = type_dir / f".{alias}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    with naming_disk_full(link):
        tmp.symlink_to(job_name, target_is_directory=True)
        os.replace(tmp, link)


def alias_target(type_dir: Path, alias: str) -> str | None:
    """The `jobNNN` an alias link points to, or None."""
    link = type_dir / alias
    return os.readlink(link).rstrip("/").split("/")[-1] if link.is_symlink() else None
