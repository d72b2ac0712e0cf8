"""relion_refine command lines for 2D/3D classification and 3D refinement, and the _model.star parser.

Flags follow cryoem-services' wrappers (notes §3) within what Relion 3.1 accepts; `mpi_ranks` > 1
runs relion_refine_mpi under mpirun (3D auto-refine needs it to split half-sets).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.io import read_star
from airflow_provider_cryoem.io.errors import ImageFileError

from ._relion_star import loop_block, numeric_column


class RefineInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_dir: str = Field(min_length=1)
    particles_star: str = Field(min_length=1, description="Relative to the project folder.")
    job_dir: str = Field(min_length=1, description="e.g. Class2D/job010 (relative).")
    mask_diameter_a: float = Field(gt=0, description="--particle_diameter: 1.1 × particle diameter.")
    iterations: int = Field(25, ge=1)
    threads: int = Field(1, ge=1)
    pool: int = Field(10, ge=1)
    gpu_ids: str | None = Field(None, description="--gpu value, e.g. '0' or '0:1'; None = CPU.")
    mpi_ranks: int = Field(1, ge=1)
    mpirun_args: list[str] = Field(default_factory=list, description="Extra mpirun flags (site specific).")
    random_seed: int | None = None


class Class2DInputs(RefineInputs):
    classes: int = Field(50, ge=1)


class Class3DInputs(RefineInputs):
    reference_path: str = Field(min_length=1)
    classes: int = Field(4, ge=1)
    symmetry: str = "C1"
    initial_lowpass_a: float = Field(40.0, gt=0)


class Refine3DInputs(RefineInputs):
    reference_path: str = Field(min_length=1)
    symmetry: str = "C1"
    initial_lowpass_a: float = Field(20.0, gt=0)
    mpi_ranks: int = Field(3, ge=3, description="Auto-refine needs a leader and two half-set followers.")


def _common(inputs: RefineInputs) -> list[str]:
    job = inputs.job_dir.rstrip("/") + "/"
    args = ["--i", inputs.particles_star, "--o", f"{job}run", "--particle_diameter", f"{inputs.mask_diameter_a:g}",
            "--dont_combine_weights_via_disc", "--pool", str(inputs.pool), "--pad", "2", "--ctf",
            "--flatten_solvent", "--zero_mask", "--oversampling", "1", "--norm", "--scale",
            "--j", str(inputs.threads), "--pipeline_control", job]
    if inputs.gpu_ids is not None:
        args += ["--gpu", inputs.gpu_ids]
    if inputs.random_seed is not None:
        args += ["--random_seed", str(inputs.random_seed)]
    return args


def _spec(inputs: RefineInputs, args: list[str]) -> CommandSpec:
    (Path(inputs.project_dir) / inputs.job_dir).mkdir(parents=True, exist_ok=True)
    if inputs.mpi_ranks > 1:
        return CommandSpec(program="mpirun", args=["-n", str(inputs.mpi_ranks), *inputs.mpirun_args,
                                                   "relion_refine_mpi", *args],
                           cwd=inputs.project_dir, threads=inputs.threads * inputs.mpi_ranks)
    return CommandSpec(program="relion_refine", args=args, cwd=inputs.project_dir, threads=inputs.threads)


def class2d_command(inputs: Class2DInputs) -> CommandSpec:
    return _spec(inputs, [*_common(inputs), "--K", str(inputs.classes), "--iter", str(inputs.iterations),
                          "--tau2_fudge", "2", "--psi_step", "12", "--offset_range", "5", "--offset_step", "2"])


def class3d_command(inputs: Class3DInputs) -> CommandSpec:
    return _spec(inputs, [*_common(inputs), "--ref", inputs.reference_path, "--firstiter_cc",
                          "--ini_high", f"{inputs.initial_lowpass_a:g}", "--K", str(inputs.classes),
                          "--iter", str(inputs.iterations), "--tau2_fudge", "4", "--healpix_order", "2",
                          "--offset_range", "5", "--offset_step", "4", "--sym", inputs.symmetry])


def refine3d_command(inputs: Refine3DInputs) -> CommandSpec:
    return _spec(inputs, [*_common(inputs), "--ref", inputs.reference_path, "--firstiter_cc",
                          "--ini_high", f"{inputs.initial_lowpass_a:g}", "--auto_refine", "--split_random_halves",
                          "--healpix_order", "2", "--auto_local_healpix_order", "4",
                          "--low_resol_join_halves", "40", "--offset_range", "5", "--offset_step", "4",
                          "--sym", inputs.symmetry])


def last_model_star(project_dir: str | Path, job_dir: str) -> Path:
    """The newest `run_itNNN_model.star` (classification) or `run_model.star` (finished auto-refine)."""
    folder = Path(project_dir) / job_dir
    final = folder / "run_model.star"
    if final.is_file():
        return final
    iterations = sorted(folder.glob("run_it[0-9][0-9][0-9]_model.star"))
    if not iterations:
        raise ImageFileError(folder, "no run_itNNN_model.star written (did relion_refine run?)")
    return iterations[-1]


def _column(path: str | Path, table: Any, *names: str) -> list[float] | None:
    """The first of the optional model_classes columns `names` that the file has, as floats."""
    for name in names:
        if name in table.columns:
            return numeric_column(path, table, "model_classes", name).tolist()
    return None


def parse_model_star(path: str | Path) -> dict[str, Any]:
    """Resolution and per-class distribution/accuracies (ISPyB ParticleClassification fields)."""
    general = read_star(path).get("model_general")
    if general is None or "rlnCurrentResolution" not in general:
        raise ImageFileError(path, "no data_model_general block with rlnCurrentResolution")
    classes = loop_block(path, "model_classes", ("rlnReferenceImage", "rlnClassDistribution"))
    distribution = numeric_column(path, classes, "model_classes", "rlnClassDistribution")
    rotation = _column(path, classes, "rlnAccuracyRotations")
    translation = _column(path, classes, "rlnAccuracyTranslationsAngst", "rlnAccuracyTranslations")
    resolution = _column(path, classes, "rlnEstimatedResolution")
    completeness = _column(path, classes, "rlnOverallFourierCompleteness")
    iteration = re.search(r"_it(\d+)_", Path(path).name)
    rows = []
    for index, image in enumerate(classes["rlnReferenceImage"]):
        rows.append({
            "class_number": index + 1, "reference_image": str(image),
            "class_distribution": float(distribution[index]),
            "rotation_accuracy_deg": rotation[index] if rotation else None,
            "translation_accuracy_a": translation[index] if translation else None,
            "estimated_resolution_a": resolution[index] if resolution else None,
            "fourier_completeness": completeness[index] if completeness else None,
        })
    return {"model_star": str(path), "iteration": int(iteration.group(1)) if iteration else None,
            "resolution_a": float(numeric_column(path, general, "model_general", "rlnCurrentResolution")[0]),
            "classes": rows}
