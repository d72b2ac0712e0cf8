"""The synthetic particle: an asymmetric cluster of Gaussian pseudo-atoms, its orientations and its 3D map.

Orientations follow Relion: Euler angles (rot, tilt, psi) in degrees, ZYZ, and an atom at r in the
map lands at A·r in the projection (A from `euler_matrix`), projecting along z.
"""
from __future__ import annotations

import numpy as np

from .density import render_gaussians
from .protein import make_protein
from .settings import SpaSimulationSettings
from .truth import StructureTruth

N_LOBES = 5


def make_structure(settings: SpaSimulationSettings) -> StructureTruth:
    """The session's particle, the same for every movie: a protein of `particle_mass_kda` (see `protein`),
    or else the easy preset's pseudo-atom lobes."""
    if settings.particle_mass_kda is not None:
        return make_protein(settings.seed, settings.particle_mass_kda, settings.particle_shape,
                            settings.particle_diameter_a, settings.voltage_kv, settings.n_conformations)
    return _lobes(settings)


def _lobes(settings: SpaSimulationSettings) -> StructureTruth:
    """A lumpy, asymmetric particle of the asked diameter.

    Atoms fill a few overlapping spheres ("domains") of different sizes placed off-centre; the atom
    weights sum to the phase `particle_phase_rad` spread over the particle's projected disc.
    """
    rng = np.random.default_rng([settings.seed, 0])
    radius_a = 0.5 * settings.particle_diameter_a - 1.5 * settings.atom_sigma_a
    radius_a = max(radius_a, 0.25 * settings.particle_diameter_a)
    lobe_radii = rng.uniform(0.4, 0.7, N_LOBES) * radius_a
    lobe_centres = _random_in_ball(rng, N_LOBES) * (radius_a - lobe_radii)[:, None]
    volumes = lobe_radii**3
    lobe_of_atom = rng.choice(N_LOBES, size=settings.n_atoms, p=volumes / volumes.sum())
    atoms = lobe_centres[lobe_of_atom] + _random_in_ball(rng, settings.n_atoms) * lobe_radii[lobe_of_atom, None]
    weights = rng.uniform(0.5, 1.5, settings.n_atoms)
    atoms -= np.average(atoms, axis=0, weights=weights)
    atoms *= radius_a / np.linalg.norm(atoms, axis=1).max()
    disc_area_a2 = np.pi * (0.5 * settings.particle_diameter_a) ** 2
    weights *= settings.particle_phase_rad * disc_area_a2 / weights.sum()
    return StructureTruth(atoms_xyz_a=np.round(atoms, 4).tolist(), weights=np.round(weights, 6).tolist(),
                          atom_sigma_a=settings.atom_sigma_a)


def _random_in_ball(rng: np.random.Generator, n: int) -> np.ndarray:
    """n points uniform in the unit ball."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * rng.uniform(0.0, 1.0, (n, 1)) ** (1.0 / 3.0)


def euler_matrix(rot_deg: float, tilt_deg: float, psi_deg: float) -> np.ndarray:
    """Relion's rotation matrix A for ZYZ Euler angles (as Relion's Euler_angles2matrix)."""
    a, b, g = np.deg2rad([rot_deg, tilt_deg, psi_deg])
    ca, cb, cg = np.cos([a, b, g])
    sa, sb, sg = np.sin([a, b, g])
    return np.array([
        [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
        [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
        [sb * ca, sb * sa, cb],
    ])


def random_orientations(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) rot, tilt, psi in degrees, uniform over all 3D orientations."""
    rot = rng.uniform(-180.0, 180.0, n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(-180.0, 180.0, n)
    return np.stack([rot, tilt, psi], axis=1)


def projected_atoms_xy_a(structure: StructureTruth, rot_deg: float, tilt_deg: float, psi_deg: float,
                         conformation: int = 0) -> np.ndarray:
    """(n, 2) [x, y] positions (Å, relative to the particle centre) of the atoms seen in this orientation."""
    atoms = np.asarray(structure.conformation_xyz_a(conformation))
    rotated = atoms @ euler_matrix(rot_deg, tilt_deg, psi_deg).T
    return rotated[:, :2]


def render_volume(structure: StructureTruth, box_px: int, pixel_size_a: float) -> np.ndarray:
    """The particle as a (z, y, x) float32 map, centred at voxel box_px // 2 (Relion's origin).

    Voxels hold phase per voxel length, so summing along z gives the projected phase in rad.
    """
    atoms_px = np.asarray(structure.atoms_xyz_a) / pixel_size_a + box_px // 2
    weights = np.asarray(structure.weights) / pixel_size_a**2
    return render_gaussians(atoms_px[:, ::-1], weights, (box_px,) * 3, structure.atom_sigma_a / pixel_size_a)
