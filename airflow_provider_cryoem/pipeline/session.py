"""Session bookkeeping for a DAG run: open the session, find its movies, cut batches, close it."""
from __future__ import annotations

import datetime as dt
import os
import re
import time
from pathlib import Path
from typing import Any

from ..config import ConfigError, SessionConfig, check_input_files, check_under_roots, parse_session_config
from ..downstream.class_selection import SELECT_ALIAS
from ..downstream.particle_batches import BATCH_ALIAS
from ..ingest import split_into_batches
from ..relion_project import (
    ICEBREAKER_JOBS,
    JOB_KINDS,
    SPA_PREPROCESSING,
    TOMO_TILT_JOBS,
    OpticsGroup,
    RelionJob,
    RelionProject,
)
from .stores import relion_project, results_store
from .watch import WatchSettings, report_rejected, scan_session_folder

RESULTS_CONN_ENV = "CRYOEM_RESULTS_CONN_ID"
# A reprocess run of date D takes every session folder named D_<anything> (D as YYYYMMDD).
_DATED_SESSION = "{date:%Y%m%d}_*"


def results_conn_id() -> str | None:
    """The Airflow connection of the results database; None means the SQLite file of the demo."""
    return os.environ.get(RESULTS_CONN_ENV) or None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def relion_project_dir(processing: Path, run_id: str, reprocess: bool) -> Path:
    """The Relion project of a run: `relion` in the processing folder, a folder of its own per reprocess run."""
    return processing / (f"reprocess_{_safe_name(run_id)}" if reprocess else "relion")


def _open_one(config: SessionConfig, watch_dir: Path, processing: Path, recipe_name: str, run_id: str,
              reprocess: bool, stable_for_s: float, relion_dialect: str, experiment: str) -> dict[str, Any]:
    processing.mkdir(parents=True, exist_ok=True)
    conn_id = results_conn_id()
    store = results_store(conn_id, str(processing))
    session_id = store.get_or_create_session(config.session_name, str(watch_dir), str(processing),
                                             data_collection_id=config.ispyb_data_collection_id)
    store.set_quality_limits(session_id, config.quality_limits())
    job_id = store.start_processing_job(session_id, recipe_name, "preprocessing", reprocess=reprocess, run_id=run_id)
    relion_dir = relion_project_dir(processing, run_id, reprocess)
    watch = WatchSettings(session_id=session_id, watch_dir=str(watch_dir), movie_glob=config.movie_glob,
                          end_marker=config.end_marker, stable_for_s=stable_for_s,
                          idle_timeout_s=config.idle_timeout_s, max_movies=config.max_movies,
                          results_conn_id=conn_id, processing_path=str(processing), opened_at_s=time.time(),
                          processing_job_id=job_id)
    return {"session_id": session_id, "session_name": config.session_name, "processing_job_id": job_id,
            "watch_dir": str(watch_dir), "processing_path": str(processing), "relion_dir": str(relion_dir),
            "relion_dialect": relion_dialect, "experiment": experiment,
            "results_conn_id": conn_id, "watch": watch.model_dump()}


def _session_folders(config: SessionConfig, reprocess: bool, logical_date: dt.datetime | None,
                     sessions_root: str | None) -> list[tuple[Path, Path]]:
    """(watched folder, processing folder) of each session the run opens, resolved and under the roots.

    A dated reprocess takes every `<YYYYMMDD>_*` folder of its date, each with a processing folder of its
    own (inside it, or `<processing_dir>/<folder name>`), so same-named movies of two folders never meet.
    """
    if config.watch_dir or not reprocess:
        folder = check_under_roots(config.watch_dir, "watch_dir")
        if not folder.is_dir():
            raise ConfigError(f"watch_dir: {folder} is not an existing folder")
        default = folder / "processing" if reprocess else folder.parent / "processing"
        processing = Path(config.processing_dir) if config.processing_dir else default
        return [(folder, check_under_roots(processing, "processing_dir"))]
    if not sessions_root or logical_date is None:
        raise ConfigError("watch_dir: must be set when the recipe has no sessions_root")
    root = check_under_roots(sessions_root, "sessions_root")
    pairs = []
    for candidate in sorted(root.glob(_DATED_SESSION.format(date=logical_date))):
        folder = check_under_roots(candidate, "sessions_root")  # a link may lead anywhere
        if not folder.is_dir():
            continue
        processing = Path(config.processing_dir) / folder.name if config.processing_dir else folder / "processing"
        pairs.append((folder, check_under_roots(processing, "processing_dir")))
    return pairs


