"""What a synthetic single-particle session looks like: one pydantic model, defaults small and realistic."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SpaSimulationSettings(BaseModel):
    """Every knob of the SPA simulator; the same settings and seed always give the same files.

    The field defaults are the "easy" preset (clear particles on flat ice, ideal detector), kept for quick
    unit tests; `SpaSimulationSettings.realistic()` gives micrographs as hard as real ones (see PRESETS).
    """

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
    particle_mass_kda: float | None = Field(None, gt=5, le=20_000,
                                            description="Protein mass (kDa). When set the particle is a "
                                                        "residue-level model at protein density and its phase "
                                                        "follows from the mass (n_atoms and atom_sigma_a then "
                                                        "only shape the aggregates, particle_phase_rad is "
                                                        "unused); unset = the easy pseudo-atom lobes.")
    particle_shape: Literal["globular", "elongated"] = Field(
        "globular", description="With particle_mass_kda: domains packed in a ball, or in a rod whose length is "
                                "particle_diameter_a.")
    n_conformations: int = Field(1, ge=1, le=10, description="With particle_mass_kda: conformations (one domain "
                                                            "hinged by a further 12° each), drawn per particle.")
    particle_min_separation: float = Field(1.0, gt=0, le=3,
                                           description="Closest centre distance allowed, in mean diameters of "
                                                       "the two objects (1 = discs touch, < 1 = they overlap).")
    particle_cluster_fraction: float = Field(0.0, ge=0, le=1,
                                             description="Share of particles placed right next to an earlier "
                                                         "one (touching), as in real grids.")
    carbon_particle_fraction: float = Field(0.0, ge=0, le=1,
                                            description="Share of particles placed on the carbon film (needs "
                                                        "carbon_edge).")

    ice_thickness_a: float = Field(300.0, ge=0, le=5000, description="Ice thickness at the image centre (Å).")
    ice_gradient_a: float = Field(100.0, ge=0, le=5000,
                                  description="Ice thickness change from one image edge to the other (Å).")
    ice_thickness_spread_a: float = Field(0.0, ge=0, le=5000,
                                          description="Hole-to-hole variation: each micrograph's ice at its centre is "
                                                      "drawn uniformly within ice_thickness_a ± this (Å).")
    ice_texture_rad: float = Field(0.12, ge=0, le=3,
                                   description="RMS per-pixel phase of amorphous ice at ice_thickness_a (rad); "
                                               "it gives the Thon rings.")
    ice_spectrum: Literal["white", "amorphous"] = Field(
        "white", description="Ice phase texture: white noise of RMS ice_texture_rad, or amorphous ice from its "
                             "water density and structure factor (ring at 3.7 Å; ice_texture_rad unused).")
    ice_variation_a: float = Field(0.0, ge=0, le=5000,
                                   description="RMS of smooth random ice-thickness variation on top of the "
                                               "gradient (Å).")
    ice_variation_length_a: float = Field(2000.0, gt=0, le=100_000,
                                          description="Correlation length of that variation (Å).")
    ice_contaminants_per_um2: float = Field(0.0, ge=0, le=10_000,
                                            description="Mean number of crystalline-ice contaminants (dark "
                                                        "hexagonal crystals with lattice fringes) per µm².")
    carbon_edge: bool = Field(False, description="Cover one side of the image with a carbon film (step edge).")
    carbon_thickness_a: float = Field(150.0, ge=0, le=5000, description="Thickness of the carbon film (Å).")
    carbon_hole_radius_a: float | None = Field(None, gt=0, le=1_000_000,
                                               description="Radius of the foil hole (Å): the carbon edge is its "
                                                           "rim, curved; unset = a straight edge.")

    drift_a_per_frame: float = Field(0.8, ge=0, le=100, description="Stage/beam drift speed in late frames (Å/frame).")
    initial_drift_factor: float = Field(4.0, ge=1, le=50,
                                        description="How many times faster the first frames move.")
    local_motion_a: float = Field(1.0, ge=0, le=100,
                                  description="Largest local (non-rigid) displacement at the last frame (Å).")
    integer_shifts: bool = Field(False, description="Round global shifts to whole pixels (for exact tests).")

    detector: Literal["ideal", "counting"] = Field(
        "ideal", description="ideal: every electron counted where it lands; counting: a counting camera's "
                             "MTF (pixel sinc × charge spread) and DQE(0) (a share of electrons not counted).")
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
        if self.carbon_particle_fraction > 0 and not self.carbon_edge:
            raise ValueError("carbon_particle_fraction needs carbon_edge: there is no carbon to place particles on")
        diameter_px = self.particle_diameter_a / self.pixel_size_a
        if self.particles_per_micrograph and 1.5 * diameter_px > self.image_size_px:
            raise ValueError(f"image_size_px ({self.image_size_px}) is too small for particle_diameter_a "
                             f"({self.particle_diameter_a} Å = {diameter_px:.0f} px)")
        return self

    @property
    def particle_diameter_px(self) -> float:
        return self.particle_diameter_a / self.pixel_size_a

    @classmethod
    def easy(cls, **overrides: object) -> "SpaSimulationSettings":
        """The quick unit-test preset: strong contrast, flat white-noise ice, ideal detector (the defaults)."""
        return cls.model_validate({**PRESETS["easy"], **overrides})

    @classmethod
    def realistic(cls, **overrides: object) -> "SpaSimulationSettings":
        """Micrographs as hard as real ones: a 150 kDa elongated protein at its true scattering strength in
        amorphous ice with gradients, a counting camera at 50 e⁻/Å² over 50 frames, a foil-hole carbon rim,
        crystalline-ice contaminants, aggregates and touching particles."""
        return cls.model_validate({**PRESETS["realistic"], **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: object) -> "SpaSimulationSettings":
        if name not in PRESETS:
            raise ValueError(f"unknown simulation preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls.model_validate({**PRESETS[name], **overrides})


# Named settings; overrides (image size, seed, ...) go on top. Realistic values: 40-60 e⁻/Å² over 40-60 frames
# is the usual exposure on a counting camera; ice 20-50 nm in a good hole; Quantifoil holes 1.2-2 µm across
# with 12-25 nm carbon. Matched to fei-extended.mrc (benchmarks/bench_simulator_realism.py): B = 80 Å²
# (coherence envelope plus residual blur) puts the 3.7 Å ice ring as far above the shot noise as there, and a
# 150 kDa rod 130 Å long darkens particle centres by as much (1.5-1.7 % of the beam) with a little less contrast
# over the background (20 Å low-pass): as hard as the real micrograph or harder.
PRESETS: dict[str, dict[str, object]] = {
    "easy": {},
    "realistic": {
        "n_frames": 50, "dose_per_frame_e_a2": 1.0, "defocus_min_a": 8000.0, "defocus_max_a": 25000.0,
        "astigmatism_max_a": 400.0, "envelope_bfactor_a2": 80.0,
        "particle_mass_kda": 150.0, "particle_shape": "elongated", "particle_diameter_a": 130.0,
        "n_conformations": 2, "junk_fraction": 0.1, "particle_min_separation": 0.7,
        "particle_cluster_fraction": 0.3, "carbon_particle_fraction": 0.1,
        "ice_thickness_a": 350.0, "ice_gradient_a": 100.0, "ice_thickness_spread_a": 100.0,
        "ice_spectrum": "amorphous", "ice_variation_a": 20.0, "ice_variation_length_a": 2000.0,
        "ice_contaminants_per_um2": 3.0,
        "carbon_edge": True, "carbon_thickness_a": 250.0, "carbon_hole_radius_a": 6000.0,
        "drift_a_per_frame": 0.5, "initial_drift_factor": 5.0, "local_motion_a": 2.0,
        "detector": "counting", "gain_variation": 0.05,
    },
}
