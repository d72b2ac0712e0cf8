"""2D classification of one particle batch with relion_refine, into a Class2D job of the project.

The command comes from tools/relion_refine (cryoem-services' flags, EM algorithm); the result
gathers what ISPyB's ParticleClassificationGroup / ParticleClassification hold: per class its
particle count and share, estimated resolution and rotation/translation accuracy, plus the class
averages as a gallery PNG. A batch too small for the asked number of classes gets fewer classes
(at least `min_particles_per_class` each); one too small for a single class is refused up front.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from ..engines.thumbnails import class_gallery
from ..execution import CommandSpec, Execute, SlurmJobPending, run_output
from ..io import ImageFileError, read_mrc, read_star
from ..relion_project import NodeType, RelionJob, RelionProject
from ..results.store import ResultsStore
from ..tools.relion_refine import (
    Class2DInputs,
    class2d_command,
    last_model_star,
    parse_model_star,
)

GALLERY_NAME = "class_gallery.png"


class TooFewParticlesError(ValueError):
    """The batch cannot fill even one class; the message names the batch file."""


class Class2DSettings(BaseModel):
    classes: int = Field(50, ge=1)
    iterations: int = Field(25, ge=1)
    threads: int = Field(1, ge=1)
    mask_diameter_a: float = Field(gt=0, description="1.1 × particle diameter (SessionConfig.mask_diameter_a).")
    min_particles_per_class: int = Field(20, ge=1)
    random_seed: int | None = 0
    gpu_ids: str | None = None
    timeout_s: float | None = Field(None, gt=0)
    intensity_corrections: bool = Field(True, description=(
        "Relion's per-particle --norm and per-group --scale corrections (cryoem-services passes both). "
        "They rescale each image to fit its class, which hides the intensity difference of empty ice and "
        "carbon: on synthetic sets with 30% junk, without them those land in classes of their own."))


class Class2DClass(BaseModel):
    """One class, keyed as results.records.PARTICLE_CLASSIFICATION expects."""

    class_number: int
    particles_per_class: int
    class_distribution: float
    rotation_accuracy_deg: float | None = None
    translation_accuracy_a: float | None = None
    estimated_resolution_a: float | None = None
    overall_fourier_completeness: float | None = None
    image: str = Field(description="Relion image reference NNNNNN@<abs path of run_itNNN_classes.mrcs>.")
    selected: bool = False


class Class2DResult(BaseModel):
    """One batch's classification (group fields as results.records.PARTICLE_CLASSIFICATION_GROUP expects)."""

    type: str = "2D"
    batch_number: int
    particles_per_batch: int
    classes_per_batch: int
    symmetry: str = "C1"
    binned_pixel_size_a: float
    job_dir: str = Field(description="Project-relative, e.g. Class2D/job007.")
    particles_star: str
    model_star: str
    data_star: str
    optimiser_star: str
    classes_stack: str
    gallery: str
    resolution_a: float
    classes: list[Class2DClass]
    command: str
    duration_s: float


def class_count(n_particles: int, settings: Class2DSettings, particles_star: str | Path) -> int:
    """Classes to ask for: at most `classes`, each with at least `min_particles_per_class` particles."""
    fitting = n_particles // settings.min_particles_per_class
    if fitting < 1:
        raise TooFewParticlesError(f"{particles_star}: {n_particles} particles, 2D classification needs at "
                                   f"least {settings.min_particles_per_class} (min_particles_per_class)")
    return min(settings.classes, fitting)


