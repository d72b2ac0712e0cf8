"""IceBreaker (Olek et al. 2022) relative ice thickness: `ib_job`, `ib_5fig`, `ib_group` commands and parsers.

Commands as cryoem-services builds them (notes §1): run from the Relion project directory with paths
relative to it; IceBreaker drops the first two parts (`MotionCorr/job002/`) of a micrograph path to
place its output under the job directory. Formats read from IceBreaker 0.3.9 and checked on real runs
(fixtures `icebreaker_0.3.9_*`): `ib_5fig --single_mic` prints `Results: <path> min q1 median q3 max`,
`--in_mics` writes `five_figs_test.csv`; values are the grouped image's intensity × 10000, truncated
to int, and go unchanged into ISPyB's RelativeIceThickness (minimum, q1, median, q3, maximum).
"""
from __future__ import annotations

import csv
from pathlib import Path, PurePath
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.io.errors import ImageFileError
from airflow_provider_cryoem.io.star import read_star

FIVE_FIGURE_KEYS = ("minimum", "q1", "median", "q3", "maximum")
_CSV_COLUMNS = ("path", "min", "q1", "q2=median", "q3", "max")
_ICE_GROUP_COLUMN = "rlnHelicalTubeID"  # IceBreaker writes the particle's ice group into this Relion column
# job -> (program, --mode, suffix of the micrograph it writes); job names are ccpem-pipeliner's
# icebreaker.micrograph_analysis.<job> types.
_JOBS: dict[str, tuple[str, str | None, str | None]] = {
    "micrographs": ("ib_job", "group", "grouped"),
    "enhancecontrast": ("ib_job", "flatten", "flattened"),
    "summary": ("ib_5fig", None, None),
    "particles": ("ib_group", None, None),
}


class IceBreakerInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job: Literal["micrographs", "enhancecontrast", "summary", "particles"]
    project_dir: str = Field(min_length=1, description="Relion project directory; IceBreaker runs there.")
    job_dir: str = Field(min_length=1, description="Output job directory relative to the project, e.g. "
                                                   "IceBreaker/job003.")
    micrograph_path: str = Field(min_length=1, description="Relative to the project: the motion-corrected "
                                                           "micrograph (micrographs, enhancecontrast), the "
                                                           "grouped one (summary), or the grouped micrographs "
                                                           "STAR of the grouping job (particles).")
    particles_star: str | None = Field(None, description="Particles STAR relative to the project (particles).")
    cpus: int = Field(1, ge=1, le=256)
    program_dir: str | None = Field(None, description="Folder holding ib_job/ib_5fig/ib_group; default: PATH.")

    @field_validator("job_dir", "micrograph_path", "particles_star")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and PurePath(value).is_absolute():
            raise ValueError(f"must be relative to project_dir (IceBreaker joins it to the project), not {value!r}")
        return value


def command(inputs: IceBreakerInputs) -> CommandSpec:
    """The IceBreaker call for one micrograph (or one particle batch); output goes to `<job_dir>/run.out`,
    whose folder the executor creates (ib_job only makes the last level of --o itself)."""
    program, mode, _ = _JOBS[inputs.job]
    if inputs.job == "particles":
        if not inputs.particles_star:
            raise ValueError("particles_star: the particles job needs the particles STAR file")
        args = ["--j", str(inputs.cpus), "--in_mics", inputs.micrograph_path, "--in_parts", inputs.particles_star]
    else:
        args = ["--j", str(inputs.cpus), "--single_mic", inputs.micrograph_path]
    args += ["--o", inputs.job_dir]
    if mode:
        args += ["--mode", mode]
    executable = str(Path(inputs.program_dir) / program) if inputs.program_dir else program
    return CommandSpec(program=executable, args=args, cwd=inputs.project_dir, threads=inputs.cpus,
                       log_path=str(log_path(inputs)))


def log_path(inputs: IceBreakerInputs) -> Path:
    return Path(inputs.project_dir) / inputs.job_dir / "run.out"


def output_micrograph_path(inputs: IceBreakerInputs) -> Path:
    """Where ib_job puts the grouped/flattened micrograph: <job_dir>/<path after JobType/jobNNN>/<stem>_<mode>ed.mrc."""
    _, _, suffix = _JOBS[inputs.job]
    if suffix is None:
        raise ValueError(f"job: {inputs.job!r} writes no micrograph (only micrographs and enhancecontrast do)")
    micrograph = PurePath(inputs.micrograph_path)
    return (Path(inputs.project_dir) / inputs.job_dir / Path(*micrograph.parts[2:-1])
            / f"{micrograph.stem}_{suffix}.mrc")


