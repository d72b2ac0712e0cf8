"""Results tables shaped after ISPyB's cryo-EM tables (SQLAlchemy Core).

Column names are ISPyB's in snake_case (`totalMotion` -> `total_motion`), with the project's unit suffix
added where the value has a unit (`total_motion_a`, `defocus_u_a`), so a column and the engine result key
it stores read the same. Per-movie result rows point at their `movie` and `processing_job` rather than at
the previous stage's row (ISPyB chains CTF -> MotionCorrection), so a stage never waits for another
stage's row to exist: cryoem-services needed a buffer table and retries for exactly that.

Every result table has a unique natural key, the conflict target of the store's upserts.
"""
from __future__ import annotations

import hashlib

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

PATH = String(4096)


def _id(name: str) -> Column:
    return Column(name, Integer, primary_key=True, autoincrement=True)


def _fk(name: str, target: str) -> Column:
    return Column(name, Integer, ForeignKey(target, ondelete="CASCADE"), nullable=False, index=True)


def session_key(name: str, image_directory: str) -> str:
    """A session's identity: a digest of its name and watched folder (a fixed-size unique key for any path)."""
    return hashlib.sha256(f"{name}\n{image_directory}".encode()).hexdigest()


schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

# ISPyB DataCollection: one microscope session (SPA or tomography). A session is its name AND its watched
# folder (`session_key`, see session_key()): two sessions that reuse a name never share rows.
session = Table(
    "session", metadata,
    _id("session_id"),
    Column("session_key", String(64), nullable=False, unique=True),
    Column("name", String(255), nullable=False),
    Column("image_directory", PATH, nullable=False),  # the watched directory
    Column("processing_directory", PATH, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True)),  # set when a live session ended by itself
    Column("end_reason", Text),
    Column("quality_limits", Text),  # JSON: config.QUALITY_LIMIT_FIELDS of the newest run (migration 6)
    Column("stop_requested_at", DateTime(timezone=True)),  # someone asked the live session to end (migration 8)
    Column("stop_requested_by", Text),  # who asked (the dashboard's logged-in Airflow user)
)

# ISPyB ProcessingJob + AutoProcProgram: one stage of one DAG run; a reprocess run gets new rows.
processing_job = Table(
    "processing_job", metadata,
    _id("processing_job_id"),
    _fk("session_id", "session.session_id"),
    Column("run_id", String(255), nullable=False),
    Column("recipe", String(255), nullable=False),
    Column("stage", String(64), nullable=False),
    Column("reprocess", Boolean, nullable=False),
    Column("processing_status", String(16), nullable=False),  # running | success | failed
    Column("processing_message", Text),
    Column("processing_command_line", Text),
    Column("log_full_path", PATH),
    Column("processing_start_time", DateTime(timezone=True), nullable=False),
    Column("processing_end_time", DateTime(timezone=True)),
    UniqueConstraint("session_id", "run_id", "stage"),
)

