"""Where a session's results go: the results store and the Relion project, one of each per process."""
from __future__ import annotations

import functools

from ..hooks.results import ResultsHook
from ..relion_project import SPA_PREPROCESSING, TOMO_TILT_JOBS, Dialect, OpticsGroup, RelionProject
from ..results import ResultsStore


@functools.lru_cache(maxsize=32)
def results_store(results_conn_id: str | None, processing_path: str) -> ResultsStore:
    """One store (engine and connection pool) per database for the life of the process."""
    return ResultsHook(results_conn_id, processing_path).get_store()


@functools.lru_cache(maxsize=32)
def relion_project(relion_dir: str, optics: OpticsGroup, dialect: Dialect, experiment: str = "spa") -> RelionProject:
    """The session's Relion project, its per-movie (per-tilt) jobs numbered positionally on first use."""
    project = RelionProject(relion_dir, dialect=dialect, optics=optics)
    project.reserve_jobs(TOMO_TILT_JOBS if experiment == "tomography" else SPA_PREPROCESSING)
    return project
