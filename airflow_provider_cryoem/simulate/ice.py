"""What real specimens add around the particles: amorphous ice and carbon with their own power spectra,
smooth ice-thickness variation, and crystalline-ice contaminants.

Amorphous solids scatter as randomly packed molecules: the projected phase of a layer t thick has the
power spectrum P(k) = (t / v) · f² · S(k) · |form(k)|² (rad²·Å²), with v the volume per molecule, f = σ·V·v
its integrated phase (σ interaction constant, V mean inner potential), S(k) the structure factor and the
form factor of one molecule. S is small at low frequency (a dense liquid is nearly incompressible), peaks at
the first diffraction ring (3.7 Å for vitreous ice, the "ice ring" of every cryo-EM power spectrum) and
tends to 1 beyond.
"""
from __future__ import annotations

import numpy as np
import scipy.fft
from scipy.special import erf

from .density import FFT_WORKERS
from .protein import ICE_MEAN_INNER_POTENTIAL_V, interaction_constant_rad_per_v_a
from .truth import ContaminantTruth

ANGSTROM3_PER_DA_AT_1_G_CM3 = 1.6605
WATER_VOLUME_A3 = 18.015 * ANGSTROM3_PER_DA_AT_1_G_CM3 / 0.94   # vitreous ice, 0.94 g/cm³
ICE_RING_A = 3.7
# Amorphous carbon: 2.0 g/cm³; its mean inner potential scaled from ice's by density and f(0) per Da (2.45×).
CARBON_VOLUME_A3 = 12.011 * ANGSTROM3_PER_DA_AT_1_G_CM3 / 2.0
CARBON_MEAN_INNER_POTENTIAL_V = 10.3
MOLECULE_FORM_SIGMA_A = 0.5       # width of one molecule's (or atom's) projected potential
STRUCTURE_FACTOR_AT_ZERO = 0.03     # ρ·kT·compressibility: 0.06 for water at 300 K, frozen in near 136 K
STRUCTURE_FACTOR_RISE_PER_A = 0.3   # S stays near S(0) up to about 1/5 Å⁻¹, then rises steeply into the ring
RING_PEAK_HEIGHT = 1.5
RING_WIDTH_PER_A = 0.02
# Crystalline ice: Bragg reflections scatter most electrons out of the objective aperture, so a crystal is
# far darker than its thickness of vitreous ice; (100) planes of hexagonal ice are 3.9 Å apart.
CRYSTAL_EXTINCTION_LENGTH_A = 1000.0
CRYSTAL_LATTICE_SPACING_A = 3.9
CRYSTAL_LATTICE_PHASE_RAD = 0.3
CRYSTAL_EDGE_PHASE_RAD = 1.0
UM2_IN_A2 = 1e8


def amorphous_phase_psd(freq_per_a: np.ndarray, molecule_volume_a3: float, mean_inner_potential_v: float,
                        ring_a: float | None, voltage_kv: float) -> np.ndarray:
    """P(k) (rad²·Å²) of a 1 Å thick amorphous layer; thickness t multiplies it by t. Without a ring the
    packing is taken as random (S = 1): evaporated carbon films are porous and rough, which is why their
    Thon rings are so strong."""
    molecule_rad_a2 = interaction_constant_rad_per_v_a(voltage_kv) * mean_inner_potential_v * molecule_volume_a3
    structure = 1.0 if ring_a is None else (
        1.0 - (1.0 - STRUCTURE_FACTOR_AT_ZERO) * np.exp(-(freq_per_a / STRUCTURE_FACTOR_RISE_PER_A) ** 8)
        + RING_PEAK_HEIGHT * np.exp(-0.5 * ((freq_per_a - 1.0 / ring_a) / RING_WIDTH_PER_A) ** 2))
    form = np.exp(-(2 * np.pi * MOLECULE_FORM_SIGMA_A * freq_per_a) ** 2)
    return (molecule_rad_a2**2 / molecule_volume_a3 * structure * form).astype(np.float32)


def amorphous_phase_rad(rng: np.random.Generator, thickness_a: np.ndarray, pixel_size_a: float,
                        voltage_kv: float, material: str = "ice") -> np.ndarray:
    """A random phase image of amorphous ice (or carbon) `thickness_a` thick (per pixel, slowly varying)."""
    shape = thickness_a.shape
    volume, potential, ring = ((WATER_VOLUME_A3, ICE_MEAN_INNER_POTENTIAL_V, ICE_RING_A) if material == "ice"
                               else (CARBON_VOLUME_A3, CARBON_MEAN_INNER_POTENTIAL_V, None))
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(shape[0]), np.fft.rfftfreq(shape[1]), indexing="ij")) / pixel_size_a
    psd = amorphous_phase_psd(freq, volume, potential, ring, voltage_kv)
    # A unit white image has E|rfft|² = N pixels; the field's Fourier coefficients need N·P(k)/a².
    white = scipy.fft.rfft2(rng.standard_normal(shape, dtype=np.float32), workers=FFT_WORKERS)
    field = scipy.fft.irfft2(white * (np.sqrt(psd) / pixel_size_a), s=shape, workers=FFT_WORKERS)
    return (np.sqrt(np.maximum(thickness_a, 0.0)) * field).astype(np.float32)