# Live ingest: which files of the watched directory a run has taken; the unique key makes a claim once-only.
session_file = Table(
    "session_file", metadata,
    _id("session_file_id"),
    _fk("session_id", "session.session_id"),
    Column("relative_path", PATH, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Column("claimed_by", String(512), nullable=False),
    UniqueConstraint("session_id", "relative_path"),
)

movie = Table(
    "movie", metadata,
    _id("movie_id"),
    _fk("session_id", "session.session_id"),
    Column("movie_number", Integer, nullable=False),
    Column("movie_full_path", PATH, nullable=False),
    Column("created_time_stamp", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),  # registered | failed
    Column("failure_reason", Text),
    UniqueConstraint("session_id", "movie_full_path"),
    UniqueConstraint("session_id", "movie_number"),
)

# Per-movie failures of one stage of one job (a corrupt movie is recorded, the session goes on).
processing_failure = Table(
    "processing_failure", metadata,
    _id("processing_failure_id"),
    _fk("processing_job_id", "processing_job.processing_job_id"),
    _fk("movie_id", "movie.movie_id"),
    Column("stage", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("recorded", DateTime(timezone=True), nullable=False),
    UniqueConstraint("processing_job_id", "movie_id", "stage"),
)

motion_correction = Table(
    "motion_correction", metadata,
    _id("motion_correction_id"),
    _fk("processing_job_id", "processing_job.processing_job_id"),
    _fk("movie_id", "movie.movie_id"),
    Column("first_frame", Integer, nullable=False),
    Column("last_frame", Integer, nullable=False),
    Column("dose_per_frame_e_a2", Float),
    Column("total_motion_a", Float, nullable=False),
    Column("early_motion_a", Float, nullable=False),
    Column("late_motion_a", Float, nullable=False),
    Column("average_motion_per_frame_a", Float, nullable=False),
    Column("micrograph_full_path", PATH, nullable=False),
    Column("drift_plot_full_path", PATH),
    Column("micrograph_snapshot_full_path", PATH),
    Column("patches_used_x", Integer),
    Column("patches_used_y", Integer),
    UniqueConstraint("processing_job_id", "movie_id"),
)

ctf = Table(
    "ctf", metadata,
    _id("ctf_id"),
    _fk("processing_job_id", "processing_job.processing_job_id"),
    _fk("movie_id", "movie.movie_id"),
    Column("defocus_u_a", Float, nullable=False),
    Column("defocus_v_a", Float, nullable=False),
    Column("astigmatism_angle_deg", Float, nullable=False),
    Column("astigmatism_a", Float, nullable=False),
    Column("estimated_resolution_a", Float, nullable=False),  # the fit resolution
    Column("cc_value", Float),
    Column("amplitude_contrast", Float),
    Column("ice_ring_density", Float),
    Column("fft_theoretical_full_path", PATH),  # the diagnostic image
    UniqueConstraint("processing_job_id", "movie_id"),
)

particle_picker = Table(
    "particle_picker", metadata,
    _id("particle_picker_id"),
    _fk("processing_job_id", "processing_job.processing_job_id"),
    _fk("movie_id", "movie.movie_id"),
    Column("number_of_particles", Integer, nullable=False),
    Column("particle_diameter_a", Float),
    Column("particle_picking_template", String(1024)),
    Column("summary_image_full_path", PATH),
    Column("coordinates_full_path", PATH),
    UniqueConstraint("processing_job_id", "movie_id"),
)

relative_ice_thickness = Table(
    "relative_ice_thickness", metadata,
    _id("relative_ice_thickness_id"),
    _fk("processing_job_id", "processing_job.processing_job_id"),
    _fk("movie_id", "movie.movie_id"),
    Column("minimum", Float, nullable=False),
    Column("q1", Float, nullable=False),
    Column("median", Float, nullable=False),
    Column("q3", Float, nullable=False),
    Column("maximum", Float, nullable=False),
    UniqueConstraint("processing_job_id", "movie_id"),
)

particle_classification_group = Table(
    "particle_classification_group", metadata,
    _id("particle_classification_group_id"),
    _fk("processing_job_id", "processing_job.processing_job_id"),
    Column("type", String(8), nullable=False),  # 2D | 3D
    Column("batch_number", Integer, nullable=False),
    Column("number_of_particles_per_batch", Integer, nullable=False),
    Column("number_of_classes_per_batch", Integer, nullable=False),
    Column("symmetry", String(16), nullable=False),
    Column("binned_pixel_size_a", Float),
    UniqueConstraint("processing_job_id", "type", "batch_number"),
)

particle_classification = Table(
    "particle_classification", metadata,
    _id("particle_classification_id"),
    _fk("particle_classification_group_id", "particle_classification_group.particle_classification_group_id"),
    Column("class_number", Integer, nullable=False),
    Column("class_image_full_path", PATH),
    Column("particles_per_class", Integer, nullable=False),
    Column("class_distribution", Float, nullable=False),
    Column("rotation_accuracy_deg", Float),
    Column("translation_accuracy_a", Float),
    Column("estimated_resolution_a", Float),
    Column("overall_fourier_completeness", Float),
    Column("selected", Boolean, nullable=False),
    Column("selection_score", Float),  # automatic class selection's score, 0-1 (migration 6)
    UniqueConstraint("particle_classification_group_id", "class_number"),
)

# ISPyB CryoemInitialModel; one initial model per 3D classification batch.
cryoem_initial_model = Table(
    "cryoem_initial_model", metadata,
    _id("cryoem_initial_model_id"),
    _fk("particle_classification_group_id", "particle_classification_group.particle_classification_group_id"),
    Column("resolution_a", Float, nullable=False),
    Column("number_of_particles", Integer, nullable=False),
    UniqueConstraint("particle_classification_group_id"),
)

# ISPyB keeps refinements as a "Refine" classification group; a table of its own is plainer to query.
refinement = Table(
    "refinement", metadata,
    _id("refinement_id"),
    _fk("processing_job_id", "processing_job.processing_job_id"),
    Column("symmetry", String(16), nullable=False),
    Column("class_number", Integer),
    Column("estimated_resolution_a", Float, nullable=False),
    Column("b_factor_a2", Float),
    Column("number_of_particles", Integer, nullable=False),
    Column("map_full_path", PATH),
    Column("pixel_size_a", Float),  # of the refined particles and map (migration 4)
    UniqueConstraint("processing_job_id", "symmetry"),
)

# One point of the B-factor (Rosenthal-Henderson) plot: resolution reached with a particle subset.
bfactor_fit = Table(
    "bfactor_fit", metadata,
    _id("bfactor_fit_id"),
    _fk("processing_job_id", "processing_job.processing_job_id"),
    Column("number_of_particles", Integer, nullable=False),
    Column("resolution_a", Float, nullable=False),
    Column("particle_batch_size", Integer),
    Column("pixel_size_a", Float),  # of the particles refined for this point (migration 4)
    UniqueConstraint("processing_job_id", "number_of_particles"),
)

# --- Tomography (migration 3) -------------------------------------------------------------------------
# ISPyB keeps a tilt series as a DataCollection whose tilts are Movies; here the session stays the
# DataCollection and `tilt_series` groups its movies. Per-tilt motion correction and CTF stay in the
# motion_correction / ctf tables (keyed by movie); `tilt` says which series a movie belongs to.

# One tilt series of a session, named as its mdoc / movies name it (TS_01, Position_1_2). It is collected
# until one run flips `status` to complete (store.complete_tilt_series): the series is aligned once.
tilt_series = Table(
    "tilt_series", metadata,
    _id("tilt_series_id"),
    _fk("session_id", "session.session_id"),
    Column("name", String(255), nullable=False),
    Column("mdoc_full_path", PATH),
    Column("tilt_axis_nominal_deg", Float),  # from the mdoc: CCW from the image y axis
    Column("expected_tilts", Integer),  # None: not known in advance
    Column("status", String(16), nullable=False),  # collecting | complete
    Column("completed_reason", Text),
    Column("completed_at", DateTime(timezone=True)),
    Column("completed_by_run_id", String(250)),  # the DAG run that completed it: only its retries take it again
    Column("created", DateTime(timezone=True), nullable=False),
    UniqueConstraint("session_id", "name"),
)

# A movie's place in its tilt series (the mdoc section it was collected as).
tilt = Table(
    "tilt", metadata,
    _id("tilt_id"),
    _fk("tilt_series_id", "tilt_series.tilt_series_id"),
    Column("movie_id", Integer, ForeignKey("movie.movie_id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("z_value", Integer, nullable=False),  # mdoc [ZValue = N]
    Column("tilt_angle_deg", Float, nullable=False),  # nominal stage tilt
    Column("acquisition_order", Integer, nullable=False),  # 1, 2, ... in collection order
    Column("pre_exposure_e_a2", Float),  # dose accumulated before this tilt (Relion rlnMicrographPreExposure)
    Column("excluded", Boolean, nullable=False),
    Column("exclusion_reason", Text),
    Column("late", Boolean, nullable=False),  # arrived after its series was complete: not in its tomogram
)

# ISPyB Tomogram: one reconstruction of a tilt series by one processing job.
tomogram = Table(
    "tomogram", metadata,
    _id("tomogram_id"),
    _fk("processing_job_id", "processing_job.processing_job_id"),
    _fk("tilt_series_id", "tilt_series.tilt_series_id"),
    Column("volume_file", PATH, nullable=False),
    Column("stack_file", PATH),  # the aligned tilt stack
    Column("size_x_px", Integer),
    Column("size_y_px", Integer),
    Column("size_z_px", Integer),
    Column("pixel_size_a", Float, nullable=False),  # ISPyB pixelSpacing: of the volume (binned)
    Column("tilt_axis_deg", Float),  # refined
    Column("tilt_angle_offset_deg", Float),
    Column("residual_error_mean_px", Float),
    Column("residual_error_sd_px", Float),
    Column("central_slice_image", PATH),
    Column("projection_xy_image", PATH),
    Column("projection_xz_image", PATH),
    Column("tilt_series_movie", PATH),  # ISPyB tomogramMovie: animation through the tilts / slices
    Column("alignment_plot", PATH),  # ISPyB xyShiftPlot
    UniqueConstraint("processing_job_id", "tilt_series_id"),
)

# ISPyB ProcessedTomogram: a volume made from one tomogram (processingType "Denoised", "Segmented"), with the
# pictures a person checks it by (not ISPyB columns: ISPyB keeps those as program attachments).
processed_tomogram = Table(
    "processed_tomogram", metadata,
    _id("processed_tomogram_id"),
    _fk("tomogram_id", "tomogram.tomogram_id"),
    Column("processing_type", String(32), nullable=False),  # ISPyB processingType: Denoised, Segmented
    Column("file_path", PATH, nullable=False),  # ISPyB filePath
    Column("central_slice_image", PATH),  # denoised: raw | denoised; segmented: mask over the denoised slice
    Column("projection_xy_image", PATH),  # segmented: the membrane mask projected along z
    UniqueConstraint("tomogram_id", "processing_type"),
)

# ISPyB TiltImageAlignment: where one tilt sits in one tomogram's alignment.
tilt_image_alignment = Table(
    "tilt_image_alignment", metadata,
    _id("tilt_image_alignment_id"),
    _fk("tomogram_id", "tomogram.tomogram_id"),
    _fk("movie_id", "movie.movie_id"),
    Column("refined_tilt_angle_deg", Float),  # None for a tilt left out of the alignment
    Column("refined_tilt_axis_deg", Float),
    Column("shift_x_px", Float),
    Column("shift_y_px", Float),
    Column("residual_error_px", Float),
    Column("excluded", Boolean, nullable=False),
    Column("exclusion_reason", Text),
    UniqueConstraint("tomogram_id", "movie_id"),
)
