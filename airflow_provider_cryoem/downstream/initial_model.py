"""The map a 3D classification starts from, kept as an InitialModel job of the project.

Two ways: `run_denovo_initial_model` makes it from the particles with Relion 3.1's SGD
(`--denovo_3dref --sgd`, the only de-novo method 3.1 has), and `lowpass_reference` takes a given map (a
previous session's, a known structure) low-passed to 60 Å, so only the particle's overall shape is left.
A de-novo model's hand is arbitrary (a projection set cannot tell a map from its mirror image).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from ..execution import CommandSpec, Execute, run_local, run_output
from ..io import ImageFileError, read_star
from ..io._atomic import atomic_path
from ..io.mrc import read_mrc_shape
from ..io.star import write_star
from ..relion_project import NodeType, RelionProject
from ..tools.relion_refine import parse_model_star


class ReferenceMap(BaseModel):
    """Keys as results.records.CRYOEM_INITIAL_MODEL expects (resolution_a, number_of_particles)."""

    job_dir: str = Field(description="Project-relative InitialModel job, e.g. InitialModel/job009.")
    map: str = Field(description="Project-relative map, the `--ref` of the classification or refinement.")
    lowpass_a: float = Field(description="The map holds nothing finer than this (Å).")
    resolution_a: float = Field(description="The model's own resolution estimate; the low-pass for a given map.")
    number_of_particles: int = Field(0, description="Particles it was made from (0 for a given map).")
    command: str


class DenovoSettings(BaseModel):
    """SGD settings; the defaults are small enough for a live session on a few cores (see README)."""

    mask_diameter_a: float = Field(gt=0)
    threads: int = Field(1, ge=1)
    sgd_iterations: tuple[int, int, int] = Field((50, 200, 50), description="Initial, in-between, final.")
    initial_subset: int = Field(100, ge=10)
    final_subset: int = Field(500, ge=10)
    initial_resolution_a: float = Field(35.0, gt=0)
    final_resolution_a: float = Field(15.0, gt=0)
    offset_range_px: float = Field(6.0, gt=0)
    offset_step_px: float = Field(2.0, gt=0)
    skip_gridding: bool = False
    max_particles: int = Field(10_000, ge=10, description="Use at most this many particles (a random subset).")
    random_seed: int = 1
    timeout_s: float | None = Field(None, gt=0)


def initial_model_command(project_dir: str, particles_star: str, job_dir: str, mask_diameter_a: float,
                          threads: int = 1, sgd_iterations: tuple[int, int, int] = (50, 200, 50),
                          settings: DenovoSettings | None = None) -> CommandSpec:
    """Relion 3.1 de-novo initial model by SGD (`--denovo_3dref --sgd`), cryoem-services' flags otherwise."""
    settings = settings or DenovoSettings(mask_diameter_a=mask_diameter_a, threads=threads,
                                          sgd_iterations=sgd_iterations)
    job = job_dir.rstrip("/") + "/"
    first, between, last = settings.sgd_iterations
    return CommandSpec(program="relion_refine", cwd=project_dir, threads=settings.threads, args=[
        "--i", particles_star, "--o", f"{job}run", "--denovo_3dref", "--sgd", "--sgd_ini_iter", str(first),
        "--sgd_inbetween_iter", str(between), "--sgd_fin_iter", str(last),
        "--sgd_ini_subset", str(settings.initial_subset), "--sgd_fin_subset", str(settings.final_subset),
        "--sgd_ini_resol", f"{settings.initial_resolution_a:g}", "--sgd_fin_resol", f"{settings.final_resolution_a:g}",
        "--sgd_write_iter", str(first + between + last), "--particle_diameter", f"{settings.mask_diameter_a:g}", "--K", "1", "--sym", "C1",
        "--ctf", "--flatten_solvent", "--zero_mask", "--oversampling", "1", "--healpix_order", "1",
        "--offset_range", f"{settings.offset_range_px:g}", "--offset_step", f"{settings.offset_step_px:g}",
        "--dont_combine_weights_via_disc", "--pool", "10", "--pad", "2", "--j", str(settings.threads),
        "--random_seed", str(settings.random_seed), *(["--skip_gridding"] if settings.skip_gridding else []),
        "--pipeline_control", job])


