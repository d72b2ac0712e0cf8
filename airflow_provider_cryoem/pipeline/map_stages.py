"""Stages that build the map: 3D classification (after an initial model), auto-refinement of the best
class with mask and post-processing, and the B-factor series.

3D work follows the selected particles (`particles_all.star` of class selection): first when
class3d_batch_size of them are selected, again at each doubling (cryoem-services' rule, capped at
200,000), and on all of them when the session ends. Each size is claimed by one DAG run, so overlapping
runs never classify the same particles twice; a retry of the claiming run carries on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import SessionConfig, check_under_roots
from ..downstream.class3d import (
    Class3DResult,
    Class3DSettings,
    record_class3d,
    run_class3d,
)
from ..downstream.class_selection import ALL_PARTICLES, SELECT_ALIAS, class3d_due
from ..downstream.initial_model import (
    DenovoSettings,
    ReferenceMap,
    lowpass_reference,
    run_denovo_initial_model,
)
from ..downstream.reextract import (
    ReextractResult,
    ReextractSettings,
    reextract_class,
    reextraction_geometry,
)
from ..downstream.refine3d import (
    Refine3DResult,
    Refine3DSettings,
    record_bfactor_series,
    record_refinement,
    run_bfactor_series,
    run_refine3d,
)
from ..engines.bfactor import subset_sizes
from ..execution import Execute
from ..io import read_star
from ..io.star import write_star
from ..recipes.stages import BFactorParams, Class3DParams, ClassReextractionParams, Refine3DParams
from ..relion_project import NodeType, OpticsGroup, RelionProject
from .batch_outcome import run_or_skip
from .external import placement_threads, stage_executor
from .job_claims import claim, claim_is_live, holding
from .session import session_item
from .stages import available_cores
from .stores import relion_project, results_store

CLASS3D_MAX_PARTICLES = 200_000


def _project(config: SessionConfig, item: dict[str, Any]) -> RelionProject:
    return relion_project(item["relion_dir"], OpticsGroup.from_session(config), item["relion_dialect"])


def _executor(stage: str, runs_on: str | dict[str, Any], item: dict[str, Any]) -> Execute:
    return stage_executor(stage, "relion", runs_on, item["relion_dir"])


def due_3d_size(total: int, done: list[int], class3d_batch_size: int, session_over: bool,
                min_particles: int) -> int | None:
    """How many selected particles to classify in 3D now, or None."""
    if session_over:
        size = min(total, CLASS3D_MAX_PARTICLES)
        if size < min_particles or size in done or (done and size < max(done)):
            return None
        return size
    return class3d_due(total, done, class3d_batch_size, CLASS3D_MAX_PARTICLES)


def class3d_sizes_done(project: RelionProject) -> list[int]:
    """Particle counts of the 3D classifications this project has done or is doing (aliases
    `particles_<N>` with a live claim); a round whose run died is not counted, so it is due again."""
    folder = project.root / "Class3D"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.removeprefix("particles_")) for p in folder.glob("particles_*")
                  if p.name.removeprefix("particles_").isdigit() and claim_is_live(p))


def classify_3d(config: SessionConfig, params: Class3DParams, runs_on: str | dict[str, Any],
                opened: dict[str, Any], found: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    """For each session due a 3D round: its initial model (once per session) and Class3D, recorded."""
    done = []
    for session in opened["sessions"]:
        item = _classify_session(config, params, runs_on, session, found["session_over"], run_id)
        if item is not None:
            done.append(item)
    return done


def _classify_session(config: SessionConfig, params: Class3DParams, runs_on: str | dict[str, Any],
                      session: dict[str, Any], session_over: bool, run_id: str) -> dict[str, Any] | None:
    project = _project(config, session)
    selected = project.root / "Select" / SELECT_ALIAS / ALL_PARTICLES
    if not selected.is_file():
        return None
    blocks = read_star(selected)
    size = due_3d_size(len(blocks["particles"]), class3d_sizes_done(project), config.class3d_batch_size,
                       session_over, params.min_particles)
    if size is None:
        return None
    alias = f"particles_{size}"
    job_path = project.job("class3d", alias=alias).path
    if not claim(job_path, run_id):
        return None
    with holding(job_path):
        return _classify_claimed(config, params, runs_on, session, project, selected, blocks, size, alias)


def _classify_claimed(config: SessionConfig, params: Class3DParams, runs_on: str | dict[str, Any],
                      session: dict[str, Any], project: RelionProject, selected: Path, blocks: dict[str, Any],
                      size: int, alias: str) -> dict[str, Any]:
    """The 3D round this run claimed: its input selection, initial model and Class3D, recorded."""
    inputs = project.job("select", alias=f"class3d_input_{size}")
    particles_star = inputs.path / "particles.star"
    write_star(particles_star, {"optics": blocks["optics"], "particles": blocks["particles"].iloc[:size]})
    inputs.add_input(project.relative(selected), NodeType.PARTICLES)
    inputs.add_output(particles_star, NodeType.PARTICLES)
    project.finish_job(inputs, success=True)

    execute = _executor("class3d", runs_on, session)
    threads = placement_threads(params.threads, runs_on)
    settings = Class3DSettings(classes=config.class3d_classes, iterations=params.iterations, threads=threads,
                               mask_diameter_a=config.mask_diameter_a, symmetry=config.symmetry,
                               initial_lowpass_a=params.initial_lowpass_a, healpix_order=params.healpix_order,
                               min_particles_per_class=params.min_particles_per_class)

    def classify() -> dict[str, Any]:
        reference = _initial_model(config, params, project, project.relative(particles_star), threads, execute)
        result = run_class3d(project, project.relative(particles_star), reference.map, settings, alias, execute)
        store = results_store(session["results_conn_id"], session["processing_path"])
        group_id = record_class3d(store, session["processing_job_id"], result)
        store.record_initial_model(group_id, reference)
        return session_item(session, class3d=result.model_dump(mode="json"), initial_model=reference.model_dump())

    return run_or_skip(session_item(session), f"class3d {alias}", classify)


def _initial_model(config: SessionConfig, params: Class3DParams, project: RelionProject, particles_star: str,
                   threads: int, execute: Execute) -> ReferenceMap:
    """The session's given starting map (low-passed), else one made from the particles by SGD (once)."""
    optics = OpticsGroup.from_session(config)
    if config.initial_model_path:
        path = check_under_roots(config.initial_model_path, "initial_model_path")
        return lowpass_reference(project, str(path), optics.particle_box_px, optics.particle_pixel_size_a,
                                 alias="given")
    sgd = params.initial_model
    return run_denovo_initial_model(project, particles_star, DenovoSettings(
        mask_diameter_a=config.mask_diameter_a, threads=threads, sgd_iterations=sgd.sgd_iterations,
        initial_subset=sgd.subsets[0], final_subset=sgd.subsets[1], initial_resolution_a=sgd.resolutions_a[0],
        final_resolution_a=sgd.resolutions_a[1], offset_range_px=sgd.offset_range_px,
        offset_step_px=sgd.offset_step_px, skip_gridding=sgd.skip_gridding, max_particles=sgd.max_particles),
        execute=execute)


