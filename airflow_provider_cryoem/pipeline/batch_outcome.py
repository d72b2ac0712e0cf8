"""A particle-batch step (2D/3D classification, refinement, B-factor) that cannot run on its batch is
recorded and skipped, so the session goes on with its other batches and later rounds.

Skipped: a batch too small for the step (TooFewParticlesError, a documented skip). Recorded as a failed
processing job named after the step and batch (`class2d batch 3`), with the program's error: a Relion
run that fails or times out (ToolExecutionError), or output the step cannot use (ValueError, e.g. an
unreadable map). Both leave `skipped` in the item so the steps after it pass it through. A missing
program (ToolChoiceError/ToolNotFoundError), a retryable Slurm failure or a database error still fail
the task, so Airflow retries it or the recipe can be fixed.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..downstream.class2d import TooFewParticlesError
from ..execution import ToolExecutionError
from .stores import results_store

log = logging.getLogger(__name__)


def run_or_skip(item: dict[str, Any], step: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`work()`'s item, or `item` with `skipped` (and a failed processing job for a failure)."""
    try:
        return work()
    except TooFewParticlesError as exc:
        return {**item, "skipped": str(exc)}
    except (ValueError, ToolExecutionError) as exc:
        if getattr(exc, "retryable", False):
            raise
        reason = f"{step} failed: {exc}"
        log.error("%s; the session goes on without it", reason)
        store = results_store(item["results_conn_id"], item["processing_path"])
        store.record_stage_failure(item["processing_job_id"], step, str(exc))
        return {**item, "skipped": reason}
