"""Stages that work on batches of particles rather than movies: rebatching, 2D classification, class selection.

Batches fill across movies and DAG runs; a run hands on only the batches that became ready in it, so each
batch is classified once. Everything is recorded in the results store and the session's Relion project.
"""
from __future__ import annotations

from typing import Any

from ..config import SessionConfig
from ..downstream.class2d import (
    Class2DResult,
    Class2DSettings,
    record_class2d,
    run_class2d,
)
from ..downstream.class_selection import record_selection, select_classes
from ..downstream.particle_batches import (
    BatchSizes,
    add_particles,
    flush,
    particle_rows,
)
from ..engines.class_selection import ClassSelectionSettings
from ..recipes.stages import Class2DParams
from ..relion_project import OpticsGroup, RelionProject
from .batch_outcome import run_or_skip
from .external import placement_threads, stage_executor
from .session import session_item
from .stores import relion_project, results_store


def _project(config: SessionConfig, item: dict[str, Any]) -> RelionProject:
    return relion_project(item["relion_dir"], OpticsGroup.from_session(config), item["relion_dialect"])


def select_particles(config: SessionConfig, opened: dict[str, Any], found: dict[str, Any],
                     extract_outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Queue this run's extracted particles into batches; return the batches that became ready.

    The first batch is `class2d_first_batch_size` (early classes), then `class2d_batch_size`; when the
    session is over the partly filled last batch is written too. A retried extraction never adds a
    micrograph's particles twice, and a batch is never handed on twice.
    """
    sizes = BatchSizes(first_batch_size=config.class2d_first_batch_size, batch_size=config.class2d_batch_size)
    ready: list[dict[str, Any]] = []
    for session in opened["sessions"]:
        project = _project(config, session)
        for outcome in extract_outcomes:
            if outcome["status"] == "ok" and outcome["session_id"] == session["session_id"]:
                star = outcome["result"]["star"]
                for batch in add_particles(project, star, particle_rows(star), sizes):
                    ready.append(session_item(session, batch=batch.model_dump()))
        if found["session_over"]:
            ready += [session_item(session, batch=batch.model_dump()) for batch in flush(project, sizes)]
    return ready


def classify_batch(config: SessionConfig, params: Class2DParams, runs_on: str | dict[str, Any],
                   item: dict[str, Any]) -> dict[str, Any]:
    """Relion Class2D on one batch (here or on Slurm), recorded; a batch too small for even one class is
    skipped with its reason, one Relion fails on is recorded as failed and skipped (batch_outcome)."""
    threads = placement_threads(params.threads, runs_on)
    settings = Class2DSettings(classes=config.class2d_classes, iterations=params.iterations, threads=threads,
                               mask_diameter_a=config.mask_diameter_a,
                               min_particles_per_class=params.min_particles_per_class,
                               intensity_corrections=params.intensity_corrections)
    batch = item["batch"]

    def classify() -> dict[str, Any]:
        result = run_class2d(_project(config, item), batch["star_path"], batch["number"], settings,
                             execute=stage_executor("class2d", "relion", runs_on, item["relion_dir"]))
        store = results_store(item["results_conn_id"], item["processing_path"])
        group_id = record_class2d(store, item["processing_job_id"], result)
        return {**item, "class2d": result.model_dump(mode="json"), "classification_group_id": group_id}

    return run_or_skip(item, f"class2d batch {batch['number']}", classify)


def select_good_classes(config: SessionConfig, classified: dict[str, Any]) -> dict[str, Any]:
    """Score the batch's 2D classes, keep the good ones' particles for 3D, mark them selected in the results."""
    if "skipped" in classified:
        return classified
    class2d = Class2DResult.model_validate(classified["class2d"])
    settings = ClassSelectionSettings(min_score=config.class_selection_min_score,
                                      particle_diameter_a=config.particle_diameter_a,
                                      pixel_size_a=class2d.binned_pixel_size_a)
    result = select_classes(_project(config, classified), class2d, settings)
    store = results_store(classified["results_conn_id"], classified["processing_path"])
    record_selection(store, classified["classification_group_id"], result)
    return {key: value for key, value in classified.items() if key != "class2d"} | {
        "selection": result.model_dump(mode="json")}
