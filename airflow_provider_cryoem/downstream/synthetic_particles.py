"""Ground-truth particle sets for the downstream stages' tests and benchmark.

The simulator's particle (`make_structure` + `render_volume`) is projected by Relion's own
`relion_project --ctf` at known angles and defocus, so 2D/3D programs see exactly the image model
they assume; white noise is then added to a chosen SNR. Junk images with known labels are planted
among them, as pickers find them (empty ice, carbon edges, aggregates of several particles), which
class selection should reject.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from ..io import read_mrc, write_mrc
from ..io.star import write_star
from ..simulate import SpaSimulationSettings, make_structure, render_volume

JUNK_KINDS = ("empty_ice", "carbon_edge", "aggregate")
PARTICLE = "particle"


class SyntheticParticleSettings(BaseModel):
    n_particles: int = Field(ge=2)
    junk_fraction: float = Field(0.0, ge=0, lt=1)
    box_px: int = Field(64, ge=16)
    pixel_size_a: float = Field(4.0, gt=0)
    particle_diameter_a: float = Field(180.0, gt=0)
    atom_sigma_a: float = Field(4.0, gt=0, description="Pseudo-atom width: sets how fast the signal fades "
                                                        "with resolution (B ≈ 8π²σ²).")
    snr: float = Field(0.1, gt=0, description="Signal variance inside the particle disc over noise variance.")
    particles_per_micrograph: int = Field(50, ge=1)
    defocus_range_a: tuple[float, float] = (10_000.0, 25_000.0)
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    seed: int = 0


class SyntheticParticles(BaseModel):
    """Where the set was written (paths relative to `root`) and what was planted."""

    root: str
    particles_star: str = Field(description="Relion particles STAR (no angles), image names relative to root.")
    truth_star: str = Field(description="The same particles with their true angles (for relion_reconstruct).")
    reference_map: str = Field(description="The noise-free map the particles were projected from.")
    is_junk: list[bool]
    kinds: list[str] = Field(description=f"Per image: {PARTICLE!r} or one of {JUNK_KINDS}.")
    image_names: list[str]


def make_particle_set(root: str | Path, settings: SyntheticParticleSettings,
                      folder: str = "Synthetic") -> SyntheticParticles:
    """Write `<root>/<folder>/{particles.mrcs, particles.star, truth.star, reference.mrc}`."""
    if shutil.which("relion_project") is None:
        raise FileNotFoundError("relion_project (Debian package relion) is needed to make synthetic particles")
    root = Path(root)
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(settings.seed)
    structure = make_structure(SpaSimulationSettings(particle_diameter_a=settings.particle_diameter_a,
                                                     pixel_size_a=settings.pixel_size_a, seed=settings.seed,
                                                     atom_sigma_a=settings.atom_sigma_a,
                                                     image_size_px=max(256, 2 * settings.box_px)))
    volume = render_volume(structure, settings.box_px, settings.pixel_size_a)
    write_mrc(out / "reference.mrc", volume, settings.pixel_size_a)

    n = settings.n_particles
    angles = _random_angles(rng, n)
    defocus = rng.uniform(*settings.defocus_range_a, n)
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnImagePixelSize": [settings.pixel_size_a],
        "rlnImageSize": [settings.box_px], "rlnImageDimensionality": [2], "rlnVoltage": [settings.voltage_kv],
        "rlnSphericalAberration": [settings.cs_mm], "rlnAmplitudeContrast": [settings.amplitude_contrast]})
    names = [f"{i + 1:06d}@{folder}/particles.mrcs" for i in range(n)]
    table = pd.DataFrame({
        "rlnImageName": names,
        "rlnMicrographName": [f"{folder}/mic_{i // settings.particles_per_micrograph:04d}.mrc" for i in range(n)],
        "rlnOpticsGroup": 1, "rlnDefocusU": defocus, "rlnDefocusV": defocus, "rlnDefocusAngle": 0.0})
    truth = table.assign(rlnAngleRot=angles[:, 0], rlnAngleTilt=angles[:, 1], rlnAnglePsi=angles[:, 2],
                         rlnOriginXAngst=0.0, rlnOriginYAngst=0.0)
    write_star(out / "truth.star", {"optics": optics, "particles": truth})
    subprocess.run(["relion_project", "--i", "reference.mrc", "--o", "clean", "--ang", "truth.star", "--ctf",
                    "--angpix", f"{settings.pixel_size_a:g}"], cwd=out, check=True, capture_output=True)
    clean = np.asarray(read_mrc(out / "clean.mrcs", mmap=False), dtype=np.float32)

    disc = _disc(settings.box_px, 0.5 * settings.particle_diameter_a / settings.pixel_size_a)
    noise_sigma = float(clean[:, disc].std()) / np.sqrt(settings.snr)
    is_junk = rng.random(n) < settings.junk_fraction
    kinds = [JUNK_KINDS[index % len(JUNK_KINDS)] if junk else PARTICLE for index, junk in enumerate(is_junk)]
    images = clean.copy()
    for index in np.flatnonzero(is_junk):
        images[index] = _junk(rng, settings, clean, float(clean[:, disc].std()), kinds[index])
    images += rng.normal(0.0, noise_sigma, images.shape).astype(np.float32)
    background = ~_disc(settings.box_px, 0.5 * settings.box_px * 0.9)
    images -= images[:, background].mean(axis=1)[:, None, None]
    images /= images[:, background].std(axis=1)[:, None, None]
    write_mrc(out / "particles.mrcs", images.astype(np.float32), settings.pixel_size_a, is_stack=True)
    write_star(out / "particles.star", {"optics": optics, "particles": table})
    (out / "clean.mrcs").unlink()
    (out / "clean.star").unlink(missing_ok=True)
    return SyntheticParticles(root=str(root), particles_star=f"{folder}/particles.star",
                              truth_star=f"{folder}/truth.star", reference_map=f"{folder}/reference.mrc",
                              is_junk=is_junk.tolist(), kinds=kinds, image_names=names)


def _random_angles(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) rot, tilt, psi (deg), uniform over orientations."""
    return np.stack([rng.uniform(-180, 180, n), np.rad2deg(np.arccos(rng.uniform(-1, 1, n))),
                     rng.uniform(-180, 180, n)], axis=1)


