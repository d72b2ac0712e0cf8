"""Gain references: load, orient as MotionCor2's -RotGain/-FlipGain do, and multiply into raw frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ImageFileError
from .image import read_image_2d

_FLIPS = {0: "none", 1: "upside down", 2: "left-right"}


def orient_gain(gain: np.ndarray, rotation: int, flip: int) -> np.ndarray:
    """Rotate by `rotation` × 90° counter-clockwise (np.rot90), then flip (1 = np.flipud, 2 = np.fliplr)."""
    if rotation not in (0, 1, 2, 3):
        raise ValueError(f"gain rotation must be 0-3 (quarter turns counter-clockwise), got {rotation}")
    if flip not in _FLIPS:
        raise ValueError(f"gain flip must be 0 (none), 1 (upside down) or 2 (left-right), got {flip}")
    oriented = np.rot90(gain, rotation)
    if flip == 1:
        oriented = np.flipud(oriented)
    elif flip == 2:
        oriented = np.fliplr(oriented)
    return np.ascontiguousarray(oriented)


def load_gain(path: str | Path, rotation: int = 0, flip: int = 0,
              expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The oriented gain reference as float32, checked against the movie's frame shape `(ny, nx)`."""
    path, raw = read_image_2d(path)
    gain = orient_gain(raw.astype(np.float32), rotation, flip)
    n_bad = int(np.count_nonzero(~np.isfinite(gain)))
    if n_bad:
        raise ImageFileError(path, f"gain reference contains {n_bad} NaN or infinite values")
    if expected_shape is not None and gain.shape != tuple(expected_shape):
        ny, nx = expected_shape
        problem = (f"gain reference shape {gain.shape} (after rotation {rotation}, flip {_FLIPS[flip]}) "
                   f"does not match the movie frames ({ny}, {nx})")
        if gain.shape == (nx, ny):
            problem += "; the transposed shape would match: check the gain rotation (an odd number of quarter " \
                       "turns swaps the axes)"
        raise ImageFileError(path, problem)
    return gain


def apply_gain(frames: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Gain-corrected float32 frames: each raw frame multiplied by the gain (MotionCor2 convention)."""
    if np.shape(frames)[-2:] != np.shape(gain):
        raise ValueError(f"frame shape {np.shape(frames)[-2:]} does not match gain shape {np.shape(gain)}")
    return np.multiply(frames, gain, dtype=np.float32)
