"""Fourier-space helpers for motion correction: frequency grids, cropping (binning) and sub-pixel shifts.

Spectra are half-plane `rfft2` arrays (..., ny, nx // 2 + 1) of real images of shape (ny, nx); every
real shape used here is even, so cropping keeps the layout simple.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.fft


def frequencies(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(ky column, kx row) in cycles per pixel for the rfft2 grid of a real image of `shape`."""
    ny, nx = shape
    ky = scipy.fft.fftfreq(ny).astype(np.float32)[:, None]
    kx = scipy.fft.rfftfreq(nx).astype(np.float32)[None, :]
    return ky, kx


def radius_inv_a(shape: tuple[int, int], pixel_size_a: float) -> np.ndarray:
    """|k| in 1/Å on the rfft2 grid of a real image of `shape` with `pixel_size_a`."""
    ky, kx = frequencies(shape)
    return np.sqrt(ky**2 + kx**2) / np.float32(pixel_size_a)


def even_fast_size(size: float) -> int:
    """Smallest even length >= size that scipy's FFT handles quickly (factors 2, 3, 5 only)."""
    n = max(2, math.ceil(size))
    while True:
        n = scipy.fft.next_fast_len(n, real=True)
        if n % 2 == 0:
            return n
        n += 1


def crop_spectra(spectra: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Keep the frequencies of a smaller real image `out_shape` (Fourier cropping = ideal binning)."""
    oy, ox = out_shape
    top = spectra[..., : oy // 2, : ox // 2 + 1]
    bottom = spectra[..., spectra.shape[-2] - oy // 2:, : ox // 2 + 1]
    return np.concatenate([top, bottom], axis=-2)


def phase_ramps(shifts_px: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Separable factors (ey, ex) that move images by -shift: spectrum * ey * ex aligns a frame at +shift.

    `shifts_px` is (..., 2) as [x, y]; ey is (..., ny, 1) and ex is (..., 1, nx//2+1), complex64.
    """
    ky, kx = frequencies(shape)
    shifts = np.asarray(shifts_px, dtype=np.float32)
    two_pi = np.float32(2 * np.pi)
    ey = np.exp(1j * two_pi * ky * shifts[..., 1, None, None]).astype(np.complex64)
    ex = np.exp(1j * two_pi * kx * shifts[..., 0, None, None]).astype(np.complex64)
    return ey, ex


def bfactor_filter(shape: tuple[int, int], pixel_size_a: float, bfactor_a2: float) -> np.ndarray:
    """exp(-B k²/4) low-pass on the rfft2 grid, with the k = 0 row and column removed.

    The axis lines carry the stripe that the non-periodic image border puts into every frame alike;
    left in, it pulls every cross-correlation towards zero shift.
    """
    k = radius_inv_a(shape, pixel_size_a)
    filt = np.exp(-0.25 * bfactor_a2 * k**2).astype(np.float32)
    filt[0, :] = 0.0
    filt[:, 0] = 0.0
    return filt


def band_limited_shape(shape: tuple[int, int], pixel_size_a: float, bfactor_a2: float, max_size_px: int,
                       min_size_px: int = 64, keep_fraction: float = 0.15) -> tuple[int, int]:
    """Smallest even real shape that keeps every frequency where exp(-B k²/4) >= `keep_fraction`.

    Alignment on this Fourier-cropped copy loses nothing the B-factor filter would keep, and the
    largest side is capped at `max_size_px` to bound time and memory on large detectors.
    """
    k_keep = math.sqrt(4.0 * math.log(1.0 / keep_fraction) / bfactor_a2) if bfactor_a2 > 0 else math.inf
    fraction = min(1.0, 2.0 * k_keep * pixel_size_a)
    fraction = min(fraction, max_size_px / max(shape))
    out = []
    for n in shape:
        size = even_fast_size(max(min_size_px, n * fraction))
        out.append(min(size, n - n % 2))
    return out[0], out[1]
