"""The specimen of one tilt series as a phantom volume: vesicles, macromolecules and gold in a slab of ice.

The volume is `(nz, ny, nx)` float32 in `engines/tomo_projection.py`'s frame (y = tilt axis, centre on the
axis, z up), sampled at `settings.voxel_size_a`. Voxels hold phase per voxel length (rad) relative to the
ice around them, so a line integral (`project_volume`) is the projected phase in rad. The ice itself
(a flat slab: a constant phase that no image shows) is left out; its thickness acts through the path
length in image formation. The volume reaches as far from the axis as the most tilted view of the canvas
sees, so high tilts show specimen right to their edges; objects fill it at the density asked for the
0° field of view.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from .density import render_gaussians
from .structure import euler_matrix, random_orientations
from .tomo_settings import PROTEIN_PHASE_RAD_PER_A, TomoSimulationSettings
from .tomo_truth import TomoObjectTruth
from .truth import StructureTruth

# Lipid bilayer: head-group layers ~4 nm apart, denser than water, and a hydrocarbon core less dense than it.
# Electron densities of a PC bilayer (Nagle & Tristram-Nagle 2000, BBA 1469:159): head groups ~0.45, chains
# ~0.29-0.30, water 0.33 e⁻/Å³; protein is ~0.43, so head groups are ~1.2× protein's excess, chains ~-0.4×.
LEAFLET_HALF_SEPARATION_A = 20.0
HEADGROUP_SIGMA_A = 5.0
HEADGROUP_EXCESS = 1.2
CORE_SIGMA_A = 9.0
CORE_EXCESS = -0.4
MEMBRANE_HALF_WIDTH_A = 30.0
# Gold: mean inner potential ~25 V above ice (Au ~30 V) × σ(300 kV) ≈ 0.00065 rad/(V·Å); it also scatters
# electrons outside the objective aperture, which `GOLD_ATTENUATION_LENGTH_A` stands for (a 10 nm bead
# stops about half the beam at its centre, as beads look in tilt images).
GOLD_PHASE_RAD_PER_A = 0.016
GOLD_ATTENUATION_LENGTH_A = 150.0
# Gaps kept between objects and to the slab surfaces (Å).
CLEARANCE_A = 30.0
PLACEMENT_TRIES = 200
SPLINE_PADDING_VOXELS = 3


@dataclass
class Phantom:
    """One series' specimen: phase volume, gold occupancy (None without gold) and the planted objects."""

    volume: np.ndarray
    gold_occupancy: np.ndarray | None
    voxel_size_a: float
    objects: list[TomoObjectTruth]


def phantom_shape(settings: TomoSimulationSettings, canvas_px: int) -> tuple[int, int, int]:
    """(nz, ny, nx) that holds the slab and everything any tilt shows on a `canvas_px`² canvas.

    In the axis frame the canvas spans `canvas · (|cos α| + |sin α|)` pixels; at the largest tilt θ a ray
    through its edge crosses the slab up to (half window + half thickness · sin θ) / cos θ from the axis.
    """
    alpha = math.radians(settings.tilt_axis_deg)
    window_a = canvas_px * (abs(math.cos(alpha)) + abs(math.sin(alpha))) * settings.pixel_size_a
    theta = math.radians(max(abs(a) for a in settings.tilt_angles_deg()))
    thickness_a = 10.0 * settings.thickness_nm
    reach_a = (0.5 * window_a + 0.5 * thickness_a * math.sin(theta)) / math.cos(theta)
    voxel = settings.voxel_size_a
    pad = 2 * SPLINE_PADDING_VOXELS
    return (math.ceil(thickness_a / voxel), math.ceil(window_a / voxel) + pad, math.ceil(2.0 * reach_a / voxel) + pad)


