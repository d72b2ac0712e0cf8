"""Scores of a tilt-series alignment and a tomogram against planted truth (the simulator's), for the tests
and benchmarks: shift error after removing what no alignment can observe, and Fourier shell correlation.

A tilt series fixes the specimen only up to a rigid 3D translation (X, Y, Z): it moves tilt θ's image by
`R(α)·(X cos θ + Z sin θ, Y)`, so alignments are compared with the truth after fitting and removing that.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft


def shift_errors_px(estimated_px: np.ndarray, truth_px: np.ndarray, tilt_angles_deg: Sequence[float],
                    tilt_axis_deg: float) -> np.ndarray:
    """Per-tilt (across, along) the tilt axis error of estimated shifts, after removing the best rigid
    3D translation of the specimen (least squares)."""
    error = np.asarray(estimated_px, dtype=np.float64) - np.asarray(truth_px, dtype=np.float64)
    alpha = np.deg2rad(tilt_axis_deg)
    across = error[:, 0] * np.cos(alpha) + error[:, 1] * np.sin(alpha)
    along = -error[:, 0] * np.sin(alpha) + error[:, 1] * np.cos(alpha)
    theta = np.deg2rad(np.asarray(tilt_angles_deg, dtype=np.float64))
    basis = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    coefficients, *_ = np.linalg.lstsq(basis, across, rcond=None)
    return np.stack([across - basis @ coefficients, along - along.mean()], axis=1)


def shift_rmse_px(estimated_px: np.ndarray, truth_px: np.ndarray, tilt_angles_deg: Sequence[float],
                  tilt_axis_deg: float) -> float:
    """RMS length of `shift_errors_px`."""
    errors = shift_errors_px(estimated_px, truth_px, tilt_angles_deg, tilt_axis_deg)
    return float(np.sqrt((errors**2).sum(axis=1).mean()))


def register_translation(moving: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`moving` shifted (Fourier, periodic) onto `reference` by the peak of their phase correlation,
    sub-pixel by a parabola per axis; any number of dimensions."""
    a = scipy.fft.fftn(moving - moving.mean())
    b = scipy.fft.fftn(reference - reference.mean())
    cross = b * np.conj(a)
    correlation = np.real(scipy.fft.ifftn(cross / (np.abs(cross) + 1e-12)))
    peak = np.unravel_index(int(np.argmax(correlation)), correlation.shape)
    shift = []
    for axis, (index, size) in enumerate(zip(peak, correlation.shape)):
        around = [list(peak) for _ in range(3)]
        for k, step in enumerate((-1, 0, 1)):
            around[k][axis] = (index + step) % size
        left, centre, right = (correlation[tuple(p)] for p in around)
        curvature = left - 2 * centre + right
        offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
        shift.append(((index + size // 2) % size - size // 2) + offset)
    grids = np.meshgrid(*[scipy.fft.fftfreq(n) for n in moving.shape], indexing="ij")
    ramp = np.exp(-2j * np.pi * sum(g * s for g, s in zip(grids, shift)))
    return np.real(scipy.fft.ifftn(a * ramp)) + moving.mean()


def fourier_shell_correlation(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FSC of two same-shaped volumes: (shell frequency in cycles/px, FSC), shells 1/min(shape) wide,
    up to Nyquist (frequency measured per axis, so non-cubic volumes are fine)."""
    fa, fb = scipy.fft.rfftn(a), scipy.fft.rfftn(b)
    axes = [scipy.fft.fftfreq(n) for n in a.shape[:-1]] + [scipy.fft.rfftfreq(a.shape[-1])]
    grids = np.meshgrid(*axes, indexing="ij")
    radius = np.sqrt(sum(g * g for g in grids))
    width = 1.0 / min(a.shape)
    shell = np.round(radius / width).astype(np.intp).ravel()
    n_shells = int(round(0.5 / width)) + 1
    inside = shell < n_shells
    shell = shell[inside]
    cross = np.bincount(shell, np.real(fa * np.conj(fb)).ravel()[inside], n_shells)
    power_a = np.bincount(shell, (np.abs(fa) ** 2).ravel()[inside], n_shells)
    power_b = np.bincount(shell, (np.abs(fb) ** 2).ravel()[inside], n_shells)
    return np.arange(n_shells) * width, cross / np.sqrt(power_a * power_b + 1e-30)


def resolution_cycles(frequency: np.ndarray, fsc: np.ndarray, threshold: float = 0.5) -> float:
    """Frequency (cycles/px) where the FSC first drops below `threshold` after the DC shell, interpolated."""
    for k in range(1, fsc.size):
        if fsc[k] < threshold:
            f0, f1, c0, c1 = frequency[k - 1], frequency[k], fsc[k - 1], fsc[k]
            return float(f0 + (c0 - threshold) * (f1 - f0) / (c0 - c1)) if c0 != c1 else float(f1)
    return float(frequency[-1])
