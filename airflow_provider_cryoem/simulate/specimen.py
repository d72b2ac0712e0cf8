"""The specimen of one micrograph: where particles, junk and carbon sit, and the phase and attenuation they cause.

Everything is drawn on a canvas larger than the frame by `margin_px` on each side, so that moving
the specimen under the beam brings real specimen, not wrap-around, into view. Positions in the
truth are in frame-0 pixels: canvas = frame + margin.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from .density import render_gaussians
from .settings import SpaSimulationSettings
from .structure import projected_atoms_xy_a, random_orientations
from .truth import CarbonEdgeTruth, ParticleTruth, StructureTruth

# Inelastic mean free path of vitreous ice at 300 kV, about 300 nm (Rice et al. 2018, Ultramicroscopy);
# attenuation exp(-t/λ) stands for electrons lost to the energy filter.
ICE_INELASTIC_MFP_A = 3000.0
# Carbon scatters about twice as strongly as ice per Å; phase of carbon relative to ice per Å of film.
CARBON_ATTENUATION_FACTOR = 2.0
CARBON_PHASE_RAD_PER_A = 0.002
# Junk aggregates are denser than the particle's average protein.
JUNK_DENSITY_FACTOR = 2.0
MAX_JUNK_ATOMS = 5000
PLACEMENT_TRIES = 200


@dataclass
class Specimen:
    """Canvas images of one micrograph's specimen plus the planted objects."""

    phase_rad: np.ndarray          # projected phase (particles, junk, ice texture, carbon), canvas
    transmission: np.ndarray       # fraction of electrons kept (ice thickness, carbon), canvas
    particles: list[ParticleTruth]
    carbon_edge: CarbonEdgeTruth | None
    ice_thickness_centre_a: float
    ice_gradient_direction_deg: float


def micrograph_ice_thickness_a(settings: SpaSimulationSettings, index: int) -> float:
    """The ice at the centre of micrograph `index`: the session's, varied hole to hole by
    `ice_thickness_spread_a` from a stream of its own (a spread of 0 leaves every other draw unchanged)."""
    if settings.ice_thickness_spread_a == 0:
        return settings.ice_thickness_a
    rng = np.random.default_rng([settings.seed, 3, index])
    return round(settings.ice_thickness_a + settings.ice_thickness_spread_a * float(rng.uniform(-1.0, 1.0)), 3)


def build_specimen(rng: np.random.Generator, settings: SpaSimulationSettings, structure: StructureTruth,
                   margin_px: int, ice_thickness_a: float | None = None) -> Specimen:
    """Place objects, then render the specimen's phase and transmission on the canvas; the ice is
    `ice_thickness_a` thick at the image centre (default: the session's)."""
    centre_a = settings.ice_thickness_a if ice_thickness_a is None else ice_thickness_a
    size = settings.image_size_px
    canvas_shape = (size + 2 * margin_px,) * 2
    yy, xx = np.mgrid[0:canvas_shape[0], 0:canvas_shape[1]].astype(np.float32) - margin_px
    carbon_edge, carbon_side_px = _carbon_geometry(rng, settings, xx, yy, margin_px)
    carbon_mask = (0.5 * (1.0 + erf(carbon_side_px / 2.0))).astype(np.float32) if carbon_edge else None
    particles = _place_objects(rng, settings, carbon_edge)

    gradient_deg = float(rng.uniform(0.0, 360.0))
    along = (np.cos(np.deg2rad(gradient_deg)) * (xx - 0.5 * size)
             + np.sin(np.deg2rad(gradient_deg)) * (yy - 0.5 * size)) / size
    ice_a = np.maximum(centre_a + settings.ice_gradient_a * along, 0.0)

    phase = _objects_phase(rng, settings, structure, particles, canvas_shape, margin_px)
    if settings.ice_thickness_a > 0:
        texture_rms = settings.ice_texture_rad * np.sqrt(ice_a / settings.ice_thickness_a)
        phase += texture_rms * rng.standard_normal(canvas_shape, dtype=np.float32)
    attenuating_a = ice_a
    if carbon_mask is not None:
        carbon_a = settings.carbon_thickness_a * carbon_mask
        phase += CARBON_PHASE_RAD_PER_A * carbon_a
        carbon_texture = settings.ice_texture_rad * np.sqrt(
            CARBON_ATTENUATION_FACTOR * settings.carbon_thickness_a / max(settings.ice_thickness_a, 1.0))
        phase += carbon_texture * carbon_mask * rng.standard_normal(canvas_shape, dtype=np.float32)
        attenuating_a = ice_a + CARBON_ATTENUATION_FACTOR * carbon_a
    transmission = np.exp(-attenuating_a / ICE_INELASTIC_MFP_A).astype(np.float32)
    return Specimen(phase_rad=phase.astype(np.float32), transmission=transmission, particles=particles,
                    carbon_edge=carbon_edge, ice_thickness_centre_a=centre_a,
                    ice_gradient_direction_deg=gradient_deg)


def _carbon_geometry(rng: np.random.Generator, settings: SpaSimulationSettings, xx: np.ndarray,
                     yy: np.ndarray, margin_px: int) -> tuple[CarbonEdgeTruth | None, np.ndarray]:
    """A straight edge with carbon on 15-35 % of the frame; returns the signed distance into the carbon (px)."""
    if not settings.carbon_edge:
        return None, np.zeros_like(xx)
    size = settings.image_size_px
    normal_deg = float(rng.uniform(0.0, 360.0))
    normal = np.array([np.cos(np.deg2rad(normal_deg)), np.sin(np.deg2rad(normal_deg))])
    point = 0.5 * (size - 1) + normal * rng.uniform(0.15, 0.3) * size
    signed = ((xx - point[0]) * normal[0] + (yy - point[1]) * normal[1]).astype(np.float32)
    frame = slice(margin_px, margin_px + size)
    fraction = float(np.mean(signed[frame, frame] > 0))
    edge = CarbonEdgeTruth(point_px=np.round(point, 3).tolist(), normal_deg=round(normal_deg, 4),
                           carbon_area_fraction=round(fraction, 4))
    return edge, signed


