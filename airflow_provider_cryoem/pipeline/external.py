"""Per-movie stage steps with external programs: build the command from the session and the recipe's
params, run it where the recipe says (this worker, or a Slurm cluster over SSH), parse its outputs into
the same result keys the built-in engines return."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import sysconfig
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ..execution import CommandSpec, Execute, SlurmJobPending, ToolNotFoundError, run_output
from ..relion_project import icebreaker_jobs
from ..tools import cryolo, ctffind, icebreaker, motioncor2, relion_autopick, relion_motioncorr, topaz
from .stages import MovieContext, available_cores


class ToolChoiceError(RuntimeError):
    """The program a recipe chose cannot be run; names the program and the recipe setting."""


def _scratch(ctx: MovieContext, job_kind: str) -> Path:
    """A private output folder per movie inside the Relion job, so a program's own bookkeeping files
    (its run.out, its one-movie STAR files) never overwrite the job's aggregated ones."""
    movie = Path(ctx.item["movie"])
    folder = Path(*(re.sub(r"[^A-Za-z0-9_.-]+", "_", part) for part in movie.parent.parts))
    return ctx.project.job(job_kind).path / "runs" / folder / re.sub(r"[^A-Za-z0-9_.-]+", "_", movie.stem)


def _movies_link(ctx: MovieContext) -> str:
    """Relion wants movies inside its project: a `Movies` link to the watched folder, path relative to it."""
    link = ctx.project.root / "Movies"
    if not link.exists():
        try:
            link.symlink_to(Path(ctx.item["watch_dir"]).resolve(), target_is_directory=True)
        except FileExistsError:  # another task made it first
            pass
    return str(Path("Movies") / ctx.item["movie"])


def relion_motioncorr_step(ctx: MovieContext, execute: Execute) -> dict[str, Any]:
    config, params = ctx.config, ctx.params
    scratch = _scratch(ctx, "motioncorr")
    inputs = relion_motioncorr.RelionMotionInputs(
        project_dir=str(ctx.project.root), movie_path=_movies_link(ctx),
        job_dir=str(scratch.relative_to(ctx.project.root)), pixel_size_a=config.pixel_size_a,
        dose_per_frame_e_a2=config.dose_per_frame_e_a2, voltage_kv=config.voltage_kv, cs_mm=config.cs_mm,
        amplitude_contrast=config.amplitude_contrast, gain_reference_path=config.gain_reference_path,
        gain_rotation=config.gain_rotation, gain_flip=config.gain_flip, defect_file_path=config.defect_file_path,
        eer_grouping=config.eer_grouping, bin_factor=2 if config.super_resolution else 1,
        patches_x=params.patches_x, patches_y=params.patches_y, bfactor_a2=params.bfactor_a2,
        threads=available_cores())
    execute(relion_motioncorr.command(inputs))
    return relion_motioncorr.parse_result(inputs)


def motioncor2_step(ctx: MovieContext, execute: Execute) -> dict[str, Any]:
    config, params = ctx.config, ctx.params
    inputs = motioncor2.MotionCor2Inputs(
        movie_path=str(ctx.movie_path), output_path=str(ctx.output("motioncorr", ".mrc")),
        pixel_size_a=config.pixel_size_a, dose_per_frame_e_a2=config.dose_per_frame_e_a2,
        voltage_kv=config.voltage_kv, gain_reference_path=config.gain_reference_path,
        gain_rotation=config.gain_rotation, gain_flip=config.gain_flip, defect_file_path=config.defect_file_path,
        patches_x=params.patches_x, patches_y=params.patches_y, iterations=params.iterations,
        tolerance_px=params.tolerance_px, bin_factor=2 if config.super_resolution else 1)
    spec = motioncor2.command(inputs)
    Path(inputs.output_path).parent.mkdir(parents=True, exist_ok=True)
    return motioncor2.parse_result(execute(spec), inputs)


