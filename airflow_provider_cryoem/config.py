"""The session configuration: one validated pydantic model that is also the DAG's trigger form.

Fields are flat (one JSON key each) so `airflow dags trigger spa_live --conf '{"pixel_size_a": 0.83}'`
reads naturally; each field carries a `section` so the UI form groups them. Values that follow
from others (box sizes, mask diameter) are computed, not asked, unless the user sets them.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    computed_field,
    field_validator,
    model_validator,
)

from .ingest import file_name_problem, glob_problem, name_problem

MICROSCOPE = "Microscope"
ACQUISITION = "Acquisition"
SPA = "Single particle analysis"
TOMOGRAPHY = "Tomography"
PATHS = "Paths"
SESSION = "Session"
QUALITY = "Quality limits"

# Conf fields naming files or folders: each must lie under CRYOEM_DATA_ROOTS (checked when a session opens).
PATH_FIELDS = ("watch_dir", "processing_dir", "gain_reference_path", "defect_file_path", "initial_model_path",
               "membrain_checkpoint_path")
# Of those, the files that must exist when the session opens (a missing one would fail every movie).
INPUT_FILE_FIELDS = ("gain_reference_path", "defect_file_path", "initial_model_path")

# The session's per-movie quality limits: recorded with the session (results `session.quality_limits`) and drawn
# on the dashboard's plots; movies beyond them are counted there, not dropped by the pipeline.
QUALITY_LIMIT_FIELDS = ("max_total_motion_a", "min_defocus_a", "max_defocus_a", "max_astigmatism_a",
                        "max_ctf_fit_resolution_a", "min_relative_ice_thickness", "max_relative_ice_thickness",
                        "min_particles_per_micrograph")

# Relion/cryoem-services candidate sizes for the downscaled particle box.
_SMALL_BOX_CANDIDATES_PX = (64, 96, 128, 160, 192, 256, 288, 300, 320, 360, 384, 400, 420, 450, 480, 512,
                            640, 768, 896, 1024)
# Downscale until Nyquist is better than 7.5 Å, i.e. the downscaled pixel is below 3.75 Å.
_MAX_DOWNSCALED_PIXEL_A = 3.75


def _field(default: Any, description: str, section: str, **bounds: Any) -> Any:
    return Field(default, description=description, json_schema_extra={"section": section}, **bounds)


class SessionConfig(BaseModel):
    """Everything a live or reprocessing session needs to know about the data and how to treat it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Session
    session_name: str = _field("demo", "Name of the session (visit), used in results and folder names.", SESSION,
                               min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    max_movies: int = _field(0, "Stop the session after this many movies (0 = no limit).", SESSION,
                             ge=0, le=1_000_000)
    idle_timeout_s: float = _field(600.0, "End the session when no new movie arrived for this long.", SESSION,
                                   gt=0, le=7 * 24 * 3600)
    end_marker: str = _field("END_OF_SESSION", "A file of this name in the watched folder ends the session.",
                             SESSION, min_length=1, max_length=255)
    ispyb_data_collection_id: int | None = _field(
        None, "ISPyB data collection the results attach to (an ISPyB results connection only); empty: the one "
              "whose image directory is the watched folder.", SESSION, ge=1, le=2**31 - 1)

    # Microscope
    voltage_kv: float = _field(300.0, "Accelerating voltage (kV).", MICROSCOPE, ge=60, le=400)
    cs_mm: float = _field(2.7, "Spherical aberration (mm).", MICROSCOPE, ge=0, le=10)
    amplitude_contrast: float = _field(0.1, "Amplitude contrast fraction.", MICROSCOPE, ge=0, le=0.5)

    # Acquisition
    pixel_size_a: float = _field(1.0, "Pixel size of the movies (Å/pixel).", ACQUISITION, gt=0.1, le=20)
    dose_per_frame_e_a2: float = _field(1.0, "Electron dose per frame (e⁻/Å²).", ACQUISITION, gt=0, le=20)
    frame_count: int | None = _field(None, "Frames per movie; read from the movie when not given.", ACQUISITION,
                                     ge=1, le=10_000)
    gain_reference_path: str | None = _field(None, "Gain reference (MRC) multiplied into every frame.",
                                             ACQUISITION, max_length=4096)
    gain_rotation: Literal[0, 1, 2, 3] = _field(0, "Rotate the gain reference by this many 90° turns "
                                                   "counter-clockwise (MotionCor2 -RotGain).", ACQUISITION)
    gain_flip: Literal[0, 1, 2] = _field(0, "Flip the gain after rotating: 0 none, 1 upside down, 2 left-right "
                                            "(MotionCor2 -FlipGain).", ACQUISITION)
    defect_file_path: str | None = _field(None, "Defect map (MRC, non-zero = bad pixel) or defect list text file.",
                                          ACQUISITION, max_length=4096)
    eer_grouping: int = _field(20, "EER frames summed into one fraction.", ACQUISITION, ge=1, le=1000)
    movie_glob: str = _field("*.tiff", "Glob of movie files inside the watched folder (e.g. '*.tiff', '*.mrc').",
                             ACQUISITION, min_length=1, max_length=255)
    super_resolution: bool = _field(False, "Movies are super-resolution: bin by 2 in motion correction.",
                                    ACQUISITION)

    # SPA
    particle_diameter_a: float = _field(120.0, "Longest particle diameter (Å).", SPA, gt=10, le=2000)
    box_size_px: int | None = _field(None, "Extraction box (px); default even ceil(1.2·diameter/pixel).", SPA,
                                     ge=16, le=2048)
    downscaled_box_size_px: int | None = _field(None, "Box after downscaling (px); default the smallest size "
                                                      "with a pixel below 3.75 Å.", SPA, ge=16, le=2048)
    class2d_batch_size: int = _field(50_000, "Particles per 2D classification batch.", SPA, ge=10,
                                     le=10_000_000)
    class2d_first_batch_size: int = _field(10_000, "Particles in the earlier first 2D batch, so classes show "
                                                   "up soon.", SPA, ge=10, le=10_000_000)
    class3d_batch_size: int = _field(25_000, "Selected particles before the first 3D classification.", SPA,
                                     ge=10, le=10_000_000)
    class2d_classes: int = _field(50, "Number of 2D classes.", SPA, ge=1, le=500)
    class3d_classes: int = _field(4, "Number of 3D classes.", SPA, ge=1, le=50)
    class_selection_min_score: float = _field(0.7, "Minimum 2D class score to select a class (0-1).", SPA,
                                              ge=0, le=1)
    symmetry: str = _field("C1", "Point-group symmetry for 3D.", SPA, pattern=r"^(C\d+|D\d+|T|O|I\d?)$")
    initial_model_path: str | None = _field(None, "Starting map for 3D (MRC with the particles' downscaled box "
                                                  "and pixel); default: made from the particles by Relion SGD.",
                                            SPA, max_length=4096)

    # Tomography
    tilt_axis_deg: float = _field(85.0, "Tilt axis angle from the y axis (degrees).", TOMOGRAPHY, ge=-180, le=180)
    tilt_step_deg: float = _field(3.0, "Nominal tilt increment (degrees).", TOMOGRAPHY, gt=0, le=30)
    thickness_nm: float = _field(150.0, "Expected sample thickness (nm) for reconstruction depth.", TOMOGRAPHY,
                                 gt=0, le=2000)
    tomogram_binning: int = _field(4, "Binning of the reconstructed tomogram.", TOMOGRAPHY, ge=1, le=32)
    dose_per_tilt_e_a2: float | None = _field(None, "Electron dose per tilt (e⁻/Å²); default: dose per frame × "
                                                    "the tilt movie's frames.", TOMOGRAPHY, gt=0, le=100)
    tilt_range_deg: float = _field(60.0, "Tilts go from −this to +this: a series whose mdoc reaches both ends "
                                         "is complete at once (else when idle).", TOMOGRAPHY, gt=0, le=90)
    tilt_series_idle_s: float = _field(300.0, "A tilt series with no new tilt for this long is complete, even "
                                              "if its mdoc lists more.", TOMOGRAPHY, gt=0, le=7 * 24 * 3600)
    membrain_checkpoint_path: str | None = _field(None, "membrain-seg model (.ckpt) for the segment stage; "
                                                        "default: the recipe's stages.segment.params."
                                                        "checkpoint_path.", TOMOGRAPHY, max_length=4096)

    # Quality limits (drawn on the dashboard; nothing is dropped by them)
    max_total_motion_a: float | None = _field(40.0, "Most total motion (drift) a good movie has (Å); empty: no "
                                                    "limit.", QUALITY, gt=0, le=10_000)
    min_defocus_a: float | None = _field(5000.0, "Lower end of the wanted defocus range (Å, underfocus "
                                                 "positive); empty: no limit.", QUALITY, ge=0, le=200_000)
    max_defocus_a: float | None = _field(35000.0, "Upper end of the wanted defocus range (Å); empty: no limit.",
                                         QUALITY, gt=0, le=200_000)
    max_astigmatism_a: float | None = _field(1000.0, "Most astigmatism (defocus U − V) a good movie has (Å); "
                                                     "empty: no limit.", QUALITY, gt=0, le=100_000)
    max_ctf_fit_resolution_a: float | None = _field(6.0, "Worst CTF fit resolution a good movie has (Å); empty: "
                                                         "no limit.", QUALITY, gt=0, le=100)
    min_relative_ice_thickness: float | None = _field(None, "Thinnest relative ice wanted (IceBreaker's median, "
                                                            "no unit); empty: no limit.", QUALITY, ge=0, le=1000)
    max_relative_ice_thickness: float | None = _field(None, "Thickest relative ice wanted (IceBreaker's median, "
                                                            "no unit); empty: no limit.", QUALITY, gt=0, le=1000)
    min_particles_per_micrograph: int = _field(0, "Fewest picks a good micrograph has (0: no limit).", QUALITY,
                                               ge=0, le=100_000)

    # Paths
    watch_dir: str = _field("", "Folder the microscope writes movies into (must be under an allowed root).",
                            PATHS, max_length=4096)
    processing_dir: str = _field("", "Folder for the Relion project and results; default "
                                     "<watch_dir>/../processing.", PATHS, max_length=4096)

    @field_validator("movie_glob", "end_marker")
    @classmethod
    def _inside_watched_folder(cls, value: str, info: ValidationInfo) -> str:
        problem = (glob_problem if info.field_name == "movie_glob" else file_name_problem)(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator(*PATH_FIELDS)
    @classmethod
    def _path_without_whitespace(cls, value: str | None) -> str | None:
        if value and (any(ch.isspace() for ch in value) or name_problem(value) is not None):
            raise ValueError("must not contain whitespace or control characters (STAR files and program "
                             "command lines cannot hold them)")
        return value

    @model_validator(mode="after")
    def _box_fits_particle(self) -> "SessionConfig":
        if self.box_size_px is not None and self.box_size_px % 2:
            raise ValueError(f"box_size_px must be even, got {self.box_size_px}")
        if self.downscaled_box_size_px is not None and self.downscaled_box_size_px > self.extraction_box_px:
            raise ValueError(f"downscaled_box_size_px ({self.downscaled_box_size_px}) must not exceed the "
                             f"extraction box ({self.extraction_box_px})")
        return self

    @model_validator(mode="after")
    def _ranges_in_order(self) -> "SessionConfig":
        for low, high in (("min_defocus_a", "max_defocus_a"),
                          ("min_relative_ice_thickness", "max_relative_ice_thickness")):
            low_value, high_value = getattr(self, low), getattr(self, high)
            if low_value is not None and high_value is not None and low_value >= high_value:
                raise ValueError(f"{low} ({low_value}) must be below {high} ({high_value})")
        return self

    def quality_limits(self) -> dict[str, float | None]:
        """The per-movie quality limits as recorded with the session (QUALITY_LIMIT_FIELDS; None: no limit)."""
        return {name: getattr(self, name) for name in QUALITY_LIMIT_FIELDS}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def extraction_box_px(self) -> int:
        """Box (px): user value, else ceil(1.2·diameter/pixel) rounded up to even (cryoem-services rule)."""
        if self.box_size_px is not None:
            return self.box_size_px
        box = math.ceil(1.2 * self.particle_diameter_a / self.pixel_size_a)
        return box + box % 2

    @computed_field  # type: ignore[prop-decorator]
    @property
    def downscaled_box_px(self) -> int:
        """Smallest candidate box whose pixel is below 3.75 Å, never larger than the extraction box."""
        if self.downscaled_box_size_px is not None:
            return self.downscaled_box_size_px
        box = self.extraction_box_px
        for candidate in _SMALL_BOX_CANDIDATES_PX:
            if candidate >= box:
                return box
            if self.pixel_size_a * box / candidate < _MAX_DOWNSCALED_PIXEL_A:
                return candidate
        return box

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mask_diameter_a(self) -> float:
        """Soft mask diameter for classification: 1.1 × particle diameter."""
        return round(1.1 * self.particle_diameter_a, 3)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def motion_corrected_pixel_size_a(self) -> float:
        """Pixel size after motion correction (doubled for binned super-resolution movies)."""
        return self.pixel_size_a * (2 if self.super_resolution else 1)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def processing_path(self) -> str:
        """Where results go: processing_dir, else a `processing` folder beside the watched folder."""
        if self.processing_dir:
            return self.processing_dir
        if not self.watch_dir:
            return ""
        return str(Path(self.watch_dir).parent / "processing")


class ConfigError(ValueError):
    """A session configuration that failed validation; the message names every bad field."""


def _describe_error(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "conf"
    if error["type"] == "extra_forbidden":
        return f"{field}: unknown setting (not a field of the session configuration)"
    return f"{field}: {error['msg']} (got {error.get('input')!r})"


def parse_session_config(conf: dict[str, Any]) -> SessionConfig:
    """Validate a `--conf` dict into SessionConfig, raising ConfigError that names each bad field."""
    input_fields = {k: v for k, v in conf.items() if k not in _computed_field_names()}
    try:
        return SessionConfig.model_validate(input_fields)
    except ValidationError as exc:
        problems = "; ".join(_describe_error(err) for err in exc.errors())
        raise ConfigError(f"invalid session configuration: {problems}") from None


def _computed_field_names() -> set[str]:
    return set(SessionConfig.model_computed_fields)


def allowed_data_roots() -> list[Path]:
    """Roots that session folders must lie under: CRYOEM_DATA_ROOTS (os.pathsep-separated).

    None configured means no folder is allowed: a deployment says where its data lives.
    """
    raw = os.environ.get("CRYOEM_DATA_ROOTS", "")
    return [Path(part).resolve() for part in raw.split(os.pathsep) if part.strip()]


def check_under_roots(path: str | Path, field: str, roots: list[Path] | None = None) -> Path:
    """Resolve `path` and make sure it lies under one of the allowed roots; ConfigError names the field."""
    if not str(path):
        raise ConfigError(f"{field}: must be set")
    resolved = Path(path).resolve()
    roots = roots if roots is not None else allowed_data_roots()
    if not roots:
        raise ConfigError(f"{field}: no data roots are configured; set CRYOEM_DATA_ROOTS on the workers "
                          f"to the folders sessions may use")
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise ConfigError(f"{field}: {resolved} is outside the allowed data roots "
                          f"{[str(r) for r in roots]} (set CRYOEM_DATA_ROOTS)")
    return resolved


def check_input_files(config: SessionConfig, roots: list[Path] | None = None) -> SessionConfig:
    """The config with its gain, defect and initial-model paths resolved, each checked to lie under the
    data roots and to be a readable file now, so a wrong path fails the session at once by its field
    name instead of failing every movie (or the 3D stage hours later)."""
    resolved: dict[str, str] = {}
    for field in INPUT_FILE_FIELDS:
        value = getattr(config, field)
        if not value:
            continue
        path = check_under_roots(value, field, roots)
        if not path.is_file():
            raise ConfigError(f"{field}: {path} is not an existing file")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{field}: {path} cannot be read by the worker")
        resolved[field] = str(path)
    return config.model_copy(update=resolved)


def stage_config(params: dict[str, Any]) -> SessionConfig:
    """The session config a stage runs with: validated, its input files re-checked and resolved (a stage
    never reads a path the session's opening did not accept, even if a link changed since)."""
    return check_input_files(parse_session_config(dict(params)))