def refine_settings(config: SessionConfig, params: Refine3DParams, pixel_size_a: float) -> Refine3DSettings:
    return Refine3DSettings(
        mask_diameter_a=config.mask_diameter_a, particle_diameter_a=config.particle_diameter_a,
        pixel_size_a=pixel_size_a, symmetry=config.symmetry, threads=params.threads or 1,
        mpi_ranks=params.mpi_ranks, initial_lowpass_a=params.initial_lowpass_a,
        healpix_order=params.healpix_order, auto_local_healpix_order=params.auto_local_healpix_order,
        offset_range_px=params.offset_range_px, offset_step_px=params.offset_step_px,
        fast_convergence=params.fast_convergence, max_iterations=params.max_iterations,
        bfactor_low_resolution_a=params.bfactor_low_resolution_a)


def reextract_best_class(config: SessionConfig, params: ClassReextractionParams,
                         item: dict[str, Any]) -> dict[str, Any]:
    """Re-extract the best 3D class's particles at full scale and rescale its map to match, as
    cryoem-services' ExtractClass does before refining; the item then carries `reextract`
    (ReextractResult), which the refinement and B-factor series use. Done once per item."""
    if "skipped" in item or "reextract" in item:
        return item
    class3d = Class3DResult.model_validate(item["class3d"])
    project = _project(config, item)
    geometry = reextraction_geometry(config.motion_corrected_pixel_size_a, config.extraction_box_px,
                                     params.box_px)
    settings = ReextractSettings(geometry=geometry, threads=available_cores())
    alias = f"class{class3d.best_class}_particles_{class3d.particles_per_batch}"
    ctf_job = project.existing_job("ctffind")

    def reextract() -> dict[str, Any]:
        result = reextract_class(project, class3d.best_class_particles_star, class3d.best_class_map,
                                 class3d.best_class, settings, alias=alias,
                                 micrographs_star=ctf_job.output_node_name() if ctf_job else None,
                                 execute=_executor("reextract", "local", item))
        return item | {"reextract": result.model_dump(mode="json")}

    return run_or_skip(item, f"reextract {alias}", reextract)


