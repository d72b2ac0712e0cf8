"""The contrast transfer function, shared by the simulator and the CTF estimator.

Conventions: defocus in Å, positive = underfocus; defocus_u_a >= defocus_v_a; the astigmatism
angle is the direction of defocus U, degrees counter-clockwise from the +x (column) axis, as in
CTFFIND and Relion's rlnDefocusAngle.
"""
from __future__ import annotations

import numpy as np


def electron_wavelength_a(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    volts = voltage_kv * 1e3
    return 12.2642598 / np.sqrt(volts * (1.0 + 0.978466e-6 * volts))


def frequency_grid(shape: tuple[int, int], pixel_size_a: float, rfft: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequency magnitude (1/Å) and azimuth (rad, from +x) for an image of `shape`.

    With `rfft` the grid matches numpy's rfft2 half-spectrum layout, else the full fft2 layout.
    """
    ny, nx = shape
    fy = np.fft.fftfreq(ny, d=pixel_size_a).astype(np.float32)
    fx = (np.fft.rfftfreq(nx, d=pixel_size_a) if rfft else np.fft.fftfreq(nx, d=pixel_size_a)).astype(np.float32)
    gx, gy = np.meshgrid(fx, fy)
    return np.hypot(gx, gy), np.arctan2(gy, gx)


def defocus_at_azimuth_a(azimuth_rad: np.ndarray, defocus_u_a: float, defocus_v_a: float,
                         astigmatism_angle_deg: float) -> np.ndarray:
    """Effective defocus (Å) along each azimuth for an astigmatic CTF."""
    mean = 0.5 * (defocus_u_a + defocus_v_a)
    half_diff = 0.5 * (defocus_u_a - defocus_v_a)
    return mean + half_diff * np.cos(2.0 * (azimuth_rad - np.deg2rad(astigmatism_angle_deg)))


def ctf_phase(spatial_freq: np.ndarray, defocus_a: np.ndarray | float, voltage_kv: float, cs_mm: float,
              amplitude_contrast: float, phase_shift_rad: float = 0.0) -> np.ndarray:
    """Total phase χ (rad) including the amplitude-contrast term, so that CTF = -sin(χ)."""
    wavelength = electron_wavelength_a(voltage_kv)
    cs_a = cs_mm * 1e7
    k2 = spatial_freq * spatial_freq
    chi = np.pi * wavelength * defocus_a * k2 - 0.5 * np.pi * cs_a * wavelength**3 * k2 * k2
    return chi + phase_shift_rad + np.arctan2(amplitude_contrast, np.sqrt(1.0 - amplitude_contrast**2))


def ctf_2d(shape: tuple[int, int], pixel_size_a: float, defocus_u_a: float, defocus_v_a: float,
           astigmatism_angle_deg: float, voltage_kv: float, cs_mm: float, amplitude_contrast: float,
           phase_shift_rad: float = 0.0, rfft: bool = False) -> np.ndarray:
    """The 2D CTF on an fft2 (or rfft2) grid, float32; negative at low frequency for underfocus."""
    freq, azimuth = frequency_grid(shape, pixel_size_a, rfft=rfft)
    defocus = defocus_at_azimuth_a(azimuth, defocus_u_a, defocus_v_a, astigmatism_angle_deg)
    chi = ctf_phase(freq, defocus, voltage_kv, cs_mm, amplitude_contrast, phase_shift_rad)
    return (-np.sin(chi)).astype(np.float32)
