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
from .ice import amorphous_phase_rad, draw_contaminants, render_contaminants, smooth_variation
from .protein import protein_phase_rad_per_a
from .settings import SpaSimulationSettings
from .structure import projected_atoms_xy_a, random_orientations
from .truth import CarbonEdgeTruth, ContaminantTruth, ParticleTruth, StructureTruth

# Inelastic mean free path of vitreous ice at 300 kV, about 300 nm (Rice et al. 2018, Ultramicroscopy);
# attenuation exp(-t/λ) stands for electrons lost to the energy filter.
ICE_INELASTIC_MFP_A = 3000.0
# Carbon scatters about twice as strongly as ice per Å; phase of carbon relative to ice per Å of film.
CARBON_ATTENUATION_FACTOR = 2.0
CARBON_PHASE_RAD_PER_A = 0.002
# The easy preset's junk aggregates are denser than the particle's average protein.
JUNK_DENSITY_FACTOR = 2.0
AGGREGATE_PACKING = 0.5
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
    contaminants: list[ContaminantTruth]
    # Amorphous ice and carbon texture (realistic preset): their molecules move under the beam but keep their
    # packing statistics, so their power spectrum (the ice ring) lasts through the exposure: no dose damage.
    steady_phase_rad: np.ndarray | None = None


def micrograph_ice_thickness_a(settings: SpaSimulationSettings, index: int) -> float:
    """The ice at the centre of micrograph `index`: the session's, varied hole to hole by
    `ice_thickness_spread_a` from a stream of its own (a spread of 0 leaves every other draw unchanged)."""
    if settings.ice_thickness_spread_a == 0:
        return settings.ice_thickness_a
    rng = np.random.default_rng([settings.seed, 3, index])
    return round(settings.ice_thickness_a + settings.ice_thickness_spread_a * float(rng.uniform(-1.0, 1.0)), 3)


def build_specimen(rng: np.random.Generator, settings: SpaSimulationSettings, structure: StructureTruth,
                   margin_px: int, ice_thickness_a: float | None = None,
                   realism_rng: np.random.Generator | None = None) -> Specimen:
    """Place objects, then render the specimen's phase and transmission on the canvas; the ice is
    `ice_thickness_a` thick at the image centre (default: the session's). The realistic features (amorphous
    ice, thickness variation, contaminants, clusters, particles on carbon) draw from `realism_rng`, a stream
    of their own, so that the easy preset's draws stay as they were."""
    centre_a = settings.ice_thickness_a if ice_thickness_a is None else ice_thickness_a
    extra = realism_rng if realism_rng is not None else np.random.default_rng([settings.seed, 4])
    size = settings.image_size_px
    canvas_shape = (size + 2 * margin_px,) * 2
    yy, xx = np.mgrid[0:canvas_shape[0], 0:canvas_shape[1]].astype(np.float32) - margin_px
    carbon_edge, carbon_side_px = _carbon_geometry(rng, settings, xx, yy, margin_px)
    carbon_mask = (0.5 * (1.0 + erf(carbon_side_px / 2.0))).astype(np.float32) if carbon_edge else None
    contaminants = draw_contaminants(extra, settings.ice_contaminants_per_um2, size, settings.pixel_size_a) \
        if settings.ice_contaminants_per_um2 > 0 else []
    particles = _place_objects(rng, settings, carbon_edge, extra, contaminants)

    gradient_deg = float(rng.uniform(0.0, 360.0))
    along = (np.cos(np.deg2rad(gradient_deg)) * (xx - 0.5 * size)
             + np.sin(np.deg2rad(gradient_deg)) * (yy - 0.5 * size)) / size
    ice_a = np.maximum(centre_a + settings.ice_gradient_a * along
                       + smooth_variation(extra, canvas_shape, settings.ice_variation_a,
                                          settings.ice_variation_length_a / settings.pixel_size_a), 0.0)

    phase = _objects_phase(rng, settings, structure, particles, canvas_shape, margin_px)
    amorphous = settings.ice_spectrum == "amorphous"
    steady_phase = None
    if settings.ice_thickness_a > 0:
        if amorphous:
            steady_phase = amorphous_phase_rad(extra, ice_a, settings.pixel_size_a, settings.voltage_kv)
        else:
            texture_rms = settings.ice_texture_rad * np.sqrt(ice_a / settings.ice_thickness_a)
            phase += texture_rms * rng.standard_normal(canvas_shape, dtype=np.float32)
    attenuating_a = ice_a
    if carbon_mask is not None:
        carbon_a = settings.carbon_thickness_a * carbon_mask
        phase += CARBON_PHASE_RAD_PER_A * carbon_a
        if amorphous:
            carbon_texture = amorphous_phase_rad(extra, carbon_a, settings.pixel_size_a, settings.voltage_kv, "carbon")
            steady_phase = carbon_texture if steady_phase is None else steady_phase + carbon_texture
        else:
            carbon_texture = settings.ice_texture_rad * np.sqrt(
                CARBON_ATTENUATION_FACTOR * settings.carbon_thickness_a / max(settings.ice_thickness_a, 1.0))
            phase += carbon_texture * carbon_mask * rng.standard_normal(canvas_shape, dtype=np.float32)
        attenuating_a = ice_a + CARBON_ATTENUATION_FACTOR * carbon_a
    log_transmission = -attenuating_a / ICE_INELASTIC_MFP_A
    if contaminants:
        crystal_phase, crystal_log_transmission = render_contaminants(extra, contaminants, canvas_shape, margin_px,
                                                                      settings.pixel_size_a)
        phase += crystal_phase
        log_transmission += crystal_log_transmission
    transmission = np.exp(log_transmission).astype(np.float32)
    return Specimen(phase_rad=phase.astype(np.float32), transmission=transmission, particles=particles,
                    carbon_edge=carbon_edge, ice_thickness_centre_a=centre_a,
                    ice_gradient_direction_deg=gradient_deg, contaminants=contaminants,
                    steady_phase_rad=steady_phase)