def particles_output_path(inputs: IceBreakerInputs) -> Path:
    return Path(inputs.project_dir) / inputs.job_dir / "particles.star"


def _five_figures(values: list[str], source: str | Path, line_number: int) -> dict[str, float]:
    try:
        numbers = [float(value) for value in values]
    except ValueError:
        raise ImageFileError(source, f"line {line_number}: non-numeric five-figure summary") from None
    if numbers != sorted(numbers):
        raise ImageFileError(source, f"line {line_number}: five-figure summary not in min ≤ q1 ≤ median ≤ q3 ≤ max "
                                     "order")
    return dict(zip(FIVE_FIGURE_KEYS, numbers))


def parse_five_figures(log_text: str, source: str | Path = "ib_5fig output") -> dict[str, Any]:
    """The `Results: <path> min q1 median q3 max` line `ib_5fig --single_mic` prints (the last one wins)."""
    lines = [(number, line.split()[1:]) for number, line in enumerate(log_text.splitlines(), start=1)
             if line.startswith("Results:")]
    if not lines:
        raise ImageFileError(source, "no 'Results: <micrograph> min q1 median q3 max' line from ib_5fig "
                                     "(IceBreaker skips micrographs containing NaN)")
    line_number, fields = lines[-1]
    if len(fields) != 1 + len(FIVE_FIGURE_KEYS):
        raise ImageFileError(source, f"line {line_number}: expected a micrograph path and 5 numbers after "
                                     f"'Results:', got {len(fields)} value(s)")
    return {**_five_figures(fields[1:], source, line_number), "micrograph_path": fields[0]}


def parse_five_figures_csv(path: str | Path) -> dict[str, dict[str, float]]:
    """`five_figs_test.csv` (ib_5fig --in_mics): {micrograph stem: five figures}; IceBreaker writes the
    path without its `.mrc`, so the key is the grouped micrograph's file stem."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(path, "IceBreaker five_figs_test.csv not found")
    with path.open(newline="", errors="replace") as handle:
        rows = [(number, row) for number, line in enumerate(handle, start=1)
                if line.strip() and not line.startswith("#") for row in csv.reader([line])]
    if not rows or tuple(cell.strip() for cell in rows[0][1]) != _CSV_COLUMNS:
        raise ImageFileError(path, f"expected the header {','.join(_CSV_COLUMNS)}")
    summaries = {}
    for line_number, row in rows[1:]:
        if len(row) != len(_CSV_COLUMNS):
            raise ImageFileError(path, f"line {line_number}: row with {len(row)} values, expected "
                                       f"{len(_CSV_COLUMNS)}")
        summaries[PurePath(row[0]).name] = _five_figures(row[1:], path, line_number)
    return summaries


def parse_particle_ice_groups(path: str | Path) -> dict[str, Any]:
    """`ib_group`'s particles.star: each particle's ice group (grouped intensity × 10000; -1 off the image)."""
    path = Path(path)
    particles = read_star(path).get("particles")
    if not isinstance(particles, pd.DataFrame) or _ICE_GROUP_COLUMN not in particles.columns:
        raise ImageFileError(path, f"no data_particles loop with _{_ICE_GROUP_COLUMN} (IceBreaker's ice group)")
    groups = pd.to_numeric(particles[_ICE_GROUP_COLUMN], errors="coerce")
    if groups.isna().any():
        raise ImageFileError(path, f"non-numeric _{_ICE_GROUP_COLUMN} value")
    return {"ice_groups": groups.astype(int).tolist(), "particle_count": len(groups),
            "ice_group_counts": {int(key): int(count) for key, count in groups.value_counts().sort_index().items()}}


def parse_result(inputs: IceBreakerInputs) -> dict[str, Any]:
    """What the job produced: the five figures (summary), the particles' ice groups (particles), or the
    grouped/flattened micrograph's path (micrographs, enhancecontrast)."""
    if inputs.job == "summary":
        log = log_path(inputs)
        if not log.is_file():
            raise ImageFileError(log, "ib_5fig output log not found")
        return parse_five_figures(log.read_text(errors="replace"), source=log)
    if inputs.job == "particles":
        return parse_particle_ice_groups(particles_output_path(inputs))
    micrograph = output_micrograph_path(inputs)
    if not micrograph.is_file():
        raise ImageFileError(micrograph, f"IceBreaker {inputs.job} job wrote no micrograph")
    return {"micrograph_path": str(micrograph)}
