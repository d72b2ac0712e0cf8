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
    project.reserve_jobs(icebreaker_jobs())                 # IceBreaker/jobNNN: grouping, then summary
    project.add_icebreaker_micrograph("icebreaker_micrographs", mic, grouped_mic, total_a, early_a, late_a)
    project.add_ice_thickness(grouped_mic, five_figures)     # five_figs_test.csv row
    job = project.job("class2d", alias="batch_50000")       # generic jobs: Select ... PostProcess
    job.add_input("Extract/job005/particles.star", NodeType.PARTICLES)
    job.add_output("run_it025_data.star", NodeType.PARTICLES)
    project.finish_job(job, success=True)

Tomography (Relion 5 only), tilt by tilt and series by series:
    project.reserve_jobs(tomo_preprocessing("aretomo"))     # Import ... AlignTiltSeries, Tomograms
    project.add_tilt_movie("TS_01", movie, frame_count, tilt_angle_deg, tilt_axis_deg, pre_exposure, defocus_um)
    project.add_motion_corrected_tilt("TS_01", movie, micrograph, total_a, early_a, late_a)
    project.add_tilt_ctf("TS_01", movie, ctf_result, ctf_image_path)
    project.select_tilts("TS_01", kept_movies)               # once the series is complete
    project.add_aligned_tilt_series("TS_01", [TiltAlignmentValues(...), ...])
    project.add_tomogram("TS_01", project.tomogram_path("TS_01"), binning, volume_size_px)

Concurrency and retries: each add_* replaces the rows of its micrograph (a retried task never
duplicates a row), under an flock on `.relion_lock_cryoem`; the pipeline is rewritten atomically
while also holding Relion's `.relion_lock`. `dialect` picks Relion 3.1 (integer types and statuses)
or Relion 5 (type and status labels, node label depth) for default_pipeline.star and job.star.
"""
from .job_types import JOB_KINDS, Dialect, JobKind, JobStatus, NodeType
from .models import CtfValues, OpticsGroup
from .pipeline import Pipeline, read_pipeline
from .project import (
    ALIGNER_KINDS,
    ICEBREAKER_JOBS,
    SPA_PREPROCESSING,
    TOMO_TILT_JOBS,
    RelionJob,
    RelionProject,
    icebreaker_jobs,
    tomo_preprocessing,
)
from .tomo_files import TiltAlignmentValues

__all__ = ["ALIGNER_KINDS", "ICEBREAKER_JOBS", "JOB_KINDS", "SPA_PREPROCESSING", "CtfValues", "Dialect", "JobKind",
           "JobStatus", "NodeType", "OpticsGroup", "Pipeline", "RelionJob", "RelionProject", "TiltAlignmentValues",
           "TOMO_TILT_JOBS", "icebreaker_jobs", "read_pipeline", "tomo_preprocessing"]