def smooth_variation(rng: np.random.Generator, shape: tuple[int, int], rms: float, length_px: float) -> np.ndarray:
    """A smooth zero-mean Gaussian random field: white noise blurred by a Gaussian of σ = `length_px`, scaled
    so that an unbounded field has the given RMS (white noise blurred so has variance 1/(4πσ²)); a canvas
    smaller than the length shows less of it, as a small field of view sees a smooth variation as a slope."""
    if rms == 0:
        return np.zeros(shape, dtype=np.float32)
    fy, fx = np.fft.fftfreq(shape[0]), np.fft.rfftfreq(shape[1])
    transfer = np.exp(-2 * np.pi**2 * length_px**2 * (fy[:, None] ** 2 + fx[None, :] ** 2))
    transfer[0, 0] = 0.0
    white = scipy.fft.rfft2(rng.standard_normal(shape, dtype=np.float32), workers=FFT_WORKERS)
    field = scipy.fft.irfft2(white * transfer, s=shape, workers=FFT_WORKERS)
    return (rms * np.sqrt(4 * np.pi) * length_px * field).astype(np.float32)


def draw_contaminants(rng: np.random.Generator, per_um2: float, size_px: int,
                      pixel_size_a: float) -> list[ContaminantTruth]:
    """Poisson-many hexagonal ice crystals, 300-1500 Å across, anywhere in the frame."""
    area_um2 = (size_px * pixel_size_a) ** 2 / UM2_IN_A2
    crystals = []
    for _ in range(int(rng.poisson(per_um2 * area_um2))):
        x, y = rng.uniform(0, size_px - 1, 2)
        crystals.append(ContaminantTruth(x_px=round(float(x), 3), y_px=round(float(y), 3),
                                         radius_px=round(float(rng.uniform(150, 750)) / pixel_size_a, 3),
                                         thickness_a=round(float(rng.uniform(1000, 3000)), 1)))
    return crystals


def render_contaminants(rng: np.random.Generator, crystals: list[ContaminantTruth], canvas_shape: tuple[int, int],
                        margin_px: int, pixel_size_a: float) -> tuple[np.ndarray, np.ndarray]:
    """(phase rad, log transmission) of the crystals on the canvas: a soft-edged hexagon, dark by Bragg
    extinction, with a phase step at its rim and 3.9 Å lattice fringes inside."""
    phase = np.zeros(canvas_shape, dtype=np.float32)
    log_transmission = np.zeros(canvas_shape, dtype=np.float32)
    for crystal in crystals:
        cx, cy, radius = crystal.x_px + margin_px, crystal.y_px + margin_px, crystal.radius_px
        y0, y1 = max(int(cy - radius - 3), 0), min(int(cy + radius + 4), canvas_shape[0])
        x0, x1 = max(int(cx - radius - 3), 0), min(int(cx + radius + 4), canvas_shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        turn = rng.uniform(0, np.pi / 3)
        # Depth inside a hexagon: its apothem minus the distance from the centre along each face normal.
        depth = np.minimum.reduce([radius * np.cos(np.pi / 6)
                                   - np.abs((xx - cx) * np.cos(turn + i * np.pi / 3)
                                            + (yy - cy) * np.sin(turn + i * np.pi / 3)) for i in range(3)])
        mask = 0.5 * (1.0 + erf(depth / 1.5))
        lattice_angle = rng.uniform(0, np.pi)
        fringes = np.cos(2 * np.pi * ((xx - cx) * np.cos(lattice_angle) + (yy - cy) * np.sin(lattice_angle))
                         * pixel_size_a / CRYSTAL_LATTICE_SPACING_A)
        phase[y0:y1, x0:x1] += mask * (CRYSTAL_EDGE_PHASE_RAD + CRYSTAL_LATTICE_PHASE_RAD * fringes)
        log_transmission[y0:y1, x0:x1] -= mask * crystal.thickness_a / CRYSTAL_EXTINCTION_LENGTH_A
    return phase, log_transmission
