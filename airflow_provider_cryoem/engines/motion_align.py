"""Frame alignment by iterated cross-correlation against the sum of the other frames (leave one out).

Used for the whole frame (global motion) and for every patch (local motion) alike: the input is a
batch of frame stacks in Fourier space, the output one [x, y] shift per frame of each stack. The
first passes search a coarsened cross-correlation widely, until every frame is within a coarse
pixel; later passes evaluate the full-grid correlation only in a small window around each frame's
current estimate and refine its peak with a parabola fit. That window is a direct Fourier sum at
the current shift (matrix products instead of an inverse FFT of the whole map), so the parabola
only has to measure a residual near zero, where its bias vanishes. Each stack stops on its own
once its shifts settle.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft

from .motion_fourier import crop_spectra, frequencies, phase_ramps

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


def _window_peak(window: np.ndarray, radius_px: float, scale_yx: tuple[float, float]) -> np.ndarray:
    """Peak [x, y] (full-grid pixels) in correlation windows (batch, frames, 2ry+1, 2rx+1) centred on zero offset.

    The maximum is sought within `radius_px` of the centre, one pixel in from the window's border so
    that the parabola fit always has both neighbours; `scale_yx` is full-grid pixels per window pixel.
    """
    ry, rx = window.shape[-2] // 2, window.shape[-1] // 2
    scale_y, scale_x = scale_yx
    oy, ox = np.arange(-ry, ry + 1), np.arange(-rx, rx + 1)
    outside = ((oy * scale_y)[:, None] ** 2 + (ox * scale_x)[None, :] ** 2) > radius_px**2
    outside[ry, rx] = False
    outside[[0, -1], :] = True
    outside[:, [0, -1]] = True
    masked = np.where(outside, -np.inf, window)
    iy, ix = np.unravel_index(masked.reshape(*masked.shape[:-2], -1).argmax(axis=-1), masked.shape[-2:])
    centre = _at(window, iy, ix)
    peak_x = ix - rx + _parabola_offset(_at(window, iy, ix - 1), centre, _at(window, iy, ix + 1))
    peak_y = iy - ry + _parabola_offset(_at(window, iy - 1, ix), centre, _at(window, iy + 1, ix))
    return np.stack([peak_x * scale_x, peak_y * scale_y], axis=-1)


def _coarse_correlation(cropped: np.ndarray, shape: tuple[int, int], shifts_px: np.ndarray | None,
                        workers: int) -> np.ndarray:
    """Whole leave-one-out correlation maps (batch, n_frames, cy, cx) of spectra Fourier-cropped to a coarse
    grid, aligned first by `shifts_px` (full-grid px; None = unshifted)."""
    grid = (cropped.shape[-2], 2 * (cropped.shape[-1] - 1))
    if shifts_px is not None:
        ey, ex = phase_ramps(shifts_px * np.array([grid[1] / shape[1], grid[0] / shape[0]]), grid)
        cropped = cropped * ey
        cropped *= ex
    cross = np.conj(cropped)
    cross *= cropped.sum(axis=-3, keepdims=True) - cropped
    return scipy.fft.irfft2(cross, s=grid, workers=workers)


def _peak_quality(cc: np.ndarray) -> np.ndarray:
    """Per stack: mean over frames of (peak - mean) / standard deviation of the correlation map."""
    flat = cc.reshape(*cc.shape[:-2], -1)
    return ((flat.max(axis=-1) - flat.mean(axis=-1)) / (flat.std(axis=-1) + 1e-30)).mean(axis=-1)


def _coarse_residual(cc: np.ndarray, shape: tuple[int, int], radius_px: float) -> np.ndarray:
    """Residual shifts [x, y] (full-grid px) from coarse maps, the maximum sought within `radius_px` (full-grid px)."""
    cy, cx = cc.shape[-2:]
    scale_y, scale_x = shape[0] / cy, shape[1] / cx
    ry = min(int(radius_px / scale_y) + 1, cy // 2 - 1)
    rx = min(int(radius_px / scale_x) + 1, cx // 2 - 1)
    oy, ox = np.arange(-ry, ry + 1), np.arange(-rx, rx + 1)
    window = cc[..., (oy % cy)[:, None], (ox % cx)[None, :]]
    return -_window_peak(window, radius_px, (scale_y, scale_x))


class _WindowCorrelation:
    """Leave-one-out correlation of every frame, evaluated only at whole-pixel offsets near its current shift.

    Holds A_i = conj(F_i) e^{-2πik·s_i} for the filtered frame spectra F_i at their current shifts s_i
    (moved in place as the shifts change, `move_to`). With T = conj(Σ_j A_j) the aligned sum, frame i's
    correlation at offset o is Re Σ_k A_i T e^{2πik·o} minus its own autocorrelation
    Re Σ_k |A_i|² e^{2πik·o}, which does not change between passes. The sum over k is separable, so
    a window of W × W offsets costs one matrix product over kx for all frames and a small one per
    frame over ky. Takes over `spectra` (conjugated in place).
    """

    _CHUNK_ELEMENTS = 1 << 20  # products are formed this many spectrum elements at a time (8 MB)

    def __init__(self, spectra: np.ndarray, shape: tuple[int, int], radius_px: float) -> None:
        self.aligned = np.conjugate(spectra, out=spectra)
        self.shape = shape
        self.shifts_px = np.zeros(spectra.shape[:2] + (2,))
        r = int(radius_px) + 1
        offsets = np.arange(-r, r + 1, dtype=np.float32)
        ky, kx = frequencies(shape)
        two_pi_i = np.complex64(2j * np.pi)
        # A real image's half-plane spectrum counts the columns between 0 and Nyquist twice.
        kx_weight = np.full(kx.shape[1], 2.0, dtype=np.float32)
        kx_weight[[0, -1]] = 1.0
        self.ex = np.exp(two_pi_i * kx[0][:, None] * offsets) * kx_weight[:, None]   # (nkx, W)
        self.ey = np.exp(two_pi_i * offsets[:, None] * ky[:, 0])                    # (W, nky)
        self.auto = self._windows(lambda frames: np.abs(self.aligned[:, frames]) ** 2)

    def _windows(self, product: Callable[[slice], np.ndarray]) -> np.ndarray:
        """Re Σ_k product(frames) e^{2πik·o} over the offset window: (batch, n_frames, W, W), rows = y offsets."""
        batch, n_frames, ny, nkx = self.aligned.shape
        w = self.ex.shape[1]
        chunk = max(1, self._CHUNK_ELEMENTS // (batch * ny * nkx))
        out = np.empty((batch, n_frames, w, w), dtype=np.float32)
        for start in range(0, n_frames, chunk):
            frames = slice(start, min(start + chunk, n_frames))
            spectra = product(frames)
            over_x = (spectra.reshape(-1, nkx) @ self.ex).reshape(spectra.shape[:-1] + (w,))
            # A small product per frame, not one large threaded one that costs more to start than to do.
            out[:, frames] = (self.ey @ over_x).real
        return out

    def move_to(self, shifts_px: np.ndarray) -> None:
        """Bring the held spectra to `shifts_px` (batch, n_frames, 2) from wherever they are."""
        ey, ex = phase_ramps(self.shifts_px - shifts_px, self.shape)
        self.aligned *= ey
        self.aligned *= ex
        self.shifts_px = shifts_px.copy()

    def keep(self, stacks: np.ndarray) -> None:
        """Drop the stacks where `stacks` (bool, one per remaining stack) is False from further passes."""
        if not stacks.all():
            self.aligned, self.auto, self.shifts_px = self.aligned[stacks], self.auto[stacks], self.shifts_px[stacks]

    def __call__(self) -> np.ndarray:
        """Correlation windows (batch, n_frames, W, W) centred on each frame's current shift."""
        total = np.conjugate(self.aligned.sum(axis=1))[:, None]
        return self._windows(lambda frames: self.aligned[:, frames] * total) - self.auto


