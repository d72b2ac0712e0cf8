"""Smoothing of a measured frame trajectory, with the strength chosen from the data itself.

At low dose each frame's shift is measured with a noise of a few tenths of a pixel, while the
specimen moves smoothly (fast at first, then steadily). A Whittaker smoother (least squares with a
penalty on second differences) keeps the smooth motion. The penalty minimises Mallows' Cp (an
unbiased estimate of the error against the true path) with the measurement noise estimated from
third differences of the trajectory, where a smooth path contributes almost nothing; so clean
trajectories are left nearly untouched and noisy ones are smoothed more. (Generalised
cross-validation, tried first, under-smooths such short series.)
"""
from __future__ import annotations

import numpy as np

_LAMBDAS = np.logspace(-3, 4, 36)


def _second_difference(n: int) -> np.ndarray:
    return np.diff(np.eye(n), n=2, axis=0)


def noise_px(shifts_px: np.ndarray) -> float:
    """Per-coordinate noise (px) of a trajectory from the median absolute third difference.

    For white noise of σ the third difference (1, -3, 3, -1) has a standard deviation of √20 σ.
    """
    third = np.diff(np.asarray(shifts_px, dtype=np.float64), n=3, axis=0)
    return float(np.median(np.abs(third)) / 0.6745 / np.sqrt(20.0))


def smooth_trajectory(shifts_px: np.ndarray) -> tuple[np.ndarray, float]:
    """Smoothed (n, 2) trajectory and the penalty chosen; trajectories under 6 frames are returned as given."""
    shifts = np.asarray(shifts_px, dtype=np.float64)
    n = shifts.shape[0]
    if n < 6:
        return shifts.copy(), 0.0
    variance = noise_px(shifts) ** 2
    penalty = _second_difference(n).T @ _second_difference(n)
    identity = np.eye(n)
    best = (np.inf, 0.0, shifts)
    for lam in np.concatenate([[0.0], _LAMBDAS]):
        hat = np.linalg.solve(identity + lam * penalty, identity)
        fitted = hat @ shifts
        score = float(((shifts - fitted) ** 2).sum()) + 2.0 * variance * shifts.shape[1] * np.trace(hat)
        if score < best[0]:
            best = (score, float(lam), fitted)
    return best[2], best[1]