def run_denovo_initial_model(project: RelionProject, particles_star: str, settings: DenovoSettings,
                             alias: str = "denovo", execute: Execute = run_output) -> ReferenceMap:
    """An initial model from `particles_star` by SGD, in the InitialModel job `alias` (reused when done).

    At most `max_particles` are used (a seeded random subset, written into the job). A job that already
    finished is returned as it is: one session makes its initial model once.
    """
    job = project.job("initialmodel", alias=alias)
    output = f"{job.name}initial_model.mrc"
    blocks = read_star(project.absolute(particles_star))
    particles = blocks["particles"]
    if len(particles) > settings.max_particles:
        keep = np.sort(np.random.default_rng(settings.random_seed).permutation(len(particles))[:settings.max_particles])
        particles = particles.iloc[keep]
    subset = f"{job.name}input_particles.star"
    spec = initial_model_command(str(project.root), subset, job.name, settings.mask_diameter_a, settings=settings)
    spec = spec.model_copy(update={"timeout_s": settings.timeout_s, "log_path": str(job.path / "run.out")})
    if not (project.root / output).is_file():
        write_star(project.absolute(subset), {"optics": blocks["optics"], "particles": particles})
        job.add_input(particles_star, NodeType.PARTICLES)
        project.add_command(job, spec.display())
        try:
            execute(spec)
            final_map = _last_iteration_map(job.path)
            with atomic_path(project.root / output) as copy:  # a full disk leaves no half map as the output
                shutil.copyfile(final_map, copy)
        except BaseException:
            project.finish_job(job, success=False)
            raise
        job.add_output(output, NodeType.MAP)
        project.finish_job(job, success=True)
    model = parse_model_star(_last_iteration_map(job.path).with_name(
        _last_iteration_map(job.path).name.replace("_class001.mrc", "_model.star")))
    return ReferenceMap(job_dir=job.name.rstrip("/"), map=output, lowpass_a=model["resolution_a"],
                        resolution_a=model["resolution_a"], number_of_particles=len(particles),
                        command=spec.display())


def _last_iteration_map(job_path: Path) -> Path:
    maps = sorted(job_path.glob("run_it[0-9][0-9][0-9]_class001.mrc"))
    if not maps:
        raise ImageFileError(job_path, "relion_refine --sgd wrote no run_itNNN_class001.mrc")
    return maps[-1]


def lowpass_reference(project: RelionProject, map_path: str, box_px: int, pixel_size_a: float,
                      lowpass_a: float = 60.0, alias: str = "reference",
                      timeout_s: float | None = None) -> ReferenceMap:
    """Low-pass `map_path` into `InitialModel/<alias>/initial_model.mrc` (a retry reuses the job).

    The map must already have the particles' box and pixel size (ImageFileError otherwise): a
    mismatched reference makes relion_refine fail much later with a less clear message.
    """
    source = project.absolute(map_path)
    shape = read_mrc_shape(source)
    if len(shape) != 3 or set(shape) != {box_px}:
        raise ImageFileError(source, f"reference map is {shape} voxels, the particles need a {box_px}³ box")
    job = project.job("initialmodel", alias=alias)
    output = f"{job.name}initial_model.mrc"
    spec = CommandSpec(program="relion_image_handler", cwd=str(project.root), timeout_s=timeout_s,
                       log_path=str(job.path / "run.out"), args=[
                           "--i", project.relative(source), "--o", output, "--lowpass", f"{lowpass_a:g}",
                           "--angpix", f"{pixel_size_a:g}", "--force_header_angpix", f"{pixel_size_a:g}"])
    job.add_input(project.relative(source), NodeType.MAP)
    project.add_command(job, spec.display())
    try:
        run_local(spec)
    except BaseException:
        project.finish_job(job, success=False)
        raise
    job.add_output(output, NodeType.MAP)
    project.finish_job(job, success=True)
    return ReferenceMap(job_dir=job.name.rstrip("/"), map=output, lowpass_a=lowpass_a, resolution_a=lowpass_a,
                        command=spec.display())