def refinement_inputs(item: dict[str, Any]) -> tuple[str, str, float]:
    """(particles STAR, reference map, pixel size Å) the refinement of this item works on: the re-extracted
    particles and rescaled map if the item has them, else the 3D classification's best class."""
    if "reextract" in item:
        done = ReextractResult.model_validate(item["reextract"])
        return done.particles_star, done.reference_map, done.pixel_size_a
    class3d = Class3DResult.model_validate(item["class3d"])
    return class3d.best_class_particles_star, class3d.best_class_map, class3d.binned_pixel_size_a


def refine_best_class(config: SessionConfig, params: Refine3DParams, runs_on: str | dict[str, Any],
                      item: dict[str, Any]) -> dict[str, Any]:
    """Auto-refine the best 3D class (its re-extracted particles when the item has them) from its own map,
    mask it, post-process; recorded as a refinement with the pixel size refined at."""
    if "skipped" in item:
        return item
    class3d = Class3DResult.model_validate(item["class3d"])
    particles_star, reference_map, pixel_size_a = refinement_inputs(item)
    settings = refine_settings(config, params, pixel_size_a)
    project = _project(config, item)
    alias = f"particles_{class3d.particles_per_batch}"

    def refine() -> dict[str, Any]:
        result = run_refine3d(project, particles_star, reference_map, settings,
                              alias=alias, execute=_executor("refine3d", runs_on, item))
        result.class_number = class3d.best_class
        store = results_store(item["results_conn_id"], item["processing_path"])
        record_refinement(store, item["processing_job_id"],
                          result.model_copy(update={"map": str(project.absolute(result.map))}))
        return item | {"refine3d": result.model_dump(mode="json")}

    return run_or_skip(item, f"refine3d {alias}", refine)


def bfactor_series(config: SessionConfig, params: BFactorParams, refine_params: Refine3DParams,
                   runs_on: str | dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """Refine subsets of the refined particles and fit the B-factor; each point is a results row. Skipped
    (with the reason) when the subsets would be too small or the full refinement did not get past its start."""
    if "skipped" in item:
        return item
    full = Refine3DResult.model_validate(item["refine3d"])
    project = _project(config, item)
    star, reference_map, pixel_size_a = refinement_inputs(item)
    sizes = subset_sizes(full.number_of_particles, params.fractions, params.min_particles)
    if len(sizes) < 2:
        return item | {"bfactor": {"skipped": f"{star}: {full.number_of_particles} particles give subsets {sizes} "
                                              f"of at least {params.min_particles} (min_particles); a B-factor "
                                              f"fit needs two sizes"}}
    if full.resolution_a >= refine_params.initial_lowpass_a:
        return item | {"bfactor": {"skipped": (
            f"{full.refine_job}: the refinement ended at {full.resolution_a:.1f} Å, no finer than its "
            f"{refine_params.initial_lowpass_a:g} Å starting low-pass (it diverged, or the particles are too few "
            "or too noisy); no B-factor series from it")}}
    settings = refine_settings(config, refine_params, pixel_size_a)

    def series_fit() -> dict[str, Any]:
        series = run_bfactor_series(project, star, reference_map, settings, fractions=params.fractions,
                                    min_particles=params.min_particles, full=full,
                                    execute=_executor("bfactor", runs_on, item))
        store = results_store(item["results_conn_id"], item["processing_path"])
        record_bfactor_series(store, item["processing_job_id"], series)
        return item | {"bfactor": {"bfactor_a2": series.fit.bfactor_a2, "r_squared": series.fit.r_squared,
                                   "pixel_size_a": pixel_size_a,
                                   "plot": series.plot, "points": [p.model_dump() for p in series.fit.points]}}

    return run_or_skip(item, f"bfactor particles_{full.number_of_particles}", series_fit)