def run_class2d(project: RelionProject, particles_star: str, batch_number: int, settings: Class2DSettings,
                mpirun_args: list[str] | None = None, execute: Execute = run_output) -> Class2DResult:
    """Classify `particles_star` (project-relative) into the Class2D job aliased `batch_<batch_number>`.

    `execute` runs relion_refine (here by default, or as a Slurm job). A retried call reuses the job
    folder. Raises TooFewParticlesError, ToolExecutionError, ImageFileError.
    """
    star = project.absolute(particles_star)
    table = _particles(star)
    optics = read_star(star).get("optics")
    pixel_size_a = float(optics["rlnImagePixelSize"].iloc[0]) if optics is not None else float("nan")
    classes = class_count(len(table), settings, particles_star)
    job = project.job("class2d", alias=f"batch_{batch_number:03d}")
    job_dir = job.name.rstrip("/")
    inputs = Class2DInputs(project_dir=str(project.root), particles_star=project.relative(star), job_dir=job_dir,
                           mask_diameter_a=settings.mask_diameter_a, iterations=settings.iterations,
                           threads=settings.threads, gpu_ids=settings.gpu_ids, random_seed=settings.random_seed,
                           classes=classes, mpirun_args=mpirun_args or [])
    spec = class2d_command(inputs)
    args = spec.args if settings.intensity_corrections else [a for a in spec.args if a not in ("--norm", "--scale")]
    spec = spec.model_copy(update={"args": args, "timeout_s": settings.timeout_s, "log_path": str(job.path / "run.out")})
    job.add_input(project.relative(star), NodeType.PARTICLES)
    project.add_command(job, spec.display())
    started = time.monotonic()
    try:
        execute(spec)
        result = _collect(project, job, spec, particles_star, batch_number, len(table), pixel_size_a)
    except SlurmJobPending:
        raise  # deferred to the triggerer, not failed: the task runs it again
    except BaseException:
        project.finish_job(job, success=False)
        raise
    result.duration_s = time.monotonic() - started
    for name, node in ((result.data_star, NodeType.PARTICLES), (result.model_star, NodeType.OPTIMISER),
                       (result.optimiser_star, NodeType.OPTIMISER), (result.classes_stack, NodeType.CLASS_AVERAGES)):
        job.add_output(name, node)
    project.finish_job(job, success=True)
    return result


def record_class2d(store: ResultsStore, processing_job_id: int, result: Class2DResult) -> int:
    """Write the group and its classes (replacing an earlier try's); returns the group id."""
    return store.record_classification_group(processing_job_id, result, result.classes)


def _particles(star: Path):
    blocks = read_star(star)
    if "particles" not in blocks:
        raise ImageFileError(star, f"no data_particles block (found {sorted(blocks)})")
    return blocks["particles"]


def _finite(value: float | None) -> float | None:
    """Relion writes `inf` for an empty class's resolution and accuracies: unknown, not a number."""
    return value if value is not None and math.isfinite(value) else None


def class_rows(project: RelionProject, model_star: Path, data_star: Path) -> list[Class2DClass]:
    """Per class of a finished classification (2D or 3D): its particles, share, accuracies, resolution and
    image (the model's own rlnReferenceImage, made absolute: `NNNNNN@stack.mrcs` in 2D, a map in 3D)."""
    model = parse_model_star(model_star)
    counts = _particles(data_star)["rlnClassNumber"].astype(int).value_counts()
    rows = []
    for row in model["classes"]:
        index, _, image = row["reference_image"].rpartition("@")
        rows.append(Class2DClass(
            class_number=row["class_number"], particles_per_class=int(counts.get(row["class_number"], 0)),
            class_distribution=row["class_distribution"], rotation_accuracy_deg=_finite(row["rotation_accuracy_deg"]),
            translation_accuracy_a=_finite(row["translation_accuracy_a"]),
            estimated_resolution_a=_finite(row["estimated_resolution_a"]),
            overall_fourier_completeness=_finite(row["fourier_completeness"]),
            image=f"{index}@{project.absolute(image)}" if index else str(project.absolute(image))))
    return rows


def _collect(project: RelionProject, job: RelionJob, spec: CommandSpec, particles_star: str, batch_number: int,
             n_particles: int, pixel_size_a: float) -> Class2DResult:
    model_star = last_model_star(project.root, job.name)
    model = parse_model_star(model_star)
    stem = model_star.name.removesuffix("_model.star")
    data_star = model_star.with_name(f"{stem}_data.star")
    classes_stack = model_star.with_name(f"{stem}_classes.mrcs")
    rows = class_rows(project, model_star, data_star)
    averages = np.asarray(read_mrc(classes_stack, mmap=False), dtype=np.float32)
    gallery = class_gallery(averages, job.path / GALLERY_NAME,
                            labels=[f"{r.class_number}: {r.particles_per_class}" for r in rows])
    return Class2DResult(batch_number=batch_number, particles_per_batch=n_particles, classes_per_batch=len(rows),
                         binned_pixel_size_a=pixel_size_a, job_dir=job.name.rstrip("/"),
                         particles_star=particles_star, model_star=project.relative(model_star),
                         data_star=project.relative(data_star),
                         optimiser_star=project.relative(model_star.with_name(f"{stem}_optimiser.star")),
                         classes_stack=project.relative(classes_stack), gallery=str(gallery),
                         resolution_a=model["resolution_a"], classes=rows, command=spec.display(), duration_s=0.0)