def build_phantom(settings: TomoSimulationSettings, series_index: int, structure: StructureTruth,
                  canvas_px: int) -> Phantom:
    """Place the objects of series `series_index` and render them into the phantom volume."""
    rng = np.random.default_rng([settings.seed, 20, series_index])
    shape = phantom_shape(settings, canvas_px)
    voxel = settings.voxel_size_a
    half_extent_a = 0.5 * voxel * (np.array(shape[::-1]) - 1 - 2 * SPLINE_PADDING_VOXELS)  # x, y, z
    half_extent_a[2] = 5.0 * settings.thickness_nm
    fov_a2 = (settings.image_size_px * settings.pixel_size_a) ** 2
    density_scale = 4.0 * half_extent_a[0] * half_extent_a[1] / fov_a2

    placer = _Placer(rng, half_extent_a)
    vesicles = placer.vesicles(round(settings.n_vesicles * density_scale), settings)
    particles = placer.particles(round(settings.n_particles * density_scale), settings, vesicles)
    gold = placer.gold(round(settings.n_gold * density_scale), settings)
    objects = vesicles + particles + gold

    volume = _render_particles(settings, structure, particles, shape)
    for vesicle in vesicles:
        _add_membrane(volume, vesicle, voxel)
    occupancy = None
    if gold:
        occupancy = np.zeros(shape, dtype=np.float32)
        for bead in gold:
            _add_ball(occupancy, bead, voxel)
        volume += (GOLD_PHASE_RAD_PER_A * voxel) * occupancy
    return Phantom(volume=volume, gold_occupancy=occupancy, voxel_size_a=voxel, objects=objects)


class _Placer:
    """Random non-overlapping placement inside the slab; keeps (centre, outer radius) of what is placed."""

    def __init__(self, rng: np.random.Generator, half_extent_a: np.ndarray) -> None:
        self.rng = rng
        self.half = half_extent_a
        self.placed: list[tuple[np.ndarray, float]] = []

    def _free(self, centre: np.ndarray, radius: float) -> bool:
        return all(np.linalg.norm(centre - c) >= radius + r + CLEARANCE_A for c, r in self.placed)

    def _draw(self, radius: float) -> np.ndarray | None:
        """A free position for a ball of `radius` wholly inside the volume and the slab, or None."""
        room = self.half - radius - CLEARANCE_A
        if np.any(room <= 0):
            return None
        for _ in range(PLACEMENT_TRIES):
            centre = self.rng.uniform(-room, room)
            if self._free(centre, radius):
                return centre
        return None

    def vesicles(self, count: int, settings: TomoSimulationSettings) -> list[TomoObjectTruth]:
        out = []
        for _ in range(count):
            radius = float(self.rng.uniform(settings.vesicle_radius_min_a, settings.vesicle_radius_max_a))
            centre = self._draw(radius + MEMBRANE_HALF_WIDTH_A)
            if centre is None:
                continue
            self.placed.append((centre, radius + MEMBRANE_HALF_WIDTH_A))
            out.append(TomoObjectTruth(kind="vesicle", centre_a=np.round(centre, 3).tolist(), radius_a=round(radius, 3)))
        return out

    def particles(self, count: int, settings: TomoSimulationSettings,
                  vesicles: list[TomoObjectTruth]) -> list[TomoObjectTruth]:
        """Macromolecules: `inside_fraction` of them in vesicle lumens (clear of the membrane), the rest outside."""
        radius = 0.5 * settings.particle_diameter_a
        lumens = [(i, np.array(v.centre_a), v.radius_a - MEMBRANE_HALF_WIDTH_A - CLEARANCE_A - radius)
                  for i, v in enumerate(vesicles)]
        lumens = [lumen for lumen in lumens if lumen[2] > 0]
        inside_particles: list[tuple[np.ndarray, float]] = []
        out = []
        for is_inside in self.rng.uniform(size=count) < settings.inside_fraction:
            centre, holder = None, None
            if is_inside and lumens:
                holder, middle, room = lumens[int(self.rng.integers(len(lumens)))]
                for _ in range(PLACEMENT_TRIES):
                    candidate = middle + _random_in_ball(self.rng) * room
                    if all(np.linalg.norm(candidate - c) >= 2 * radius + CLEARANCE_A for c, _ in inside_particles):
                        centre = candidate
                        break
                if centre is not None:
                    inside_particles.append((centre, radius))
            else:
                centre = self._draw(radius)
                if centre is not None:
                    self.placed.append((centre, radius))
            if centre is None:
                continue
            rot, tilt, psi = random_orientations(self.rng, 1)[0].round(4).tolist()
            out.append(TomoObjectTruth(kind="particle", centre_a=np.round(centre, 3).tolist(), radius_a=radius,
                                       rot_deg=rot, tilt_deg=tilt, psi_deg=psi, inside_vesicle=holder))
        return out

    def gold(self, count: int, settings: TomoSimulationSettings) -> list[TomoObjectTruth]:
        radius = 0.5 * settings.gold_diameter_a
        out = []
        for _ in range(count):
            centre = self._draw(radius)
            if centre is None:
                continue
            self.placed.append((centre, radius))
            out.append(TomoObjectTruth(kind="gold", centre_a=np.round(centre, 3).tolist(), radius_a=radius))
        return out


