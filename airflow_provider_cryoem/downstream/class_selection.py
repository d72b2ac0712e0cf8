"""Select the good 2D classes of a batch and gather their particles for 3D (`particles_all.star`).

Scoring is engines/class_selection.py. Each batch's kept particles go to
`Select/jobNNN/selected_<Class2D job>.star` (alias `Live_best_particles`), and `particles_all.star`
is rebuilt from all of them under an flock, so a retried selection replaces its batch's particles
instead of adding them twice. Where `relion_class_ranker` (Relion 4+) is installed,
`class_ranker_command` builds its command line as cryoem-services runs it.
"""
from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from ..engines.class_selection import ClassScore, ClassSelectionSettings, score_classes
from ..execution import CommandSpec
from ..io import read_mrc, read_star
from ..io.star import write_star
from ..relion_project import NodeType, RelionProject
from ..results.store import ResultsStore
from .class2d import Class2DResult

SELECT_ALIAS = "Live_best_particles"
ALL_PARTICLES = "particles_all.star"
# relion_class_ranker's outputs, which doppio reads for a class selection job
RANK_MODEL = "rank_model.star"
CLASS_AVERAGES = "class_averages.star"
RANKER_PARTICLES = "particles.star"


class ClassSelectionResult(BaseModel):
    class2d_job: str
    scores: list[ClassScore]
    selected_classes: list[int]
    selected_particles: int
    batch_star: str
    all_particles_star: str
    total_selected_particles: int


def select_classes(project: RelionProject, class2d: Class2DResult,
                   settings: ClassSelectionSettings) -> ClassSelectionResult:
    """Score the batch's classes, write its selected particles and the combined particles_all.star."""
    averages = np.asarray(read_mrc(project.absolute(class2d.classes_stack), mmap=False), dtype=np.float32)
    averages = averages.reshape(-1, *averages.shape[-2:])  # a one-class stack reads as a single image
    classes = class2d.classes
    scores = score_classes(averages, [c.particles_per_class for c in classes],
                           [c.class_distribution for c in classes], [c.estimated_resolution_a for c in classes],
                           settings)
    chosen = [s.class_number for s in scores if s.selected]
    data = read_star(project.absolute(class2d.data_star))
    particles = data["particles"]
    kept = particles[particles["rlnClassNumber"].astype(int).isin(chosen)]
    job = project.job("class_selection", alias=SELECT_ALIAS)
    batch_name = class2d.job_dir.replace('/', '_')
    batch_star = job.path / f"selected_{batch_name}.star"
    write_star(batch_star, {"optics": data["optics"], "particles": kept})
    write_star(job.path / f"scores_{batch_name}.star", {"model_classes": _score_table(project, class2d, scores)})
    total = _combine(job.path)
    job.set_options({"rank_threshold": settings.min_score})
    job.add_input(class2d.optimiser_star, NodeType.OPTIMISER)
    job.add_input(class2d.data_star, NodeType.PARTICLES)
    job.add_output(ALL_PARTICLES, NodeType.PARTICLES)
    job.add_output(CLASS_AVERAGES, NodeType.CLASS_AVERAGES)
    return ClassSelectionResult(class2d_job=class2d.job_dir, scores=scores, selected_classes=chosen,
                                selected_particles=len(kept), batch_star=project.relative(batch_star),
                                all_particles_star=project.relative(job.path / ALL_PARTICLES),
                                total_selected_particles=total)


def record_selection(store: ResultsStore, classification_group_id: int, result: ClassSelectionResult) -> None:
    store.record_class_selection(classification_group_id, result.selected_classes,
                                 {score.class_number: score.score for score in result.scores})


def class3d_due(total_selected: int, previous_run_sizes: list[int], class3d_batch_size: int,
                class3d_max_size: int = 200_000) -> int | None:
    """Particles to send to 3D now, or None (cryoem-services: first above class3d_batch_size, then at
    each doubling of it, capped at class3d_max_size)."""
    if total_selected < class3d_batch_size:
        return None
    size = class3d_batch_size
    while size * 2 <= total_selected:
        size *= 2
    size = min(size, class3d_max_size)
    return None if size in previous_run_sizes else size


def class_ranker_command(project_dir: str, optimiser_star: str, job_dir: str, min_score: float | None,
                         min_particles: int = 500) -> CommandSpec | None:
    """relion_class_ranker as cryoem-services runs it, or None where it is not installed (Relion 3.1)."""
    if shutil.which("relion_class_ranker") is None:
        return None
    job = job_dir.rstrip("/") + "/"
    return CommandSpec(program="relion_class_ranker", cwd=project_dir, args=[
        "--opt", optimiser_star, "--o", job, "--auto_select", "--fn_root", "rank", "--do_granularity_features",
        "--fn_sel_parts", "particles.star", "--fn_sel_classavgs", "class_averages.star", "--python", "python",
        "--select_min_nr_particles", str(min_particles), "--pipeline_control", job,
        "--min_score", f"{min_score if min_score is not None else 0.0:g}"])


def _score_table(project: RelionProject, class2d: Class2DResult, scores: list[ClassScore]) -> pd.DataFrame:
    """The batch's classes as relion_class_ranker lists them in rank_model.star (image, score), and whether
    each was selected."""
    by_number = {score.class_number: score for score in scores}
    rows = []
    for row in class2d.classes:
        index, _, stack = row.image.rpartition("@")
        score = by_number[row.class_number]
        rows.append({"rlnReferenceImage": f"{index}@{project.relative(stack)}", "rlnClassScore": score.score,
                     "rlnSelected": int(score.selected)})
    return pd.DataFrame(rows, columns=["rlnReferenceImage", "rlnClassScore", "rlnSelected"])


def _combine(job_path: Path) -> int:
    """Rebuild particles_all.star from every batch's selection (one writer at a time), and the class lists
    CCP-EM doppio shows for a class selection as relion_class_ranker names them: rank_model.star (every
    class and its score), class_averages.star (the selected ones), particles.star (= particles_all.star)."""
    with open(job_path / ".particles_all.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            parts = [read_star(path) for path in sorted(job_path.glob("selected_*.star"))]
            tables = [p["particles"] for p in parts if len(p.get("particles", ()))]
            combined = pd.concat(tables, ignore_index=True) if tables else parts[0]["particles"].iloc[:0]
            write_star(job_path / ALL_PARTICLES, {"optics": parts[0]["optics"], "particles": combined})
            classes = pd.concat([read_star(path)["model_classes"] for path in sorted(job_path.glob("scores_*.star"))],
                                ignore_index=True)
            write_star(job_path / RANK_MODEL, {"model_classes": classes[["rlnReferenceImage", "rlnClassScore"]]})
            selected = classes[classes["rlnSelected"].astype(int) == 1]
            write_star(job_path / CLASS_AVERAGES, {"": selected[["rlnReferenceImage", "rlnClassScore"]]})
            link = job_path / RANKER_PARTICLES
            if not link.is_symlink():
                link.symlink_to(ALL_PARTICLES)
            return len(combined)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