def _ctffind_step(version: int) -> Callable[[MovieContext, Execute], dict[str, Any]]:
    def step(ctx: MovieContext, execute: Execute) -> dict[str, Any]:
        config, params = ctx.config, ctx.params
        inputs = ctffind.CtffindInputs(
            micrograph_path=ctx.upstream["motioncorr"]["micrograph"], output_path=str(ctx.output("ctffind", ".ctf")),
            pixel_size_a=config.motion_corrected_pixel_size_a, voltage_kv=config.voltage_kv, cs_mm=config.cs_mm,
            amplitude_contrast=config.amplitude_contrast, spectrum_size_px=params.tile_size_px,
            min_resolution_a=params.min_resolution_a, max_resolution_a=params.max_resolution_a,
            min_defocus_a=params.min_defocus_a, max_defocus_a=params.max_defocus_a,
            find_phase_shift=params.find_phase_shift, version=version)
        Path(inputs.output_path).parent.mkdir(parents=True, exist_ok=True)
        execute(ctffind.command(inputs))
        result = ctffind.parse_result(inputs)
        result["diagnostic_image"] = inputs.output_path
        return result
    return step


def relion_autopick_step(ctx: MovieContext, execute: Execute) -> dict[str, Any]:
    config = ctx.config
    scratch = _scratch(ctx, "autopick")
    micrograph = ctx.project.relative(ctx.upstream["motioncorr"]["micrograph"])
    inputs = relion_autopick.RelionAutopickInputs(
        project_dir=str(ctx.project.root), micrograph_paths=[micrograph],
        job_dir=str(scratch.relative_to(ctx.project.root)), pixel_size_a=config.motion_corrected_pixel_size_a,
        voltage_kv=config.voltage_kv, cs_mm=config.cs_mm, amplitude_contrast=config.amplitude_contrast,
        min_diameter_a=0.8 * config.particle_diameter_a, max_diameter_a=1.2 * config.particle_diameter_a,
        threads=available_cores())
    execute(relion_autopick.command(inputs))
    result = relion_autopick.parse_coordinates(relion_autopick.coordinates_path(inputs, micrograph))
    result["diameter_a"] = config.particle_diameter_a
    return result


ICEBREAKER_EXTRA = "pip install 'airflow-provider-cryoem[icebreaker]'"
# IceBreaker job -> (Relion job kind, suffix of the micrograph it makes, result key)
_ICEBREAKER_MICROGRAPH_JOBS = {"micrographs": ("icebreaker_micrographs", "_grouped.mrc", "grouped_micrograph"),
                               "enhancecontrast": ("icebreaker_enhancecontrast", "_flattened.mrc",
                                                   "flattened_micrograph")}


def icebreaker_program_dir(configured: str | None) -> str | None:
    """Where ib_job and ib_5fig are: the recipe's folder, else PATH (None), else the scripts folder of this
    Python environment, where `pip install airflow-provider-cryoem[icebreaker]` puts them (a worker run
    from a virtual environment that is not on PATH, as `make test` and `airflow dags test` are)."""
    if configured or shutil.which("ib_job"):
        return configured
    scripts = sysconfig.get_path("scripts")
    return scripts if scripts and os.access(Path(scripts) / "ib_job", os.X_OK) else None


def _fresh_scratch(ctx: MovieContext, job_kind: str) -> Path:
    """The movie's own `--o` folder in the job, emptied: ib_job refuses to start over a temporary folder an
    interrupted run left behind, and its run.out, RELION_JOB_EXIT_* and IB_input links stay out of the job."""
    scratch = _scratch(ctx, job_kind)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    return scratch