def _carbon_geometry(rng: np.random.Generator, settings: SpaSimulationSettings, xx: np.ndarray,
                     yy: np.ndarray, margin_px: int) -> tuple[CarbonEdgeTruth | None, np.ndarray]:
    """A straight edge with carbon on 15-35 % of the frame; returns the signed distance into the carbon (px)."""
    if not settings.carbon_edge:
        return None, np.zeros_like(xx)
    size = settings.image_size_px
    normal_deg = float(rng.uniform(0.0, 360.0))
    normal = np.array([np.cos(np.deg2rad(normal_deg)), np.sin(np.deg2rad(normal_deg))])
    point = 0.5 * (size - 1) + normal * rng.uniform(0.15, 0.3) * size
    hole_radius_px = None if settings.carbon_hole_radius_a is None \
        else round(settings.carbon_hole_radius_a / settings.pixel_size_a, 3)
    edge = CarbonEdgeTruth(point_px=np.round(point, 3).tolist(), normal_deg=round(normal_deg, 4),
                           carbon_area_fraction=0.0, hole_radius_px=hole_radius_px)
    signed = edge.distance_into_carbon_px(xx, yy).astype(np.float32)
    frame = slice(margin_px, margin_px + size)
    edge.carbon_area_fraction = round(float(np.mean(signed[frame, frame] > 0)), 4)
    return edge, signed


