"""Frame alignment by iterated cross-correlation against the sum of the other frames (leave one out).

Used for the whole frame (global motion) and for every patch (local motion) alike: the input is a
batch of frame stacks in Fourier space, the output one [x, y] shift per frame of each stack. The
first pass searches a coarsened cross-correlation widely; later passes look at the full-grid
correlation only near the current estimate and refine its peak with a parabola fit. Each
pass re-shifts the frames exactly in Fourier space, so the parabola only has to measure a residual
near zero, where its bias vanishes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from .motion_fourier import crop_spectra, phase_ramps

_COARSE_SIZE_PX = 256
_REFINE_RADIUS_PX = 2.5


@dataclass
class FrameAlignment:
    """Shifts (batch, n_frames, 2) as [x, y] in pixels of the aligned grid, first frame at 0.

    `peak_quality` (batch,) is the mean height of the first-pass correlation peaks over the
    correlation map's standard deviation: how far the signal stands above the noise.
    """

    shifts_px: np.ndarray
    peak_quality: np.ndarray
    iterations: int


def _parabola_offset(minus: np.ndarray, centre: np.ndarray, plus: np.ndarray) -> np.ndarray:
    """Sub-pixel position of a peak from three samples at -1, 0, +1 (0 where they do not form a peak)."""
    curvature = minus - 2.0 * centre + plus
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(curvature < 0, 0.5 * (minus - plus) / curvature, 0.0)
    return np.clip(offset, -0.5, 0.5)


def _at(maps: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """maps[b, f, iy[b, f], ix[b, f]] for maps of shape (batch, frames, ny, nx)."""
    b = np.arange(maps.shape[0])[:, None]
    f = np.arange(maps.shape[1])[None, :]
    return maps[b, f, iy, ix]


def _leave_one_out_cross(aligned: np.ndarray) -> np.ndarray:
    """conj(frame) × (sum of the other frames), per frame: the spectrum of each frame's correlation."""
    total = aligned.sum(axis=-3, keepdims=True)
    cross = np.conj(aligned)
    cross *= total - aligned
    return cross


def _correlation_peaks(aligned: np.ndarray, shape: tuple[int, int], grid: tuple[int, int], radius_px: float,
                       workers: int, want_quality: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Residual shifts [x, y] (full-grid pixels) of every frame, and optionally the peak quality per stack.

    The correlation is computed on the Fourier-cropped `grid` (coarse for the first, wide search)
    and its maximum sought within `radius_px` (full-grid pixels) of zero shift.
    """
    ny, nx = shape
    cy, cx = grid
    scale_y, scale_x = ny / cy, nx / cx
    if grid != shape:
        aligned = crop_spectra(aligned, grid)
    cc = scipy.fft.irfft2(_leave_one_out_cross(aligned), s=grid, workers=workers)
    quality = None
    if want_quality:
        flat = cc.reshape(*cc.shape[:-2], -1)
        quality = ((flat.max(axis=-1) - flat.mean(axis=-1)) / (flat.std(axis=-1) + 1e-30)).mean(axis=-1)
    # Cut the window of offsets within the search radius (plus one pixel for the parabola), wrapping round.
    ry = min(int(radius_px / scale_y) + 1, cy // 2 - 1)
    rx = min(int(radius_px / scale_x) + 1, cx // 2 - 1)
    oy, ox = np.arange(-ry, ry + 1), np.arange(-rx, rx + 1)
    window = cc[..., (oy % cy)[:, None], (ox % cx)[None, :]]
    outside = ((oy * scale_y)[:, None] ** 2 + (ox * scale_x)[None, :] ** 2) > radius_px**2
    outside[ry, rx] = False
    outside[[0, -1], :] = True
    outside[:, [0, -1]] = True
    masked = np.where(outside, -np.inf, window)
    iy, ix = np.unravel_index(masked.reshape(*masked.shape[:-2], -1).argmax(axis=-1), masked.shape[-2:])
    centre = _at(window, iy, ix)
    peak_x = ix - rx + _parabola_offset(_at(window, iy, ix - 1), centre, _at(window, iy, ix + 1))
    peak_y = iy - ry + _parabola_offset(_at(window, iy - 1, ix), centre, _at(window, iy + 1, ix))
    return -np.stack([peak_x * scale_x, peak_y * scale_y], axis=-1), quality


def align_frames(spectra: np.ndarray, shape: tuple[int, int], filt: np.ndarray, max_shift_px: float,
                 iterations: int, tolerance_px: float, workers: int) -> FrameAlignment:
    """Align each stack of `spectra` (batch, n_frames, ny, nx//2+1) of real frames of `shape`.

    `filt` is the low-pass applied to every correlation; iteration stops once no shift changes by
    more than `tolerance_px` (pixels of this grid) or after `iterations` passes.
    """
    batch, n_frames = spectra.shape[:2]
    shifts = np.zeros((batch, n_frames, 2), dtype=np.float64)
    if n_frames < 2:
        return FrameAlignment(shifts, np.zeros(batch), 0)
    coarse = (min(shape[0], _COARSE_SIZE_PX), min(shape[1], _COARSE_SIZE_PX))
    # Filtering each frame by √filter filters every frame-by-sum correlation by the filter.
    spectra = spectra * np.sqrt(filt)
    quality = np.zeros(batch)
    done = 0
    for done in range(1, max(1, iterations) + 1):
        ey, ex = phase_ramps(shifts, shape)
        aligned = spectra * ey
        aligned *= ex
        if done == 1:
            residual, quality = _correlation_peaks(aligned, shape, coarse, max_shift_px, workers, True)
        else:
            residual, _ = _correlation_peaks(aligned, shape, shape, _REFINE_RADIUS_PX, workers, False)
        shifts += residual
        shifts -= shifts.mean(axis=1, keepdims=True)
        if np.abs(residual).max() < tolerance_px and done > 1:
            break
    shifts -= shifts[:, :1]
    return FrameAlignment(shifts, quality, done)
