"""3D: auto-refinement, mask, post-processing (FSC resolution, B-factor), and the B-factor series.

Commands come from tools/relion_refine and tools/relion_postprocess; auto-refine runs under
mpirun (a leader + two half-set ranks; Relion 3.1 refuses to split half-sets otherwise). The mask
threshold keeps the map's densest voxels up to the particle's own volume (a documented stand-in
for cryoem-services' noise-subtracted histogram). The starting map comes from initial_model.py.

Refine3DSettings' sampling fields default to cryoem-services' values (those tools/relion_refine
builds); a small or quick run coarsens them (healpix order 1, local searches from order 3, Relion
3.1's `--auto_ignore_angles --auto_resol_angles` convergence): measured on 2 shared cores, 400
particles in a 40-px box then refine in about 40 s instead of about 5 min.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from ..engines.bfactor import (
    BFactorFit,
    BFactorPoint,
    bfactor_plot,
    fit_bfactor,
    subset_sizes,
)
from ..execution import CommandSpec, Execute, SlurmJobPending, run_output
from ..io import read_mrc, read_star
from ..io.star import write_star
from ..relion_project import NodeType, RelionJob, RelionProject
from ..results.store import ResultsStore
from ..tools import relion_postprocess
from ..tools.relion_refine import Refine3DInputs, parse_model_star, refine3d_command

MPIRUN_ARGS = ["--allow-run-as-root", "--oversubscribe"]


class Refine3DSettings(BaseModel):
    mask_diameter_a: float = Field(gt=0)
    particle_diameter_a: float = Field(gt=0)
    pixel_size_a: float = Field(gt=0)
    symmetry: str = "C1"
    threads: int = Field(1, ge=1)
    mpi_ranks: int = Field(3, ge=3)
    mpirun_args: list[str] = Field(default_factory=lambda: list(MPIRUN_ARGS))
    initial_lowpass_a: float = Field(30.0, gt=0, description="--ini_high: the reference is filtered to this.")
    mask_lowpass_a: float = Field(15.0, gt=0)
    healpix_order: int = Field(2, ge=0, le=8, description="Starting angular sampling (2 = 7.5°, 1 = 15°).")
    auto_local_healpix_order: int = Field(4, ge=0, le=8, description="From this order on, local searches only.")
    offset_range_px: float = Field(5.0, gt=0)
    offset_step_px: float = Field(4.0, gt=0)
    fast_convergence: bool = Field(False, description="--auto_ignore_angles --auto_resol_angles (Relion ≥ 3.1).")
    max_iterations: int | None = Field(None, ge=1, description="--auto_iter_max: stop auto-refine here.")
    bfactor_low_resolution_a: float = Field(10.0, gt=0, description="relion_postprocess --autob_lowres: the "
                                            "Guinier fit runs from here to the final resolution.")
    random_seed: int | None = 0
    timeout_s: float | None = Field(None, gt=0)


class Refine3DResult(BaseModel):
    """Keys as results.records.REFINEMENT expects (resolution_a = post-processed FSC 0.143)."""

    refine_job: str
    postprocess_job: str
    number_of_particles: int
    symmetry: str
    class_number: int = 1
    pixel_size_a: float | None = Field(None, description="Of the refined particles and map.")
    refine_resolution_a: float
    resolution_a: float
    bfactor_a2: float | None
    map: str
    mask: str
    duration_s: float


def run_refine3d(project: RelionProject, particles_star: str, reference_map: str, settings: Refine3DSettings,
                 alias: str, execute: Execute = run_output) -> Refine3DResult:
    """Refine3D + MaskCreate + PostProcess jobs (found again by `alias` on a retry); `execute` runs each
    program (here by default, or as Slurm jobs)."""
    started = time.monotonic()
    n_particles = len(read_star(project.absolute(particles_star))["particles"])
    refine = project.job("refine3d", alias=alias)
    spec = refine3d_command(Refine3DInputs(
        project_dir=str(project.root), particles_star=particles_star, job_dir=refine.name.rstrip("/"),
        mask_diameter_a=settings.mask_diameter_a, threads=settings.threads, mpi_ranks=settings.mpi_ranks,
        mpirun_args=settings.mpirun_args, reference_path=reference_map, symmetry=settings.symmetry,
        initial_lowpass_a=settings.initial_lowpass_a, random_seed=settings.random_seed))
    spec = spec.model_copy(update={"args": _sampling_args(spec.args, settings)})
    _run(project, refine, spec, settings, execute, inputs=[(particles_star, NodeType.PARTICLES), (reference_map, NodeType.MAP)])
    refine_model = parse_model_star(refine.path / "run_model.star")
    half1 = f"{refine.name}run_half1_class001_unfil.mrc"
    refined_map = f"{refine.name}run_class001.mrc"
    for name, node in ((refined_map, NodeType.MAP), (half1, NodeType.HALF_MAP),
                       (f"{refine.name}run_data.star", NodeType.PARTICLES)):
        refine.add_output(name, node)
    project.finish_job(refine, success=True)

    mask_job = project.job("maskcreate", alias=alias)
    mask = f"{mask_job.name}mask.mrc"
    threshold = mask_threshold(project.absolute(refined_map), settings)
    _run(project, mask_job, CommandSpec(program="relion_mask_create", cwd=str(project.root), args=[
        "--i", refined_map, "--o", mask, "--lowpass", f"{settings.mask_lowpass_a:g}", "--ini_threshold",
        f"{threshold:.6g}", "--extend_inimask", "3", "--width_soft_edge", "3", "--angpix",
        f"{settings.pixel_size_a:g}", "--j", str(settings.threads)]), settings, execute, inputs=[(refined_map, NodeType.MAP)])
    mask_job.add_output(mask, NodeType.MASK)
    project.finish_job(mask_job, success=True)

    post = project.job("postprocess", alias=alias)
    post_spec = relion_postprocess.command(relion_postprocess.PostProcessInputs(
        project_dir=str(project.root), half_map_path=half1, mask_path=mask, job_dir=post.name.rstrip("/"),
        pixel_size_a=settings.pixel_size_a, auto_bfactor_low_resolution_a=settings.bfactor_low_resolution_a))
    output = _run(project, post, post_spec, settings, execute, inputs=[(half1, NodeType.HALF_MAP), (mask, NodeType.MASK)])
    parsed = relion_postprocess.parse_stdout(output)
    post.add_output(f"{post.name}postprocess.mrc", NodeType.POSTPROCESS_MAP)
    post.add_output(f"{post.name}postprocess.star", NodeType.POSTPROCESS_STAR)
    project.finish_job(post, success=True)
    return Refine3DResult(refine_job=refine.name.rstrip("/"), postprocess_job=post.name.rstrip("/"),
                          number_of_particles=n_particles, symmetry=settings.symmetry,
                          pixel_size_a=settings.pixel_size_a, refine_resolution_a=refine_model["resolution_a"],
                          resolution_a=parsed["final_resolution_a"], bfactor_a2=parsed["bfactor_a2"],
                          map=f"{post.name}postprocess.mrc", mask=mask, duration_s=time.monotonic() - started)


def mask_threshold(map_path, settings: Refine3DSettings) -> float:
    """Density above which the map's voxels fill the particle's own volume (sphere of its diameter)."""
    volume = np.asarray(read_mrc(map_path, mmap=False), dtype=np.float64)
    particle_voxels = 4 / 3 * math.pi * (0.5 * settings.particle_diameter_a / settings.pixel_size_a) ** 3
    fraction = min(0.5, 0.5 * particle_voxels / volume.size)  # half the sphere: the map is not a full ball
    return float(np.quantile(volume, 1.0 - fraction))


def record_refinement(store: ResultsStore, processing_job_id: int, result: Refine3DResult) -> int:
    return store.record_refinement(processing_job_id, result)


class BFactorSeries(BaseModel):
    refinements: list[Refine3DResult]
    fit: BFactorFit
    plot: str


def run_bfactor_series(project: RelionProject, particles_star: str, reference_map: str, settings: Refine3DSettings,
                       fractions: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0), seed: int = 0,
                       min_particles: int = 100, full: Refine3DResult | None = None,
                       execute: Execute = run_output) -> BFactorSeries:
    """Refine random subsets (1/8 … all) and fit the Rosenthal–Henderson B-factor; plot next to the subsets.

    `full`, a finished refinement of all of `particles_star`, stands for the largest subset instead of
    refining the same particles again. The subsets' job aliases carry the input's particle count, so a
    later series of a larger set never reuses an earlier one's jobs.
    """
    blocks = read_star(project.absolute(particles_star))
    particles: pd.DataFrame = blocks["particles"]
    total = len(particles)
    order = np.random.default_rng(seed).permutation(total)
    subsets = project.job("select", alias=f"bfactor_subsets_{total}")
    subsets.add_input(particles_star, NodeType.PARTICLES)
    refinements = []
    for size in subset_sizes(total, fractions, min_particles):
        if full is not None and size == total == full.number_of_particles:
            refinements.append(full)
            continue
        subset_star = subsets.path / f"particles_{size}.star"
        write_star(subset_star, {"optics": blocks["optics"], "particles": particles.iloc[np.sort(order[:size])]})
        subsets.add_output(subset_star, NodeType.PARTICLES)
        refinements.append(run_refine3d(project, project.relative(subset_star), reference_map, settings,
                                        alias=f"bfactor_{total}_{size}", execute=execute))
    project.finish_job(subsets, success=True)
    fit = fit_bfactor([BFactorPoint(number_of_particles=r.number_of_particles, resolution_a=r.resolution_a)
                       for r in refinements])
    plot = bfactor_plot(fit, subsets.path / "bfactor_plot.png")
    return BFactorSeries(refinements=refinements, fit=fit, plot=str(plot))


def record_bfactor_series(store: ResultsStore, processing_job_id: int, series: BFactorSeries) -> list[int]:
    return [store.record_bfactor_fit(processing_job_id, {"number_of_particles": r.number_of_particles,
                                                         "resolution_a": r.resolution_a,
                                                         "pixel_size_a": r.pixel_size_a})
            for r in series.refinements]


def _sampling_args(args: list[str], settings: Refine3DSettings) -> list[str]:
    """The tool's auto-refine arguments with the sampling of `settings` (flags replaced or added)."""
    values = {"--healpix_order": str(settings.healpix_order),
              "--auto_local_healpix_order": str(settings.auto_local_healpix_order),
              "--offset_range": f"{settings.offset_range_px:g}", "--offset_step": f"{settings.offset_step_px:g}"}
    if settings.max_iterations is not None:
        values["--auto_iter_max"] = str(settings.max_iterations)
    args = list(args)
    for flag, value in values.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    if settings.fast_convergence:
        args += ["--auto_ignore_angles", "--auto_resol_angles"]
    return args


def _run(project: RelionProject, job: RelionJob, spec: CommandSpec, settings: Refine3DSettings, execute: Execute,
         inputs: list[tuple[str, NodeType]]) -> str:
    """Run one program for `job` (its log in run.out); the job is marked Failed if it fails."""
    for name, node in inputs:
        job.add_input(name, node)
    spec = spec.model_copy(update={"timeout_s": settings.timeout_s, "log_path": str(job.path / "run.out")})
    project.add_command(job, spec.display())
    try:
        return execute(spec)
    except SlurmJobPending:
        raise  # deferred to the triggerer, not failed: the task runs it again
    except BaseException:
        project.finish_job(job, success=False)
        raise
