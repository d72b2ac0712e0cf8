"""Image formation in the microscope: weak-phase contrast through the CTF, coherence envelope, dose damage.

Intensity (relative to the unscattered beam) = T(x) · (1 + 2 · F⁻¹{CTF · E · F{φ}}), with φ the
projected phase, T the transmission (electrons not lost to inelastic scattering), CTF = -sin(χ) from
`engines.ctf_model` (negative at low frequency for underfocus, so protein is dark) and E = exp(-B k²/4).
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from ..engines.ctf_model import ctf_2d, frequency_grid
from .density import FFT_WORKERS

# Critical exposure Ne(k) = a·k^b + c (e⁻/Å², k in 1/Å) at 300 kV, Grant & Grigorieff 2015 (eLife 4:e06980);
# 0.8× at 200 kV as in that paper. Each frame's signal is multiplied by exp(-N / (2 Ne)).
_CRITICAL_A, _CRITICAL_B, _CRITICAL_C = 0.245, -1.665, 2.81


def contrast_image(phase_rad: np.ndarray, transmission: np.ndarray, pixel_size_a: float, defocus_u_a: float,
                   defocus_v_a: float, astigmatism_angle_deg: float, voltage_kv: float, cs_mm: float,
                   amplitude_contrast: float, bfactor_a2: float) -> np.ndarray:
    """T · 2 · F⁻¹{CTF · E · F{φ}}: the specimen's contrast as recorded (float32, same shape as the phase)."""
    shape = phase_rad.shape
    ctf = ctf_2d(shape, pixel_size_a, defocus_u_a, defocus_v_a, astigmatism_angle_deg, voltage_kv, cs_mm,
                 amplitude_contrast, rfft=True)
    freq, _ = frequency_grid(shape, pixel_size_a, rfft=True)
    transfer = 2.0 * ctf * np.exp(-0.25 * bfactor_a2 * freq * freq)
    spectrum = scipy.fft.rfft2(phase_rad, workers=FFT_WORKERS) * transfer
    return (transmission * scipy.fft.irfft2(spectrum, s=shape, workers=FFT_WORKERS)).astype(np.float32)


def critical_exposure_e_a2(shape: tuple[int, int], pixel_size_a: float, voltage_kv: float) -> np.ndarray:
    """Critical exposure (e⁻/Å²) on the rfft grid; infinite at k = 0 so the mean is never damaged."""
    freq, _ = frequency_grid(shape, pixel_size_a, rfft=True)
    critical = np.full_like(freq, np.inf)
    np.power(freq, _CRITICAL_B, where=freq > 0, out=critical)
    critical = np.where(freq > 0, _CRITICAL_A * critical + _CRITICAL_C, np.inf)
    return (critical * (0.8 if voltage_kv < 250 else 1.0)).astype(np.float32)


def exposure_filter(critical_e_a2: np.ndarray, accumulated_dose_e_a2: float) -> np.ndarray:
    """Amplitude of the signal left after `accumulated_dose_e_a2` (Grant & Grigorieff's exp(-N / 2Ne))."""
    return np.exp(-accumulated_dose_e_a2 / (2.0 * critical_e_a2)).astype(np.float32)
