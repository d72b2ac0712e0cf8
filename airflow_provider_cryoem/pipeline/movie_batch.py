"""Run one stage over a micro-batch of movies: process, record, and report each movie on its own."""
from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel

from ..config import SessionConfig
from ..execution import ToolExecutionError
from ..io._atomic import no_space_left
from ..io.errors import DiskFullError
from ..relion_project import OpticsGroup
from .external import EXTERNAL_STEPS, SlurmJobPending, stage_executor
from .record import RECORDERS, RESULT_STAGE_NAMES
from .stages import BUILTIN_RUNNERS, MovieContext
from .stores import relion_project, results_store

log = logging.getLogger(__name__)

# Large per-particle lists stay in the files and the database, out of XCom.
_KEPT_OUT_OF_XCOM = frozenset({"particles", "coordinates_px", "figures_of_merit"})


def _missing_inputs(item: dict[str, Any], upstream: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    return [stage for stage, by_movie in upstream.items()
            if by_movie.get(item["movie"], {}).get("status") != "ok"]


class BatchPending(SlurmJobPending):
    """Some movies of the batch wait for Slurm jobs: the outcomes of the others, and the jobs waited for (the
    task defers on the first)."""

    def __init__(self, outcomes: list[dict[str, Any]], pending: list[SlurmJobPending]) -> None:
        first = pending[0]
        super().__init__(first.conn_id, first.job, first.jobcomp_file, first.poll_interval_s,
                         f"{len(pending)} movies wait for Slurm jobs")
        self.outcomes, self.pending = outcomes, pending


def _run_step(stage: str, tool: str, runs_on: str | dict[str, Any], ctx: MovieContext) -> dict[str, Any]:
    """Run the stage for one movie with the recipe's program, on this worker or on Slurm."""
    if tool == "builtin":
        return BUILTIN_RUNNERS[stage](ctx)
    # The job's identity is where its outputs go: the same work (a retry) re-attaches, while another
    # session that happens to share a name or a job number (a fresh results database) never does.
    job_key = f"{ctx.item['relion_dir']}|{ctx.item['processing_job_id']}|{ctx.item['movie']}"
    return EXTERNAL_STEPS[(stage, tool)](ctx, stage_executor(stage, tool, runs_on, job_key))


def process_batch(stage: str, tool: str, runs_on: str | dict[str, Any], movies: list[dict[str, Any]],
                  config: SessionConfig, params: BaseModel, upstream: dict[str, dict[str, dict[str, Any]]],
                  run_id: str) -> list[dict[str, Any]]:
    """Process every movie of the batch; a bad movie is recorded as failed and the others go on.

    Errors of the movie itself, while processing or recording it (unreadable file, engine refusing the
    data, a result the store refuses such as an infinite fit resolution: ValueError and subclasses; an
    external program failing on it or exiting 0 without its output: ToolExecutionError,
    FileNotFoundError; a movie too large to decode: MemoryError) become a failed outcome with its reason. A missing
    program (ToolChoiceError) or a retryable Slurm failure fails the task. Anything else (database down, out
    of memory, the processing disk full: DiskFullError) propagates, so the task fails and Airflow retries the
    batch; writes are idempotent, so the retry duplicates nothing. A movie's error while the processing folder's
    filesystem has no space left is taken for the disk's fault (a program that could not write its output),
    not the movie's.

    Inside `waiting_in_triggerer` (a Slurm placement whose task waits in the triggerer, see
    StepOperator.run_deferring), every movie's job is submitted first; if any has not ended, BatchPending
    carries the finished movies' outcomes and the jobs to wait for.
    """
    recorder = RECORDERS[stage]
    optics = OpticsGroup.from_session(config)
    outcomes: list[dict[str, Any]] = []
    pending: list[SlurmJobPending] = []
    for item in movies:
        store = results_store(item["results_conn_id"], item["processing_path"])
        project = relion_project(item["relion_dir"], optics, item["relion_dialect"], item["experiment"])
        movie_id = store.register_movie(item["session_id"], item["movie"])
        missing = _missing_inputs(item, upstream)
        if missing:
            outcomes.append({"movie": item["movie"], "session_id": item["session_id"], "status": "skipped",
                             "error": f"no usable result from {', '.join(missing)}"})
            continue
        context = MovieContext(item, config, params,
                               {name: by_movie[item["movie"]]["result"] for name, by_movie in upstream.items()},
                               project, runs_on)
        started_s = time.perf_counter()
        try:
            result = _run_step(stage, tool, runs_on, context)
            recorder(context, result, store, item["processing_job_id"], movie_id)
            store.clear_failure(item["processing_job_id"], movie_id, RESULT_STAGE_NAMES[stage])
        except SlurmJobPending as waiting:
            pending.append(waiting)
            continue
        except (ValueError, ToolExecutionError, FileNotFoundError, MemoryError) as exc:
            if getattr(exc, "retryable", False):
                raise  # e.g. a Slurm node failure: let Airflow retry the batch
            if no_space_left(item["processing_path"]):  # e.g. Relion's "Can not close image file" on a full disk
                raise DiskFullError(item["processing_path"], when=f"when {stage} failed on {item['movie']}",
                                    outcome="not the movie's fault: the task fails for Airflow to retry") from exc
            reason = "out of memory on this movie" if isinstance(exc, MemoryError) else str(exc)
            store.record_failure(item["processing_job_id"], movie_id, RESULT_STAGE_NAMES[stage], reason)
            outcomes.append({"movie": item["movie"], "session_id": item["session_id"], "status": "failed",
                             "error": reason})
            continue
        outcomes.append({"movie": item["movie"], "session_id": item["session_id"], "status": "ok",
                         "compute_s": round(time.perf_counter() - started_s, 3),
                         "result": {k: v for k, v in result.items() if k not in _KEPT_OUT_OF_XCOM}})
    if pending:
        raise BatchPending(outcomes, pending)
    return outcomes