def _place_objects(rng: np.random.Generator, settings: SpaSimulationSettings, carbon: CarbonEdgeTruth | None,
                   extra: np.random.Generator, contaminants: list[ContaminantTruth]) -> list[ParticleTruth]:
    """Particles and junk away from the frame edge and the contaminants, at least `particle_min_separation`
    mean diameters apart; off the carbon except the `carbon_particle_fraction` placed on it (centre at least
    a quarter diameter in); a
    `particle_cluster_fraction` placed touching an earlier object."""
    size = settings.image_size_px
    diameter_px = settings.particle_diameter_px
    n_junk = int(round(settings.junk_fraction * settings.particles_per_micrograph))
    is_junk = np.zeros(settings.particles_per_micrograph, dtype=bool)
    is_junk[rng.choice(settings.particles_per_micrograph, size=n_junk, replace=False)] = True
    placed: list[tuple[float, float, float]] = []   # x, y, diameter (px)
    particles: list[ParticleTruth] = []
    separation = settings.particle_min_separation
    for junk in is_junk:
        object_diameter_px = diameter_px * (rng.uniform(0.5, 1.6) if junk else 1.0)
        edge_px = 0.6 * max(diameter_px, object_diameter_px)
        on_carbon = carbon is not None and settings.carbon_particle_fraction > 0 \
            and bool(extra.uniform() < settings.carbon_particle_fraction)
        clustered = bool(placed) and settings.particle_cluster_fraction > 0 \
            and bool(extra.uniform() < settings.particle_cluster_fraction)
        for _ in range(PLACEMENT_TRIES):
            x, y = rng.uniform(edge_px, size - 1 - edge_px, 2)
            if clustered:
                nx, ny, nd = placed[int(extra.integers(len(placed)))]
                angle, reach = extra.uniform(0, 2 * np.pi), separation * 0.5 * (nd + object_diameter_px)
                x, y = nx + reach * np.cos(angle), ny + reach * np.sin(angle)
                if not (edge_px <= x <= size - 1 - edge_px and edge_px <= y <= size - 1 - edge_px):
                    continue
            if carbon is not None:
                into_carbon = float(carbon.distance_into_carbon_px(x, y))
                if into_carbon < 0.25 * object_diameter_px if on_carbon else into_carbon > -0.5 * object_diameter_px:
                    continue
            if any(np.hypot(x - c.x_px, y - c.y_px) < c.radius_px + 0.5 * object_diameter_px for c in contaminants):
                continue
            if all(np.hypot(x - px, y - py) >= separation * 0.5 * (object_diameter_px + pd) - 1e-6
                   for px, py, pd in placed):
                break
        else:
            continue
        placed.append((x, y, object_diameter_px))
        angles = [0.0, 0.0, 0.0] if junk else random_orientations(rng, 1)[0].round(4).tolist()
        conformation = 0 if junk or settings.n_conformations == 1 else int(extra.integers(settings.n_conformations))
        particles.append(ParticleTruth(x_px=round(float(x), 4), y_px=round(float(y), 4), is_junk=bool(junk),
                                       diameter_a=round(object_diameter_px * settings.pixel_size_a, 3),
                                       rot_deg=angles[0], tilt_deg=angles[1], psi_deg=angles[2],
                                       conformation=conformation, on_carbon=on_carbon))
    return particles


def _objects_phase(rng: np.random.Generator, settings: SpaSimulationSettings, structure: StructureTruth,
                   particles: list[ParticleTruth], canvas_shape: tuple[int, int], margin_px: int) -> np.ndarray:
    """Phase (rad) of all particles and junk: every object is a set of Gaussian atoms, rendered at once per
    atom width (the particle's own, `settings.atom_sigma_a` for junk; the same in the easy preset)."""
    by_sigma_a: dict[float, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for particle in particles:
        centre_a = np.array([particle.x_px, particle.y_px]) * settings.pixel_size_a
        if particle.is_junk:
            atoms_xy_a, atom_weights = _junk_atoms(rng, settings, particle.diameter_a)
            sigma_a = settings.atom_sigma_a
        else:
            atoms_xy_a = projected_atoms_xy_a(structure, particle.rot_deg, particle.tilt_deg, particle.psi_deg,
                                              particle.conformation)
            atom_weights = np.asarray(structure.weights)
            sigma_a = structure.atom_sigma_a
        xy_a, weights = by_sigma_a.setdefault(sigma_a, ([], []))
        xy_a.append(atoms_xy_a + centre_a)
        weights.append(atom_weights)
    phase = np.zeros(canvas_shape, dtype=np.float32)
    area_px = settings.pixel_size_a**2
    for sigma_a, (xy_a, weights) in by_sigma_a.items():
        coords_px = np.concatenate(xy_a) / settings.pixel_size_a + margin_px
        phase += render_gaussians(coords_px[:, ::-1], np.concatenate(weights) / area_px, canvas_shape,
                                  sigma_a / settings.pixel_size_a)
    return phase


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
    if settings.particle_mass_kda is not None:
        # Aggregated, partly unfolded protein packs loosely: half protein density, dark by its thickness.
        total = AGGREGATE_PACKING * protein_phase_rad_per_a(settings.voltage_kv) * 4.0 / 3.0 * np.pi * volumes.sum()
    else:
        # Phase density of the particle's protein, spread as a ball: mean projected thickness of a ball is 4r/3.
        protein_rad_per_a = settings.particle_phase_rad / (4.0 / 3.0 * 0.5 * settings.particle_diameter_a)
        total = JUNK_DENSITY_FACTOR * protein_rad_per_a * 4.0 / 3.0 * np.pi * volumes.sum()
    return atoms[:, :2], np.full(n_atoms, total / n_atoms)