def _random_in_ball(rng: np.random.Generator) -> np.ndarray:
    direction = rng.normal(size=3)
    return direction / np.linalg.norm(direction) * rng.uniform() ** (1.0 / 3.0)


def _voxel_of(centre_a: list[float], voxel_a: float, shape: tuple[int, int, int]) -> np.ndarray:
    """(z, y, x) voxel coordinates of a phantom position [x, y, z] (Å)."""
    return np.asarray(centre_a[::-1]) / voxel_a + (np.asarray(shape) - 1) / 2.0


def _render_particles(settings: TomoSimulationSettings, structure: StructureTruth,
                      particles: list[TomoObjectTruth], shape: tuple[int, int, int]) -> np.ndarray:
    """Every macromolecule's pseudo-atoms, rotated and placed, rendered in one pass (phase per voxel)."""
    if not particles:
        return np.zeros(shape, dtype=np.float32)
    voxel = settings.voxel_size_a
    atoms = np.asarray(structure.atoms_xyz_a)
    coords = [atoms @ euler_matrix(p.rot_deg, p.tilt_deg, p.psi_deg).T + np.asarray(p.centre_a) for p in particles]
    coords_vox = np.concatenate(coords)[:, ::-1] / voxel + (np.asarray(shape) - 1) / 2.0
    weights = np.tile(np.asarray(structure.weights), len(particles)) / voxel**2
    sigma_vox = max(structure.atom_sigma_a / voxel, 0.5)
    return render_gaussians(coords_vox, weights, shape, sigma_vox)


def _box(centre_vox: np.ndarray, reach_vox: float, shape: tuple[int, int, int]) -> tuple[slice, ...] | None:
    low = np.maximum(np.floor(centre_vox - reach_vox).astype(int), 0)
    high = np.minimum(np.ceil(centre_vox + reach_vox).astype(int) + 1, shape)
    if np.any(high <= low):
        return None
    return tuple(slice(a, b) for a, b in zip(low, high))


def _distance_a(box: tuple[slice, ...], centre_vox: np.ndarray, voxel_a: float) -> np.ndarray:
    grids = np.ogrid[box]
    return voxel_a * np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre_vox)))


def _add_membrane(volume: np.ndarray, vesicle: TomoObjectTruth, voxel_a: float) -> None:
    """A spherical bilayer: two head-group Gaussians ±20 Å from the mid-plane radius and a lighter core.

    Widths are at least half a voxel (so the grid samples them) with the same area, so the projected
    phase does not depend on the sampling.
    """
    centre = _voxel_of(vesicle.centre_a, voxel_a, volume.shape)
    reach_a = vesicle.radius_a + MEMBRANE_HALF_WIDTH_A + 3 * CORE_SIGMA_A
    box = _box(centre, reach_a / voxel_a, volume.shape)
    if box is None:
        return
    offset = _distance_a(box, centre, voxel_a) - vesicle.radius_a
    profile = np.zeros_like(offset)
    for position, sigma, excess in ((-LEAFLET_HALF_SEPARATION_A, HEADGROUP_SIGMA_A, HEADGROUP_EXCESS),
                                    (LEAFLET_HALF_SEPARATION_A, HEADGROUP_SIGMA_A, HEADGROUP_EXCESS),
                                    (0.0, CORE_SIGMA_A, CORE_EXCESS)):
        width = math.hypot(sigma, 0.5 * voxel_a)
        profile += excess * sigma / width * np.exp(-0.5 * ((offset - position) / width) ** 2)
    volume[box] += (PROTEIN_PHASE_RAD_PER_A * voxel_a * profile).astype(np.float32)


def _add_ball(occupancy: np.ndarray, ball: TomoObjectTruth, voxel_a: float) -> None:
    """Fraction of each voxel inside the ball, with a half-voxel soft edge."""
    centre = _voxel_of(ball.centre_a, voxel_a, occupancy.shape)
    box = _box(centre, ball.radius_a / voxel_a + 2, occupancy.shape)
    if box is None:
        return
    edge = (_distance_a(box, centre, voxel_a) - ball.radius_a) / (0.5 * voxel_a)
    occupancy[box] += (0.5 * (1.0 - erf(edge / math.sqrt(2.0)))).astype(np.float32)
