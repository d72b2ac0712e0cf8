"""3D classification of the selected particles with relion_refine, and the choice of the class to refine.

The command comes from tools/relion_refine (cryoem-services' flags); rows are what ISPyB's
ParticleClassificationGroup (type 3D) / ParticleClassification hold, each class's image being its map.
The best class is the one with the finest estimated resolution among those holding a fair share of
the particles (ties: the larger share); its particles and map go to a Select job for the refinement.
"""
from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, Field

from ..engines.thumbnails import class_gallery
from ..execution import Execute, run_output
from ..io import read_mrc, read_star
from ..io.star import write_star
from ..relion_project import NodeType, RelionProject
from ..results.store import ResultsStore
from ..tools.relion_refine import (
    Class3DInputs,
    class3d_command,
    last_model_star,
    parse_model_star,
)
from .class2d import GALLERY_NAME, Class2DClass, TooFewParticlesError, class_rows


class Class3DSettings(BaseModel):
    classes: int = Field(4, ge=1)
    iterations: int = Field(25, ge=1)
    threads: int = Field(1, ge=1)
    mpi_ranks: int = Field(1, ge=1)
    mpirun_args: list[str] = Field(default_factory=list)
    mask_diameter_a: float = Field(gt=0)
    symmetry: str = "C1"
    initial_lowpass_a: float = Field(40.0, gt=0, description="--ini_high: the reference is filtered to this.")
    healpix_order: int = Field(2, ge=0, le=8)
    min_particles_per_class: int = Field(50, ge=1)
    min_class_share: float = Field(0.1, ge=0, le=1, description="A class needs this share of the particles "
                                                                "to be refined.")
    random_seed: int | None = 0
    timeout_s: float | None = Field(None, gt=0)


class Class3DResult(BaseModel):
    """One 3D classification (group fields as results.records.PARTICLE_CLASSIFICATION_GROUP expects).

    `batch_number` is the number of particles classified: 3D runs grow with the session (first at
    class3d_batch_size, then at each doubling, and once more at its end), so the count names each.
    """

    type: str = "3D"
    batch_number: int
    particles_per_batch: int
    classes_per_batch: int
    symmetry: str
    binned_pixel_size_a: float
    job_dir: str
    particles_star: str
    reference_map: str
    model_star: str
    data_star: str
    resolution_a: float
    classes: list[Class2DClass]
    best_class: int
    best_class_map: str = Field(description="Project-relative map of the best class.")
    best_class_particles_star: str = Field(description="Project-relative STAR of the best class's particles.")
    gallery: str
    command: str
    duration_s: float


def run_class3d(project: RelionProject, particles_star: str, reference_map: str, settings: Class3DSettings,
                alias: str, execute: Execute = run_output) -> Class3DResult:
    """Classify `particles_star` against `reference_map` into the Class3D job `alias` (reused on a retry).

    Fewer classes than asked when the set cannot give each `min_particles_per_class`; TooFewParticlesError
    when it cannot fill one.
    """
    started = time.monotonic()
    blocks = read_star(project.absolute(particles_star))
    n_particles = len(blocks["particles"])
    fitting = n_particles // settings.min_particles_per_class
    if fitting < 1:
        raise TooFewParticlesError(f"{particles_star}: {n_particles} particles, 3D classification needs at least "
                                   f"{settings.min_particles_per_class} (min_particles_per_class)")
    job = project.job("class3d", alias=alias)
    spec = class3d_command(Class3DInputs(
        project_dir=str(project.root), particles_star=particles_star, job_dir=job.name.rstrip("/"),
        mask_diameter_a=settings.mask_diameter_a, iterations=settings.iterations, threads=settings.threads,
        mpi_ranks=settings.mpi_ranks, mpirun_args=settings.mpirun_args, random_seed=settings.random_seed,
        reference_path=reference_map, classes=min(settings.classes, fitting), symmetry=settings.symmetry,
        initial_lowpass_a=settings.initial_lowpass_a))
    args = list(spec.args)
    args[args.index("--healpix_order") + 1] = str(settings.healpix_order)
    spec = spec.model_copy(update={"args": args, "timeout_s": settings.timeout_s, "log_path": str(job.path / "run.out")})
    job.add_input(particles_star, NodeType.PARTICLES)
    job.add_input(reference_map, NodeType.MAP)
    project.add_command(job, spec.display())
    try:
        execute(spec)
        model_star = last_model_star(project.root, job.name)
        data_star = model_star.with_name(model_star.name.replace("_model.star", "_data.star"))
        rows = class_rows(project, model_star, data_star)
        best = best_class(rows, n_particles, settings)
        best_map = project.relative(rows[best - 1].image)
        best_star = _write_best_particles(project, data_star, best, alias)
        gallery = _gallery(rows, job.path / GALLERY_NAME)
    except BaseException:
        project.finish_job(job, success=False)
        raise
    for name in {r.image for r in rows}:
        job.add_output(project.relative(name), NodeType.MAP)
    job.add_output(project.relative(data_star), NodeType.PARTICLES)
    project.finish_job(job, success=True)
    return Class3DResult(
        batch_number=n_particles, particles_per_batch=n_particles, classes_per_batch=len(rows),
        symmetry=settings.symmetry, binned_pixel_size_a=float(blocks["optics"]["rlnImagePixelSize"].iloc[0]),
        job_dir=job.name.rstrip("/"), particles_star=particles_star, reference_map=reference_map,
        model_star=project.relative(model_star), data_star=project.relative(data_star),
        resolution_a=parse_model_star(model_star)["resolution_a"], classes=rows, best_class=best,
        best_class_map=best_map, best_class_particles_star=best_star, gallery=str(gallery),
        command=spec.display(), duration_s=time.monotonic() - started)


def best_class(rows: list[Class2DClass], n_particles: int, settings: Class3DSettings) -> int:
    """Class number to refine: finest resolution among classes with a fair share (all classes if none has)."""
    needed = max(settings.min_class_share * n_particles, 1)
    candidates = [r for r in rows if r.particles_per_class >= needed] or rows
    chosen = min(candidates, key=lambda r: (r.estimated_resolution_a or float("inf"), -r.particles_per_class))
    return chosen.class_number


def record_class3d(store: ResultsStore, processing_job_id: int, result: Class3DResult) -> int:
    """Write the 3D group and its classes, the best one marked selected; returns the group id."""
    group_id = store.record_classification_group(processing_job_id, result, result.classes)
    store.record_class_selection(group_id, [result.best_class])
    return group_id


def _write_best_particles(project: RelionProject, data_star, best: int, alias: str) -> str:
    data = read_star(data_star)
    particles = data["particles"]
    job = project.job("select", alias=f"{alias}_best_class")
    star = job.path / "particles.star"
    write_star(star, {"optics": data["optics"],
                      "particles": particles[particles["rlnClassNumber"].astype(int) == best]})
    job.add_input(project.relative(data_star), NodeType.PARTICLES)
    job.add_output(star, NodeType.PARTICLES)
    project.finish_job(job, success=True)
    return project.relative(star)


def _gallery(rows: list[Class2DClass], path) -> str:
    """Each class map seen along z, y and x (projections), labelled with its particle count."""
    views, labels = [], []
    for row in rows:
        volume = np.asarray(read_mrc(row.image, mmap=False), dtype=np.float32)
        for axis, name in ((0, "z"), (1, "y"), (2, "x")):
            views.append(volume.sum(axis=axis))
            labels.append(f"{row.class_number}{name}: {row.particles_per_class}")
    return str(class_gallery(np.stack(views), path, labels=labels, columns=3))