def icebreaker_step(ctx: MovieContext, execute: Execute) -> dict[str, Any]:
    """IceBreaker as cryoem-services runs it, in the Relion project folder with paths relative to it:
    `ib_job --mode group` on the motion-corrected micrograph (IceBreaker/jobNNN/Movies/<mic>_grouped.mrc),
    optionally `--mode flatten`, then `ib_5fig` on the grouped micrograph for its five-figure summary."""
    params, project = ctx.params, ctx.project
    kinds = icebreaker_jobs(params.enhance_contrast)
    if any(project.existing_job(kind) is None for kind in kinds):
        project.reserve_jobs(kinds)  # numbered together, in cryoem-services' order
    micrograph = project.relative(ctx.upstream["motioncorr"]["micrograph"])
    program_dir = icebreaker_program_dir(params.program_dir)
    result: dict[str, Any] = {"micrograph": str(project.absolute(micrograph))}

    def run(inputs: icebreaker.IceBreakerInputs) -> str:
        try:
            return execute(icebreaker.command(inputs))
        except ToolChoiceError as exc:
            raise ToolChoiceError(f"{exc}; IceBreaker installs with {ICEBREAKER_EXTRA}") from exc

    for job in ("micrographs", "enhancecontrast") if params.enhance_contrast else ("micrographs",):
        kind, suffix, key = _ICEBREAKER_MICROGRAPH_JOBS[job]
        scratch = _fresh_scratch(ctx, kind)
        inputs = icebreaker.IceBreakerInputs(job=job, project_dir=str(project.root), micrograph_path=micrograph,
                                             job_dir=project.relative(scratch), program_dir=program_dir)
        run(inputs)
        made = Path(icebreaker.parse_result(inputs)["micrograph_path"])
        final = ctx.output(kind, suffix)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(made, final)  # where cryoem-services puts it: the job's folder, below it the movie's path
        result[key] = str(final)

    scratch = _fresh_scratch(ctx, "icebreaker_summary")
    inputs = icebreaker.IceBreakerInputs(job="summary", project_dir=str(project.root),
                                         job_dir=project.relative(scratch),
                                         micrograph_path=project.relative(result["grouped_micrograph"]),
                                         program_dir=program_dir)
    output = run(inputs)
    figures = icebreaker.parse_five_figures(output, source=icebreaker.log_path(inputs))
    figures.pop("micrograph_path")  # IceBreaker's temporary link, not a file to keep
    return result | figures


TOPAZ_EXTRA = "pip install 'airflow-provider-cryoem[topaz]'"


def _placement_gpus(runs_on: str | dict[str, Any]) -> int:
    return int(runs_on.get("gpus") or 0) if isinstance(runs_on, dict) else 0


def _strongest(result: dict[str, Any], max_particles: int) -> dict[str, Any]:
    """At most `max_particles` picks (they come strongest first), the rest counted as rejected."""
    dropped = max(0, result["particle_count"] - max_particles)
    return result | {"coordinates_px": result["coordinates_px"][:max_particles],
                     "figures_of_merit": result["figures_of_merit"][:max_particles],
                     "particle_count": min(result["particle_count"], max_particles),
                     "rejected": {"max_particles": dropped}}


def topaz_program(configured: str | None, runs_on: str | dict[str, Any]) -> tuple[str, bool]:
    """(program, run as `python -m topaz.commands.…`): the recipe's command (a Python interpreter, `python…`,
    runs Topaz's command modules); on Slurm `topaz` on the node's PATH; on this worker Topaz's command
    modules in Airflow's own Python environment when it has them (the `topaz` entry point imports
    torchvision, which PyPI's wheel cannot load beside the CPU torch), else `topaz` on PATH."""
    if configured:
        return configured, Path(configured).name.startswith("python")
    if not isinstance(runs_on, dict) and importlib.util.find_spec("topaz") is not None:
        return sys.executable, True
    return "topaz", False


def topaz_pick_step(ctx: MovieContext, execute: Execute) -> dict[str, Any]:
    """`topaz preprocess` (downsample, normalise) then `topaz extract` with the recipe's detector, in the
    movie's folder of the AutoPick job; picks scaled back to micrograph pixels (centres), strongest first.
    The downsampled copy is removed once picked (it would grow with the session); the picks table stays."""
    config, params = ctx.config, ctx.params
    settings = params.topaz
    pixel_size_a = config.motion_corrected_pixel_size_a
    scale = settings.downscale or topaz.relion_downscale(config.particle_diameter_a, pixel_size_a)
    program, as_modules = topaz_program(settings.program, ctx.runs_on)
    scratch = _fresh_scratch(ctx, "autopick")
    scratch.mkdir()
    inputs = topaz.TopazInputs(
        micrograph_path=ctx.upstream["motioncorr"]["micrograph"], job_dir=str(scratch), pixel_size_a=pixel_size_a,
        particle_diameter_a=config.particle_diameter_a, scale=scale, radius_px=settings.radius_px,
        threshold=settings.threshold, model=settings.model, device=0 if _placement_gpus(ctx.runs_on) else -1,
        threads=placement_threads(None, ctx.runs_on), patch_size_px=settings.patch_size_px or 0, program=program,
        module_python=as_modules)
    try:
        execute(topaz.preprocess_command(inputs))
        execute(topaz.extract_command(inputs))
    except ToolChoiceError as exc:
        raise ToolChoiceError(f"{exc}; Topaz installs with {TOPAZ_EXTRA}") from exc
    shutil.rmtree(topaz.preprocessed_path(inputs).parent, ignore_errors=True)
    result = _strongest(topaz.parse_picks(topaz.picks_path(inputs), scale), params.max_particles)
    return result | {"diameter_a": config.particle_diameter_a, "picking_template": settings.model,
                     "topaz_picks": str(topaz.picks_path(inputs)), "downscale": scale}


