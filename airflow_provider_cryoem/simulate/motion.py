"""Beam-induced motion: a smooth global drift, fast in the first frames, plus a small smooth local warp."""
from __future__ import annotations

import numpy as np

from .settings import SpaSimulationSettings
from .truth import LocalMotionTruth, local_motion_basis

EARLY_DECAY_FRAMES = 3.0      # frames over which the initial fast motion settles
MAX_TURN_RAD_PER_FRAME = 0.08  # how fast the drift direction may turn


def global_shifts_px(rng: np.random.Generator, settings: SpaSimulationSettings) -> np.ndarray:
    """(n_frames, 2) [dx, dy] of each frame relative to frame 0: smooth, fastest at the start."""
    steps = np.arange(1, settings.n_frames, dtype=np.float64)
    speed_a = settings.drift_a_per_frame * (1.0 + (settings.initial_drift_factor - 1.0)
                                            * np.exp(-(steps - 1.0) / EARLY_DECAY_FRAMES))
    angle = rng.uniform(0, 2 * np.pi) + rng.uniform(-1, 1) * MAX_TURN_RAD_PER_FRAME * steps
    velocity_px = speed_a[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1) / settings.pixel_size_a
    shifts = np.vstack([np.zeros((1, 2)), np.cumsum(velocity_px, axis=0)])
    return np.round(shifts) if settings.integer_shifts else np.round(shifts, 4)


def local_motion(rng: np.random.Generator, settings: SpaSimulationSettings, shifts_px: np.ndarray) -> LocalMotionTruth:
    """Random polynomial warp scaled so its largest displacement at the last frame is `local_motion_a`.

    It grows with the distance travelled by the global drift, so it too is fastest early.
    """
    path = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(shifts_px, axis=0), axis=1))])
    profile = path / path[-1] if path[-1] > 0 else np.linspace(0.0, 1.0, settings.n_frames)
    n_basis = 5
    coefficients = rng.normal(size=(2, n_basis))
    grid = np.linspace(0, settings.image_size_px - 1, 9)
    gx, gy = np.meshgrid(grid, grid)
    basis = local_motion_basis(gx, gy, settings.image_size_px)
    largest = max(float(np.max(np.hypot(sum(c * b for c, b in zip(coefficients[0], basis)),
                                        sum(c * b for c, b in zip(coefficients[1], basis))))), 1e-9)
    coefficients *= settings.local_motion_a / settings.pixel_size_a / largest
    return LocalMotionTruth(coefficients_x_px=np.round(coefficients[0], 6).tolist(),
                            coefficients_y_px=np.round(coefficients[1], 6).tolist(),
                            amplitude_profile=np.round(profile, 6).tolist())


def max_displacement_px(shifts_px: np.ndarray, settings: SpaSimulationSettings) -> float:
    """Largest distance any specimen point moves during the movie (px)."""
    return float(np.max(np.linalg.norm(shifts_px, axis=1))) + settings.local_motion_a / settings.pixel_size_a
