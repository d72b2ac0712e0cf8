"""What a synthetic tilt-series session looks like: one pydantic model, defaults small and realistic.

Defaults follow a typical cryo-ET collection (SerialEM dose-symmetric scheme, ±60° in 3° steps, 2.5 e⁻/Å²
per tilt, 4 µm underfocus, a 150 nm thick specimen), shrunk to a 256² detector so tests run in seconds.
The pixel size is the detector's (real tilt movies are recorded at 1.5-2.7 Å/px); the phantom is built
`phantom_binning` times coarser, the sampling tomograms are reconstructed at (bin 4-8, AreTomo `-AtBin 4`).
"""
from __future__ import annotations

import math
from copy import copy
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .settings import SpaSimulationSettings


def _spa_field(name: str) -> Any:
    """The SPA simulator's definition of a setting both share (default, bounds, description), written once."""
    return copy(SpaSimulationSettings.model_fields[name])


class TomoSimulationSettings(BaseModel):
    """Every knob of the tilt-series simulator; the same settings and seed always give the same files.

    Optics, motion, detector and file-format settings are the SPA simulator's (`_spa_field`).
    """

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0, description="Random seed; the whole session follows from it.")
    n_series: int = Field(1, ge=1, le=1000, description="Tilt series in the session, collected one after another.")
    naming: Literal["serialem", "tomo5"] = Field(
        "serialem", description="File names as SerialEM writes them (TS_01.mdoc, TS_01_001_0.0.tif) or as "
                                "Tomo5 does (Position_1.mdoc, Position_1_001_0.00_<date>_<time>_fractions.tiff).")
    movie_format: Literal["tiff", "mrc"] = _spa_field("movie_format")

    image_size_px: int = Field(256, ge=128, le=8192, description="Width = height of each frame (px).")
    n_frames: int = Field(4, ge=1, le=1000, description="Frames per tilt movie.")
    pixel_size_a: float = Field(2.0, gt=0.2, le=20, description="Detector pixel size at the specimen (Å/px).")
    phantom_binning: int = Field(4, ge=1, le=16, description="Phantom voxel = this × pixel size (the tomogram "
                                                             "sampling the truth is compared at).")

    tilt_min_deg: float = Field(-60.0, ge=-80, le=80, description="Lowest tilt angle (deg).")
    tilt_max_deg: float = Field(60.0, ge=-80, le=80, description="Highest tilt angle (deg).")
    tilt_step_deg: float = Field(3.0, gt=0, le=90, description="Tilt increment (deg).")
    dose_symmetric_group: int = Field(2, ge=1, le=100,
                                      description="Tilts per side before switching (Hagen scheme; see "
                                                  "`acquisition_order`).")
    dose_per_tilt_e_a2: float = Field(2.5, gt=0, le=100, description="Electron dose of each tilt (e⁻/Å²).")
    tilt_axis_deg: float = Field(85.0, ge=-180, le=180,
                                 description="Tilt axis in the image, CCW from the y axis (SerialEM / IMOD).")

    voltage_kv: float = _spa_field("voltage_kv")
    cs_mm: float = _spa_field("cs_mm")
    amplitude_contrast: float = _spa_field("amplitude_contrast")
    defocus_um: float = Field(4.0, gt=0, le=20, description="Nominal (target) underfocus (µm).")
    focus_error_um: float = Field(0.1, ge=0, le=5, description="RMS error of the focus at each tilt (µm).")
    area_offset_um: float = Field(0.5, ge=0, le=20,
                                  description="Largest distance of the imaged area from the tilt axis (µm); its "
                                              "height, and so the defocus, changes as sin(tilt).")
    eucentric_error_um: float = Field(0.3, ge=0, le=20,
                                      description="RMS height of the specimen above the eucentric height (µm).")
    astigmatism_max_a: float = Field(200.0, ge=0, le=10_000, description="Largest defocus U - V drawn (Å).")
    defocus_node_step_a: float = Field(100.0, gt=0, le=10_000,
                                       description="Spacing of the defocus values the CTF is computed at; each "
                                                   "pixel interpolates between the two nearest (Å).")
    envelope_bfactor_a2: float = _spa_field("envelope_bfactor_a2")
    radiation_damage: bool = _spa_field("radiation_damage")

    thickness_nm: float = Field(150.0, gt=5, le=2000, description="Specimen (ice slab) thickness (nm).")
    ice_texture_rad: float = Field(0.22, ge=0, le=5,
                                   description="RMS per-pixel phase of amorphous ice 100 nm thick at 1 Å/px; "
                                               "it scales as √(path length) / pixel size (0.12 rad through 30 nm, "
                                               "as the SPA simulator).")
    n_vesicles: int = Field(1, ge=0, le=10_000, description="Vesicles per 0° field of view (the phantom, wider "
                                                            "than the view, holds the same density).")
    vesicle_radius_min_a: float = Field(150.0, gt=40, le=5000, description="Smallest vesicle radius (Å).")
    vesicle_radius_max_a: float = Field(300.0, gt=40, le=5000, description="Largest vesicle radius (Å).")
    n_particles: int = Field(4, ge=0, le=100_000, description="Macromolecules per 0° field of view.")
    inside_fraction: float = Field(0.3, ge=0, le=1, description="Share of macromolecules placed inside vesicles.")
    particle_diameter_a: float = Field(200.0, gt=10, le=2000, description="Macromolecule diameter (Å).")
    n_atoms: int = _spa_field("n_atoms")
    n_gold: int = Field(0, ge=0, le=10_000, description="Gold fiducials per 0° field of view (0 = fiducial-free).")
    gold_diameter_a: float = Field(100.0, gt=10, le=1000, description="Gold bead diameter (Å).")

    tracking_error_px: float = Field(10.0, ge=0, le=10_000,
                                     description="RMS per-axis image shift of each tilt left by tracking (px).")
    drift_a_per_frame: float = _spa_field("drift_a_per_frame")
    initial_drift_factor: float = _spa_field("initial_drift_factor")
    local_motion_a: float = _spa_field("local_motion_a")

    counting_noise: bool = _spa_field("counting_noise")
    gain_variation: float = _spa_field("gain_variation")
    gain_rotation: Literal[0, 1, 2, 3] = _spa_field("gain_rotation")
    gain_flip: Literal[0, 1, 2] = _spa_field("gain_flip")
    session_start: datetime = _spa_field("session_start")
    tilt_interval_s: float = Field(30.0, gt=0, le=86_400, description="Time between tilts in the metadata (s).")

    @model_validator(mode="after")
    def _consistent(self) -> "TomoSimulationSettings":
        if self.tilt_min_deg > 0 or self.tilt_max_deg < 0:
            raise ValueError(f"the tilt range [{self.tilt_min_deg}, {self.tilt_max_deg}] must include 0°")
        if self.vesicle_radius_min_a > self.vesicle_radius_max_a:
            raise ValueError(f"vesicle_radius_min_a ({self.vesicle_radius_min_a}) must not exceed "
                             f"vesicle_radius_max_a ({self.vesicle_radius_max_a})")
        if self.n_vesicles and 2 * self.vesicle_radius_max_a + 100 > 10 * self.thickness_nm:
            raise ValueError(f"vesicles up to {self.vesicle_radius_max_a} Å radius do not fit in a "
                             f"{self.thickness_nm} nm thick specimen")
        if self.particle_diameter_a + 20 > 10 * self.thickness_nm:
            raise ValueError(f"particle_diameter_a ({self.particle_diameter_a}) is thicker than the specimen")
        return self

    @property
    def dose_per_frame_e_a2(self) -> float:
        return self.dose_per_tilt_e_a2 / self.n_frames

    @property
    def voxel_size_a(self) -> float:
        return self.pixel_size_a * self.phantom_binning

    def tilt_angles_deg(self) -> list[float]:
        """Nominal tilt angles, ascending: multiples of the step from 0 within [tilt_min_deg, tilt_max_deg]."""
        low = math.ceil(self.tilt_min_deg / self.tilt_step_deg - 1e-9)
        high = math.floor(self.tilt_max_deg / self.tilt_step_deg + 1e-9)
        return [round(k * self.tilt_step_deg, 6) + 0.0 for k in range(low, high + 1)]

    def acquisition_order(self) -> list[float]:
        """Tilt angles in the order they are collected: the dose-symmetric scheme (Hagen et al. 2017, JSB 197:191)
        as SerialEM runs it, groups of `dose_symmetric_group` tilts alternating between the sides, the first
        group going up from 0°: with group 2 and step 3°, 0, +3, -3, -6, +6, +9, -9, -12, ... (the order of
        the EMPIAR-10064 mdoc in the mdocfile test data). When one side ends the other continues alone.
        """
        angles = self.tilt_angles_deg()
        positive = [a for a in angles if a >= 0]
        negative = sorted((a for a in angles if a < 0), reverse=True)
        order: list[float] = []
        sides, turn = [positive, negative], 0
        while positive or negative:
            side = sides[turn % 2] or sides[(turn + 1) % 2]
            order.extend(side[:self.dose_symmetric_group])
            del side[:self.dose_symmetric_group]
            turn += 1
        return order

    def as_spa_settings(self) -> SpaSimulationSettings:
        """The SPA settings the shared helpers (structure, motion, detector, movie recording) read."""
        diameter = self.particle_diameter_a
        return SpaSimulationSettings(
            seed=self.seed, image_size_px=self.image_size_px, n_frames=self.n_frames, pixel_size_a=self.pixel_size_a,
            dose_per_frame_e_a2=self.dose_per_frame_e_a2, voltage_kv=self.voltage_kv, cs_mm=self.cs_mm,
            amplitude_contrast=self.amplitude_contrast, envelope_bfactor_a2=self.envelope_bfactor_a2,
            radiation_damage=self.radiation_damage, particle_diameter_a=diameter, particles_per_micrograph=0,
            # Mean phase over the projected disc of a ball of protein: density × (4/3) × radius.
            particle_phase_rad=min(PROTEIN_PHASE_RAD_PER_A * 4.0 / 3.0 * 0.5 * diameter, 3.0),
            n_atoms=self.n_atoms, drift_a_per_frame=self.drift_a_per_frame,
            initial_drift_factor=self.initial_drift_factor, local_motion_a=self.local_motion_a,
            counting_noise=self.counting_noise, gain_variation=self.gain_variation, gain_rotation=self.gain_rotation,
            gain_flip=self.gain_flip, movie_format=self.movie_format, session_start=self.session_start)


# Phase per Å of path through protein, relative to the ice around it: the SPA simulator's default particle
# (0.1 rad mean over a 140 Å disc), i.e. ≈ σ(300 kV) 0.00065 rad/(V·Å) × ~1.6 V mean-inner-potential excess.
PROTEIN_PHASE_RAD_PER_A = 0.1 / (4.0 / 3.0 * 70.0)