def cryolo_pick_step(ctx: MovieContext, execute: Execute) -> dict[str, Any]:
    """`cryolo_predict.py` on the motion-corrected micrograph with the configuration cryoem-services writes,
    in the movie's folder of the AutoPick job; picks from its CBOX file (box centres), most confident first."""
    config, params = ctx.config, ctx.params
    settings = params.cryolo
    if not settings.weights_path:
        raise ToolChoiceError("crYOLO needs model weights: set stages.pick.params.cryolo.weights_path "
                              "(chosen by the recipe setting stages.pick.tool: cryolo)")
    pixel_size_a = config.motion_corrected_pixel_size_a
    gpus = _placement_gpus(ctx.runs_on)
    scratch = _fresh_scratch(ctx, "autopick")
    inputs = cryolo.CryoloInputs(
        micrograph_path=ctx.upstream["motioncorr"]["micrograph"], job_dir=str(scratch),
        weights_path=settings.weights_path,
        box_size_px=settings.box_size_px or max(8, round(config.particle_diameter_a / pixel_size_a)),
        threshold=settings.threshold, min_distance_px=settings.min_distance_px,
        gpu_ids=list(range(gpus)) if gpus else settings.gpu_ids, cpus=placement_threads(None, ctx.runs_on),
        program=settings.program)
    cryolo.write_config(inputs)
    execute(cryolo.command(inputs))
    result = _strongest(cryolo.parse_result(inputs), params.max_particles)
    return result | {"diameter_a": config.particle_diameter_a, "picking_template": settings.weights_path,
                     "cbox": str(cryolo.cbox_path(inputs))}


EXTERNAL_STEPS: dict[tuple[str, str], Callable[[MovieContext, Execute], dict[str, Any]]] = {
    ("motioncorr", "relion"): relion_motioncorr_step,
    ("motioncorr", "motioncor2"): motioncor2_step,
    ("ctf", "ctffind4"): _ctffind_step(4),
    ("ctf", "ctffind5"): _ctffind_step(5),
    ("pick", "relion_autopick"): relion_autopick_step,
    ("pick", "topaz"): topaz_pick_step,
    ("pick", "cryolo"): cryolo_pick_step,
    ("ice", "icebreaker"): icebreaker_step,
}


def local_executor(stage: str, tool: str) -> Execute:
    """Run commands on this worker; a missing program names the recipe setting that chose it."""
    def execute(spec: CommandSpec) -> str:
        try:
            return run_output(spec)
        except ToolNotFoundError as exc:
            raise ToolChoiceError(f"{exc} (chosen by the recipe setting stages.{stage}.tool: {tool})") from exc
    return execute


def slurm_job_item(spec: CommandSpec) -> str:
    """What tells one job of an executor from another: the program and its `--o` (Relion) or `-o` output."""
    output = next((spec.args[i + 1] for i, arg in enumerate(spec.args[:-1]) if arg in ("--o", "-o")), "")
    return f"{spec.program}|{output}"


# Slurm jobs this process is waiting on (SSH connection id, job id), so that a killed task can cancel them.
_WAITING_SLURM_JOBS: set[tuple[str, int]] = set()


