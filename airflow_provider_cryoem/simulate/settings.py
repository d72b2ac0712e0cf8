"""What a synthetic single-particle session looks like: one pydantic model, defaults small and realistic."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SpaSimulationSettings(BaseModel):
    """Every knob of the SPA simulator; the same settings and seed always give the same files."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0, description="Random seed; the whole session follows from it.")
    n_movies: int = Field(4, ge=1, le=100_000, description="Movies in the session.")
    image_size_px: int = Field(1024, ge=128, le=8192, description="Width = height of each frame (px).")
    n_frames: int = Field(24, ge=1, le=1000, description="Frames per movie.")
    pixel_size_a: float = Field(1.0, gt=0.2, le=20, description="Pixel size (Å/px).")
    dose_per_frame_e_a2: float = Field(1.0, gt=0, le=1000, description="Electron dose per frame (e⁻/Å²).")

    voltage_kv: float = Field(300.0, ge=60, le=400, description="Accelerating voltage (kV).")
    cs_mm: float = Field(2.7, ge=0, le=10, description="Spherical aberration (mm).")
    amplitude_contrast: float = Field(0.1, ge=0, le=0.5, description="Amplitude contrast fraction.")
    defocus_min_a: float = Field(8000.0, gt=0, le=100_000, description="Smallest mean defocus drawn (Å).")
    defocus_max_a: float = Field(25000.0, gt=0, le=100_000, description="Largest mean defocus drawn (Å).")
    astigmatism_max_a: float = Field(400.0, ge=0, le=10_000,
                                     description="Largest defocus U - V drawn (Å); 0 = no astigmatism.")
    envelope_bfactor_a2: float = Field(40.0, ge=0, le=1000,
                                       description="Coherence envelope exp(-B k²/4) on the whole image (Å²).")
    radiation_damage: bool = Field(True, description="Fade high frequencies with accumulated dose "
                                                     "(Grant & Grigorieff 2015 critical exposure).")

    particle_diameter_a: float = Field(140.0, gt=10, le=2000, description="Diameter of the synthetic particle (Å).")
    particles_per_micrograph: int = Field(30, ge=0, le=100_000,
                                          description="Particles (junk included) placed per micrograph, "
                                                      "as many as fit without overlap.")
    particle_phase_rad: float = Field(0.1, ge=0, le=3,
                                      description="Mean phase shift over a particle's projected disc (rad); lower than "
                                                  "protein in ice (~0.15) since the detector is ideal.")
    n_atoms: int = Field(400, ge=10, le=100_000, description="Gaussian pseudo-atoms in the particle.")
    atom_sigma_a: float = Field(4.0, gt=0, le=50, description="Width (σ) of each pseudo-atom (Å).")
    junk_fraction: float = Field(0.0, ge=0, le=1, description="Fraction of placed particles that are "
                                                              "dense aggregates (is_junk).")

    ice_thickness_a: float = Field(300.0, ge=0, le=5000, description="Ice thickness at the image centre (Å).")
    ice_gradient_a: float = Field(100.0, ge=0, le=5000,
                                  description="Ice thickness change from one image edge to the other (Å).")
    ice_thickness_spread_a: float = Field(0.0, ge=0, le=5000,
                                          description="Hole-to-hole variation: each micrograph's ice at its centre is "
                                                      "drawn uniformly within ice_thickness_a ± this (Å).")
    ice_texture_rad: float = Field(0.12, ge=0, le=3,
                                   description="RMS per-pixel phase of amorphous ice at ice_thickness_a (rad); "
                                               "it gives the Thon rings.")
    carbon_edge: bool = Field(False, description="Cover one side of the image with a carbon film (step edge).")
    carbon_thickness_a: float = Field(150.0, ge=0, le=5000, description="Thickness of the carbon film (Å).")

    drift_a_per_frame: float = Field(0.8, ge=0, le=100, description="Stage/beam drift speed in late frames (Å/frame).")
    initial_drift_factor: float = Field(4.0, ge=1, le=50,
                                        description="How many times faster the first frames move.")
    local_motion_a: float = Field(1.0, ge=0, le=100,
                                  description="Largest local (non-rigid) displacement at the last frame (Å).")
    integer_shifts: bool = Field(False, description="Round global shifts to whole pixels (for exact tests).")

    counting_noise: bool = Field(True, description="Draw Poisson counts; off gives float32 expected counts.")
    gain_variation: float = Field(0.05, ge=0, le=0.5, description="RMS spread of per-pixel detector sensitivity.")
    gain_rotation: Literal[0, 1, 2, 3] = Field(0, description="90° counter-clockwise turns the WRITTEN gain needs "
                                                              "to match the frames (MotionCor2 -RotGain).")
    gain_flip: Literal[0, 1, 2] = Field(0, description="Flip the written gain needs after rotating: 1 upside down, "
                                                       "2 left-right (MotionCor2 -FlipGain).")
    movie_format: Literal["tiff", "mrc"] = Field("tiff", description="Movie file format.")
    session_start: datetime = Field(datetime(2024, 1, 1, 9, 0, 0),
                                    description="Acquisition time of the first movie.")
    acquisition_interval_s: float = Field(6.0, gt=0, le=86_400,
                                          description="Acquisition time between movies in the metadata (s).")

    @model_validator(mode="after")
    def _consistent(self) -> "SpaSimulationSettings":
        if self.defocus_min_a > self.defocus_max_a:
            raise ValueError(f"defocus_min_a ({self.defocus_min_a}) must not exceed defocus_max_a "
                             f"({self.defocus_max_a})")
        if self.ice_thickness_spread_a > self.ice_thickness_a:
            raise ValueError(f"ice_thickness_spread_a ({self.ice_thickness_spread_a}) must not exceed "
                             f"ice_thickness_a ({self.ice_thickness_a}): ice cannot be thinner than none")
        diameter_px = self.particle_diameter_a / self.pixel_size_a
        if self.particles_per_micrograph and 1.5 * diameter_px > self.image_size_px:
            raise ValueError(f"image_size_px ({self.image_size_px}) is too small for particle_diameter_a "
                             f"({self.particle_diameter_a} Å = {diameter_px:.0f} px)")
        return self

    @property
    def particle_diameter_px(self) -> float:
        return self.particle_diameter_a / self.pixel_size_a