def align_frames(spectra: np.ndarray, shape: tuple[int, int], filt: np.ndarray, max_shift_px: float,
                 iterations: int, tolerance_px: float, workers: int) -> FrameAlignment:
    """Align each stack of `spectra` (batch, n_frames, ny, nx//2+1) of real frames of `shape`.

    `filt` is the low-pass applied to every correlation; iteration stops once no shift changes by
    more than `tolerance_px` (pixels of this grid) or after `iterations` passes. `spectra` is used
    as working memory (overwritten).
    """
    batch, n_frames = spectra.shape[:2]
    shifts = np.zeros((batch, n_frames, 2), dtype=np.float64)
    if n_frames < 2:
        return FrameAlignment(shifts, np.zeros(batch), 0)
    coarse = (min(shape[0], _COARSE_SIZE_PX), min(shape[1], _COARSE_SIZE_PX))
    # Filtering each frame by √filter filters every frame-by-sum correlation by the filter.
    spectra *= np.sqrt(filt)
    cropped = crop_spectra(spectra, coarse) if coarse != shape else spectra
    cc = _coarse_correlation(cropped, shape, None, workers)
    quality = _peak_quality(cc)
    residual = _coarse_residual(cc, shape, max_shift_px)
    done = 1
    # While residuals exceed a coarse pixel, more passes on the (cheap) coarse grid bring every frame
    # within the refinement window.
    coarse_px = max(shape[0] / coarse[0], shape[1] / coarse[1])
    while coarse != shape and done < iterations and np.abs(residual).max() >= coarse_px:
        shifts += residual
        shifts -= shifts.mean(axis=1, keepdims=True)
        residual = _coarse_residual(_coarse_correlation(cropped, shape, shifts, workers), shape, max_shift_px)
        done += 1
    del cropped, cc
    correlation = _WindowCorrelation(spectra, shape, _REFINE_RADIUS_PX) if done < iterations else None
    # Stacks are independent: each stops on its own, and only the moving ones are evaluated again.
    active = np.arange(batch)
    refined = False
    while True:
        moved = shifts[active] + residual
        moved -= moved.mean(axis=1, keepdims=True)
        shifts[active] = moved
        if refined:
            moving = np.abs(residual).max(axis=(1, 2)) >= tolerance_px
            active = active[moving]
            correlation.keep(moving)
        if done >= iterations or active.size == 0:
            break
        correlation.move_to(shifts[active])
        residual = -_window_peak(correlation(), _REFINE_RADIUS_PX, (1.0, 1.0))
        refined = True
        done += 1
    shifts -= shifts[:, :1]
    return FrameAlignment(shifts, quality, done)