def _place_objects(rng: np.random.Generator, settings: SpaSimulationSettings,
                   carbon: CarbonEdgeTruth | None) -> list[ParticleTruth]:
    """Non-overlapping particles and junk, away from the frame edge and off the carbon."""
    size = settings.image_size_px
    diameter_px = settings.particle_diameter_px
    n_junk = int(round(settings.junk_fraction * settings.particles_per_micrograph))
    is_junk = np.zeros(settings.particles_per_micrograph, dtype=bool)
    is_junk[rng.choice(settings.particles_per_micrograph, size=n_junk, replace=False)] = True
    placed: list[tuple[float, float, float]] = []   # x, y, diameter (px)
    particles: list[ParticleTruth] = []
    for junk in is_junk:
        object_diameter_px = diameter_px * (rng.uniform(0.5, 1.6) if junk else 1.0)
        edge_px = 0.6 * max(diameter_px, object_diameter_px)
        for _ in range(PLACEMENT_TRIES):
            x, y = rng.uniform(edge_px, size - 1 - edge_px, 2)
            if carbon is not None and _carbon_distance_px(carbon, x, y) > -0.5 * object_diameter_px:
                continue
            if all(np.hypot(x - px, y - py) >= 0.5 * (object_diameter_px + pd) for px, py, pd in placed):
                break
        else:
            continue
        placed.append((x, y, object_diameter_px))
        angles = [0.0, 0.0, 0.0] if junk else random_orientations(rng, 1)[0].round(4).tolist()
        particles.append(ParticleTruth(x_px=round(float(x), 4), y_px=round(float(y), 4), is_junk=bool(junk),
                                       diameter_a=round(object_diameter_px * settings.pixel_size_a, 3),
                                       rot_deg=angles[0], tilt_deg=angles[1], psi_deg=angles[2]))
    return particles


def _carbon_distance_px(carbon: CarbonEdgeTruth, x: float, y: float) -> float:
    angle = np.deg2rad(carbon.normal_deg)
    return (x - carbon.point_px[0]) * np.cos(angle) + (y - carbon.point_px[1]) * np.sin(angle)


def _objects_phase(rng: np.random.Generator, settings: SpaSimulationSettings, structure: StructureTruth,
                   particles: list[ParticleTruth], canvas_shape: tuple[int, int], margin_px: int) -> np.ndarray:
    """Phase (rad) of all particles and junk: every object is a set of Gaussian atoms, rendered at once."""
    xy_a: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for particle in particles:
        centre_a = np.array([particle.x_px, particle.y_px]) * settings.pixel_size_a
        if particle.is_junk:
            atoms_xy_a, atom_weights = _junk_atoms(rng, settings, particle.diameter_a)
        else:
            atoms_xy_a = projected_atoms_xy_a(structure, particle.rot_deg, particle.tilt_deg, particle.psi_deg)
            atom_weights = np.asarray(structure.weights)
        xy_a.append(atoms_xy_a + centre_a)
        weights.append(atom_weights)
    if not xy_a:
        return np.zeros(canvas_shape, dtype=np.float32)
    coords_px = np.concatenate(xy_a) / settings.pixel_size_a + margin_px
    area_px = settings.pixel_size_a**2
    return render_gaussians(coords_px[:, ::-1], np.concatenate(weights) / area_px, canvas_shape,
                            settings.atom_sigma_a / settings.pixel_size_a)


def _junk_atoms(rng: np.random.Generator, settings: SpaSimulationSettings,
                diameter_a: float) -> tuple[np.ndarray, np.ndarray]:
    """A dense aggregate: atoms filling 1-3 overlapping balls inside `diameter_a`, projected (x, y in Å)."""
    n_balls = int(rng.integers(1, 4))
    radii = rng.uniform(0.3, 0.5, n_balls) * diameter_a
    radii[0] = 0.5 * diameter_a if n_balls == 1 else radii[0]
    centres = rng.normal(size=(n_balls, 3))
    centres *= ((0.5 * diameter_a - radii) / np.maximum(np.linalg.norm(centres, axis=1), 1e-6))[:, None]
    volumes = radii**3
    particle_volume = (0.5 * settings.particle_diameter_a) ** 3
    n_atoms = int(min(MAX_JUNK_ATOMS, max(settings.n_atoms * volumes.sum() / particle_volume, 10)))
    ball = rng.choice(n_balls, size=n_atoms, p=volumes / volumes.sum())
    direction = rng.normal(size=(n_atoms, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    atoms = centres[ball] + direction * (rng.uniform(0, 1, (n_atoms, 1)) ** (1 / 3)) * radii[ball, None]
    # Phase density of the particle's protein, spread as a ball: mean projected thickness of a ball is 4r/3.
    protein_rad_per_a = settings.particle_phase_rad / (4.0 / 3.0 * 0.5 * settings.particle_diameter_a)
    total = JUNK_DENSITY_FACTOR * protein_rad_per_a * 4.0 / 3.0 * np.pi * volumes.sum()
    return atoms[:, :2], np.full(n_atoms, total / n_atoms)
