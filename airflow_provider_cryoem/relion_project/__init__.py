"""Relion project output: job folders, aggregate STAR files and default_pipeline.star, written live.

Every stage writes into one Relion project as it finishes, so the session can be opened in Relion
(3.1 or 5) or CCP-EM doppio while it runs. Layout follows cryoem-services: Import/job001,
MotionCorr/job002, CtfFind/job003, AutoPick/job004, Extract/job005 in a new project (jobs are
appended after existing ones in an old project), each with job.star, note.txt, a `Live_<name>`
alias link, RELION_JOB_EXIT_SUCCESS/FAILURE when finished.

Use:
    project = RelionProject(root, dialect="relion5", optics=OpticsGroup.from_session(config))
    project.reserve_jobs()                                   # positional numbering, once per session
    project.add_movie(movie_path)
    mic = project.job("motioncorr").file_for(movie_path, ".mrc")   # where the micrograph goes
    project.add_motion_corrected(mic, total_motion_a, early_motion_a, late_motion_a)
    project.add_ctf(mic, ctf_result, ctf_image_path)        # any object with CtfValues' fields
    project.add_picks(mic, coordinates_px)                   # writes <mic>_autopick.star + autopick.star row
    project.add_particles(mic, stack_path, coordinates_px, ctf_result)
    job = project.job("class2d", alias="batch_50000")       # generic jobs: Select ... PostProcess
    job.add_input("Extract/job005/particles.star", NodeType.PARTICLES)
    job.add_output("run_it025_data.star", NodeType.PARTICLES)
    project.finish_job(job, success=True)

Concurrency and retries: each add_* replaces the rows of its micrograph (a retried task never
duplicates a row), under an flock on `.relion_lock_cryoem`; the pipeline is rewritten atomically
while also holding Relion's `.relion_lock`. `dialect` picks Relion 3.1 (integer types and statuses)
or Relion 5 (type and status labels, node label depth) for default_pipeline.star and job.star.
"""
from .job_types import JOB_KINDS, Dialect, JobKind, JobStatus, NodeType
from .models import CtfValues, OpticsGroup
from .pipeline import Pipeline, read_pipeline
from .project import SPA_PREPROCESSING, RelionJob, RelionProject

__all__ = ["JOB_KINDS", "SPA_PREPROCESSING", "CtfValues", "Dialect", "JobKind", "JobStatus", "NodeType",
           "OpticsGroup", "Pipeline", "RelionJob", "RelionProject", "read_pipeline"]
