"""The counting detector: per-pixel sensitivity, its gain reference, and Poisson counts.

Raw counts ~ Poisson(λ · s) with s the pixel's sensitivity, so the gain reference 1/s multiplied into a
frame gives an unbiased estimate of λ (MotionCor2 convention).
"""
from __future__ import annotations

import numpy as np

from .settings import SpaSimulationSettings

MIN_SENSITIVITY = 0.3
# A counting camera (K3, Falcon 4 class): each electron is counted in one pixel, so the noise stays white
# while the signal is blurred by the pixel's area (sinc) and the spread of its localisation (Gaussian);
# MTF at Nyquist ≈ 0.4. DQE(0) below 1 comes from electrons lost to coincidence and thresholding: counting
# a random share keeps the counts Poisson at a lower rate, which is exactly a DQE(0) of that share.
COUNTING_LOCALISATION_SIGMA_PX = 0.3
COUNTING_DQE_ZERO = 0.85


def sensitivity(settings: SpaSimulationSettings) -> np.ndarray:
    """Per-pixel sensitivity (frame orientation), the same for every movie of a session.

    Column stripes, a gradient along y and pixel noise make it asymmetric, so a gain applied with the
    wrong rotation or flip visibly fails to flatten the frames.
    """
    rng = np.random.default_rng([settings.seed, 2])
    size = settings.image_size_px
    columns = rng.standard_normal(size).astype(np.float32)
    rows = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    pixels = rng.standard_normal((size, size), dtype=np.float32)
    pattern = (0.6 * pixels + 0.6 * columns[None, :] + 0.5 * rows[:, None]) / np.sqrt(0.6**2 + 0.6**2 + 0.5**2 / 3)
    return np.maximum(1.0 + settings.gain_variation * pattern, MIN_SENSITIVITY).astype(np.float32)


def gain_as_written(gain: np.ndarray, rotation: int, flip: int) -> np.ndarray:
    """The inverse of `io.orient_gain`: the file content that `orient_gain(·, rotation, flip)` turns into `gain`."""
    unflipped = {0: gain, 1: np.flipud(gain), 2: np.fliplr(gain)}[flip]
    return np.ascontiguousarray(np.rot90(unflipped, -rotation))


def gain_reference(settings: SpaSimulationSettings) -> np.ndarray:
    """The gain reference file content (1/sensitivity, float32), rotated/flipped as the settings say it is written."""
    return gain_as_written(1.0 / sensitivity(settings), settings.gain_rotation, settings.gain_flip).astype(np.float32)


def detector_transfer(settings: SpaSimulationSettings, shape: tuple[int, int]) -> np.ndarray | float:
    """Signal transfer of the detector on an rfft grid of `shape` (MTF × DQE(0)); 1 for the ideal detector."""
    if settings.detector == "ideal":
        return 1.0
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]
    mtf = np.sinc(fy) * np.sinc(fx) * np.exp(-2 * np.pi**2 * COUNTING_LOCALISATION_SIGMA_PX**2 * (fy**2 + fx**2))
    return (COUNTING_DQE_ZERO * mtf).astype(np.float32)


def record_frame(rng: np.random.Generator, expected_e: np.ndarray, sensitivity_map: np.ndarray,
                 counting_noise: bool) -> np.ndarray:
    """One raw frame: Poisson counts (or their expectation, float32, when noise is off)."""
    rate = np.maximum(expected_e, 0.0) * sensitivity_map
    if not counting_noise:
        return rate.astype(np.float32)
    return np.minimum(rng.poisson(rate), np.iinfo(np.uint16).max).astype(np.uint16)


def counts_dtype(frames: np.ndarray) -> np.ndarray:
    """Counts as uint8 when they fit (as EPU writes counting TIFFs), else uint16; floats stay float32."""
    if frames.dtype.kind == "f":
        return frames
    return frames.astype(np.uint8) if int(frames.max(initial=0)) <= 255 else frames
