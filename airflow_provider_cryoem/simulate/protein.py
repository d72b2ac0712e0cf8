"""A protein of a given mass at its true scattering strength: residue-level pseudo-atoms filling globular or
elongated domains, with hinged conformations.

The phase a protein adds on top of the ice it displaces is σ·ΔV per Å of path, with σ the interaction
constant and ΔV the difference of mean inner potentials. Liquid water's is 4.48 V (Yesibolati et al.
2020, Phys. Rev. Lett. 124:065502); scaling by density and neutral-atom scattering factors f(0) (water
0.17 Å/Da at 1.00 g/cm³, protein 0.21 Å/Da at 1.35 g/cm³) gives 4.2 V for vitreous ice (0.94 g/cm³) and
7.3 V for protein, the ~7 V usually quoted. Protein occupies 1.21 Å³/Da (Fischer et al. 2004).
"""
from __future__ import annotations

import numpy as np

from ..engines.ctf_model import electron_wavelength_a
from .truth import StructureTruth

ICE_MEAN_INNER_POTENTIAL_V = 4.2
PROTEIN_MEAN_INNER_POTENTIAL_V = 7.3
PROTEIN_VOLUME_A3_PER_DA = 1.21
RESIDUE_MASS_DA = 110.0
RESIDUE_SIGMA_A = 1.6          # width of one residue's density (about a Cα-centred blob)
HINGE_STEP_DEG = 12.0          # extra swing of the hinged domain per conformation
N_DOMAINS = 4
ELECTRON_REST_ENERGY_KEV = 510.999


def interaction_constant_rad_per_v_a(voltage_kv: float) -> float:
    """σ = 2π/(λV)·(mc² + eV)/(2mc² + eV): phase per volt·Å of projected potential (6.5e-4 at 300 kV)."""
    wavelength_a = electron_wavelength_a(voltage_kv)
    relativistic = (ELECTRON_REST_ENERGY_KEV + voltage_kv) / (2 * ELECTRON_REST_ENERGY_KEV + voltage_kv)
    return float(2 * np.pi / (wavelength_a * voltage_kv * 1e3) * relativistic)


def protein_phase_rad_per_a(voltage_kv: float) -> float:
    """Phase added per Å of protein path, over the ice it displaces."""
    return interaction_constant_rad_per_v_a(voltage_kv) * (PROTEIN_MEAN_INNER_POTENTIAL_V
                                                           - ICE_MEAN_INNER_POTENTIAL_V)


def make_protein(seed: int, mass_kda: float, shape: str, length_a: float, voltage_kv: float,
                 n_conformations: int) -> StructureTruth:
    """Residue blobs at protein density filling N_DOMAINS spherical domains (a compact ball, or a rod
    `length_a` long), centred; the weights (rad·Å²) sum to the mass's projected phase. Extra conformations
    swing the last domain about its contact with the rest."""
    rng = np.random.default_rng([seed, 0])
    volume_a3 = mass_kda * 1e3 * PROTEIN_VOLUME_A3_PER_DA
    centres, radii = _domains(rng, volume_a3, shape, length_a)
    n_residues = int(round(mass_kda * 1e3 / RESIDUE_MASS_DA))
    domain_of = rng.choice(N_DOMAINS, size=n_residues, p=radii**3 / (radii**3).sum())
    atoms = centres[domain_of] + _in_ball(rng, n_residues) * radii[domain_of, None]
    atoms -= atoms.mean(axis=0)
    total_rad_a2 = protein_phase_rad_per_a(voltage_kv) * volume_a3
    weights = np.full(n_residues, total_rad_a2 / n_residues)
    hinged = domain_of == N_DOMAINS - 1
    pivot = _pivot(atoms, hinged)
    axis = np.cross(atoms[hinged].mean(axis=0) - pivot, rng.normal(size=3))
    axis /= np.linalg.norm(axis)
    conformations = [_rotate_about(atoms, hinged, pivot, axis, HINGE_STEP_DEG * c)
                     for c in range(1, n_conformations)]
    return StructureTruth(atoms_xyz_a=np.round(atoms, 3).tolist(), weights=np.round(weights, 6).tolist(),
                          atom_sigma_a=RESIDUE_SIGMA_A,
                          conformations_xyz_a=[np.round(c, 3).tolist() for c in conformations])


def _domains(rng: np.random.Generator, volume_a3: float, shape: str,
             length_a: float) -> tuple[np.ndarray, np.ndarray]:
    """Domain centres (Å) and radii holding `volume_a3` in all: along a rod of `length_a`, or in a ball."""
    share = rng.uniform(0.7, 1.3, N_DOMAINS)
    share /= share.sum()
    radii = (3 * volume_a3 * share / (4 * np.pi)) ** (1 / 3)
    if shape == "elongated":
        # Overlapping spheres along x, ends at ±length/2; small sideways wobble so the rod is not straight.
        along = np.linspace(-0.5 * length_a + radii[0], 0.5 * length_a - radii[-1], N_DOMAINS)
        wobble = rng.normal(scale=0.15, size=(N_DOMAINS, 2)) * radii[:, None]
        return np.column_stack([along, wobble]), radii
    overall_a = (3 * volume_a3 / (4 * np.pi)) ** (1 / 3)
    directions = rng.normal(size=(N_DOMAINS, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions * (overall_a - 0.6 * radii)[:, None], radii


def _in_ball(rng: np.random.Generator, n: int) -> np.ndarray:
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * rng.uniform(0.0, 1.0, (n, 1)) ** (1.0 / 3.0)


def _pivot(atoms: np.ndarray, hinged: np.ndarray) -> np.ndarray:
    """The hinged domain's atom closest to the rest of the protein's centre: where the hinge sits."""
    rest_centre = atoms[~hinged].mean(axis=0)
    return atoms[hinged][np.argmin(np.linalg.norm(atoms[hinged] - rest_centre, axis=1))]


def _rotate_about(atoms: np.ndarray, moving: np.ndarray, pivot: np.ndarray, axis: np.ndarray,
                  angle_deg: float) -> np.ndarray:
    """Rodrigues rotation of the `moving` atoms about `axis` through `pivot`."""
    angle = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    out = atoms.copy()
    out[moving] = (atoms[moving] - pivot) @ rotation.T + pivot
    return out