def _disc(box_px: int, radius_px: float) -> np.ndarray:
    yy, xx = np.mgrid[:box_px, :box_px] - box_px // 2
    return np.hypot(xx, yy) <= radius_px


def _junk(rng: np.random.Generator, settings: SyntheticParticleSettings, clean: np.ndarray, signal_sigma: float,
          kind: str) -> np.ndarray:
    """One junk image before noise, as pickers find them: empty ice, a carbon edge, an aggregate."""
    box = settings.box_px
    yy, xx = (np.mgrid[:box, :box] - box // 2).astype(np.float32)
    if kind == "empty_ice":  # nothing but a gentle thickness gradient
        angle = rng.uniform(0, 2 * np.pi)
        return (0.3 * signal_sigma * (xx * np.cos(angle) + yy * np.sin(angle)) / box).astype(np.float32)
    if kind == "carbon_edge":  # dense carbon film (darker than ice: inverted, it is bright) up to a straight edge
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.tanh((xx * np.cos(angle) + yy * np.sin(angle) - rng.uniform(-0.25, 0.25) * box) / 1.5)
        return (2.0 * signal_sigma * (ramp + 1.0)).astype(np.float32)
    # aggregate: a clump of 3-5 overlapping particles, spilling over the mask
    diameter_px = settings.particle_diameter_a / settings.pixel_size_a
    image = np.zeros((box, box), np.float32)
    for other in rng.choice(len(clean), rng.integers(3, 6), replace=False):
        shift = np.rint(rng.uniform(-0.45, 0.45, 2) * diameter_px).astype(int)
        image += np.roll(clean[other], tuple(shift), axis=(0, 1))
    return image