def open_session(params: dict[str, Any], recipe_name: str, run_id: str, reprocess: bool,
                 logical_date: dt.datetime | None, sessions_root: str | None,
                 stable_for_s: float = 2.0, relion_dialect: str = "relion5",
                 experiment: str = "spa") -> dict[str, Any]:
    """Validate the conf, check every path it names, register the session(s); ConfigError names the field.

    A live run has one session, its `watch_dir`. A reprocess run takes `watch_dir` when given, else
    every dated session folder of its logical date under the recipe's `sessions_root`. A session is its
    name and its (resolved) watched folder, so folders that share a name stay apart.
    """
    config = check_input_files(parse_session_config(dict(params)))
    sessions = []
    for folder, processing in _session_folders(config, reprocess, logical_date, sessions_root):
        folder_config = config.model_copy(update={"watch_dir": str(folder), "processing_dir": str(processing)})
        sessions.append(_open_one(folder_config, folder, processing, recipe_name, run_id, reprocess,
                                  stable_for_s, relion_dialect, experiment))
    return {"sessions": sessions, "run_id": run_id}


# What a task needs to know of its session to write results: the part of open_session's output it carries.
SESSION_KEYS = ("session_id", "session_name", "processing_job_id", "watch_dir", "processing_path", "relion_dir",
                "relion_dialect", "experiment", "results_conn_id")


def session_item(session: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A work item (a movie, a particle batch) with its session's keys."""
    return {**{key: session[key] for key in SESSION_KEYS}, **fields}


def reprocess_movies(opened: dict[str, Any]) -> dict[str, Any]:
    """All complete movies of the sessions being reprocessed (they are finished, nothing to wait for)."""
    movies = []
    for index, session in enumerate(opened["sessions"]):
        watch = WatchSettings.model_validate(session["watch"])
        scan = scan_session_folder(watch, stable_for_s=0.0)
        report_rejected(watch, results_store(watch.results_conn_id, watch.processing_path), scan.rejected,
                        opened["run_id"])
        movies += [{"session": index, "movie": m.relative_path} for m in scan.complete]
    return {"movies": movies, "session_over": True, "reason": "reprocessing a finished session"}


def plan_batches(opened: dict[str, Any], found: dict[str, Any], max_per_task: int,
                 parallel_tasks: int) -> list[list[dict[str, Any]]]:
    """Cut the run's movies into micro-batches; each batch becomes one mapped task instance per stage."""
    items = []
    for entry in found["movies"]:
        if isinstance(entry, str):  # live: movies of the one session
            items.append(session_item(opened["sessions"][0], movie=entry))
        else:
            items.append(session_item(opened["sessions"][entry["session"]], movie=entry["movie"]))
    return split_into_batches(items, max_per_task, parallel_tasks)


def _live_jobs(project: RelionProject, experiment: str) -> list[RelionJob]:
    """The streaming jobs a live session keeps open: preprocessing (per tilt and per series for tomography),
    the IceBreaker jobs and the particle Select jobs if made."""
    if experiment == "tomography":
        return [project.job(kind) for kind in TOMO_TILT_JOBS] + [
            job for kind in JOB_KINDS if kind.startswith(("exclude_tilts", "aligntiltseries_", "tomograms"))
            if (job := project.existing_job(kind)) is not None]
    jobs = [project.job(kind) for kind in SPA_PREPROCESSING]
    jobs += [job for kind in ICEBREAKER_JOBS if (job := project.existing_job(kind)) is not None]
    for kind, alias in (("select", BATCH_ALIAS), ("class_selection", SELECT_ALIAS)):
        if (project.root / "Select" / alias).exists():
            jobs.append(project.job(kind, alias=alias))
    return jobs


def close_batch(params: dict[str, Any], opened: dict[str, Any] | None,
                found: dict[str, Any] | None) -> dict[str, Any]:
    """Close this run's processing job, end the session when it is over, and report the session summary.

    Runs whatever happened upstream: with no session opened (bad conf) there is nothing to close; when
    finding movies failed, the run's job is closed as failed and the session stays open.
    """
    if opened is None:
        return {"session_over": False, "reason": "the session was not opened", "summaries": {}}
    config = parse_session_config(dict(params))
    summaries = {}
    for session in opened["sessions"]:
        store = results_store(session["results_conn_id"], session["processing_path"])
        if found is None:
            store.finish_processing_job(session["processing_job_id"], "failed", "waiting for movies failed")
            continue
        store.finish_processing_job(session["processing_job_id"], "success")
        if found["session_over"]:
            store.end_session(session["session_id"], found["reason"])
            project = relion_project(session["relion_dir"], OpticsGroup.from_session(config),
                                     session["relion_dialect"], session["experiment"])
            for job in _live_jobs(project, session["experiment"]):
                project.finish_job(job, success=True)
        summaries[session["watch_dir"]] = store.session_summary(session["session_id"]).model_dump(mode="json")
    if found is None:
        return {"session_over": False, "reason": "waiting for movies failed", "summaries": summaries}
    return {"session_over": found["session_over"], "reason": found["reason"], "summaries": summaries}