def cancel_waiting_slurm_jobs() -> None:
    """scancel every Slurm job this process is waiting on (called by the step operators' on_kill)."""
    from ..hooks.slurm import slurm_hook

    for conn_id, job_id in list(_WAITING_SLURM_JOBS):
        slurm_hook(conn_id).cancel(job_id)
        _WAITING_SLURM_JOBS.discard((conn_id, job_id))


# The Slurm jobs a deferrable stage has submitted so far (job name -> id), while its operator runs it (see
# waiting_in_triggerer); None when the stage waits for its jobs in this process.
_DEFERRING_SLURM_JOBS: ContextVar[dict[str, int] | None] = ContextVar("deferring_slurm_jobs", default=None)


@contextmanager
def waiting_in_triggerer(submitted: dict[str, int]) -> Iterator[None]:
    """Within this block the Slurm executors a stage makes raise SlurmJobPending instead of waiting, and fill
    `submitted` (the operator keeps it in XCom between tries), so that a stage of several programs, whatever
    depth its executor is made at, replays to its first unfinished job without resubmitting the others."""
    token = _DEFERRING_SLURM_JOBS.set(submitted)
    try:
        yield
    finally:
        _DEFERRING_SLURM_JOBS.reset(token)


def slurm_executor(stage: str, tool: str, placement: dict[str, Any], job_key: str,
                   submitted: dict[str, int] | None = None) -> Execute:
    """Submit commands to Slurm (over SSH or slurmrestd, by connection) and wait; a retried task re-attaches to
    its job by name.

    The name hashes `job_key`, the program and its `--o` (Relion) or `-o` (Topaz, crYOLO) output: one executor
    can run several jobs of one program (a B-factor series' refinements, Topaz's preprocess then extract)
    without one re-attaching to another.

    `submitted` (job name -> id, filled in here) makes the task wait in the triggerer instead of this process:
    a job that has not ended raises SlurmJobPending, and when the task runs the step again a job it already
    submitted is read back by its id, never submitted anew (so a failed job fails its movie, once).
    """
    from ..execution.slurm import job_name
    from ..hooks.slurm import slurm_hook

    hook = slurm_hook(placement["slurm_conn_id"])

    def execute(spec: CommandSpec) -> str:
        spec = spec.model_copy(update={"threads": placement["cpus"], "gpus": placement["gpus"],
                                       "memory_mb": int(placement["memory_gb"] * 1024),
                                       "timeout_s": placement["time_limit_min"] * 60})
        name = job_name(job_key, slurm_job_item(spec), stage)
        if submitted is not None:
            job = hook.job(submitted[name], name, reattached=True) if name in submitted else hook.submit(spec, name)
            submitted[name] = job.job_id
            status = hook.status(job.job_id)
            if not status.finished:
                raise SlurmJobPending(placement["slurm_conn_id"], job.model_dump(), hook.jobcomp_file,
                                      hook.settings.poll_interval_s)
        else:
            job = hook.submit(spec, name)
            waiting = (placement["slurm_conn_id"], job.job_id)
            _WAITING_SLURM_JOBS.add(waiting)
            try:
                status = hook.wait(job)
            finally:
                _WAITING_SLURM_JOBS.discard(waiting)
        hook.raise_for_status(spec.program, job, status)
        return hook.read_output(job)
    return execute


def stage_executor(stage: str, tool: str, runs_on: str | dict[str, Any], job_key: str,
                   submitted: dict[str, int] | None = None) -> Execute:
    """Where the recipe places a stage's programs: this worker, or Slurm (`job_key`: where outputs go;
    `submitted`, else the jobs of an enclosing waiting_in_triggerer: wait in the triggerer, see slurm_executor)."""
    if isinstance(runs_on, dict):
        return slurm_executor(stage, tool, runs_on, job_key,
                              submitted if submitted is not None else _DEFERRING_SLURM_JOBS.get())
    return local_executor(stage, tool)


def placement_threads(requested: int | None, runs_on: str | dict[str, Any]) -> int:
    """Threads for a program: the recipe's number, else the Slurm placement's cpus, else this worker's cores."""
    if requested:
        return requested
    return int(runs_on["cpus"]) if isinstance(runs_on, dict) else available_cores()
