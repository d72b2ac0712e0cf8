"""What doppio shows for a Relion project: ccpem-pipeliner's project graph and each job's results display,
read as doppio reads them (shared by the SPA and tomography project tests)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pipeliner.job_factory import create_job_from_proc
from pipeliner.project_graph import ProjectGraph
from pipeliner.results_display_objects import ResultsDisplayPending


def processes(root: Path) -> list:
    with ProjectGraph(pipeline_dir=root, read_only=True) as graph:
        return list(graph.process_list)


def display_problems(root: Path, monkeypatch: pytest.MonkeyPatch, only: set[str] | None = None,
                     accepted: Callable[[str, str], bool] = lambda job, reason: False) -> dict[str, list[str]]:
    """{process: why its display is pending or cannot be made} for every process (or those in `only`);
    empty when doppio shows every job. `accepted(job, reason)` lets a caller allow a pending display that is
    right for that job."""
    monkeypatch.chdir(root)
    problems = {}
    for process in processes(root):
        if only is not None and process.name not in only:
            continue
        try:
            displays = create_job_from_proc(process).save_results_display_files()
        except Exception as exc:  # noqa: BLE001 - what doppio would show as a broken job
            problems[process.name] = [f"{type(exc).__name__}: {exc}"]
            continue
        pending = [f"{d.message}: {d.reason}" for d in displays if isinstance(d, ResultsDisplayPending)
                   and not accepted(process.name, d.reason)]
        if pending or not displays:
            problems[process.name] = pending or ["no results display"]
    return problems
