"""Aligned sums of movie frames, with and without dose weighting, in Fourier space.

The global path shifts each whole-frame spectrum; the local path cuts every frame into overlapping
tiles, shifts each tile by the motion at its centre and blends the summed tiles back with smooth
weights, so the shift varies across the image at the cost of a few more (small) FFTs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft

from .dose_weighting import DoseWeightSeries
from .motion_fourier import crop_spectra, phase_ramps, radius_inv_a

_BLOCK_ELEMENTS = 1 << 16  # whole-frame sums run over row blocks of this many elements, which stay in cache


@dataclass(frozen=True)
class Exposure:
    """What dose weighting needs to know about a movie."""

    n_frames: int
    dose_per_frame_e_a2: float
    voltage_kv: float = 300.0


def _add_frame(plain: np.ndarray, weighted: np.ndarray | None, ratio: np.ndarray | None, spectra: np.ndarray,
               ey: np.ndarray, ex: np.ndarray) -> None:
    """plain += S and weighted = weighted · ratio + S (one Horner step), S = spectra moved by the ramps ey · ex."""
    shifted = spectra * ey
    shifted *= ex
    plain += shifted
    if weighted is not None:
        weighted *= ratio
        weighted += shifted


class DoseWeightedSum:
    """Accumulates shifted frame spectra of a batch of equal tiles into plain and dose-weighted sums.

    Frames are added last first, as the dose-weighted sum is built by Horner's rule (DoseWeightSeries).
    """

    def __init__(self, tile_shape: tuple[int, int], n_tiles: int, pixel_size_a: float,
                 exposure: Exposure | None) -> None:
        self.tile_shape = tile_shape
        half = (n_tiles, tile_shape[0], tile_shape[1] // 2 + 1)
        self.plain = np.zeros(half, dtype=np.complex64)
        self.weighted = np.zeros(half, dtype=np.complex64) if exposure is not None else None
        self.ratio = self.weighted_scale = None
        if exposure is not None:
            series = DoseWeightSeries(radius_inv_a(tile_shape, pixel_size_a), exposure.n_frames,
                                      exposure.dose_per_frame_e_a2, exposure.voltage_kv)
            # The weights sum to 1 per frequency: scaled by the frame count, the sum matches a plain one.
            self.ratio, self.weighted_scale = series.ratio, series.first * np.float32(exposure.n_frames)

    def add(self, spectra: np.ndarray, shifts_px: np.ndarray) -> None:
        """Add the next earlier frame's `spectra` (n_tiles, ky, kx), aligned by moving each tile by -shifts_px."""
        ey, ex = phase_ramps(shifts_px, self.tile_shape)
        _add_frame(self.plain, self.weighted, self.ratio, spectra, ey, ex)

    def images(self, bin_factor: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
        """(dose-weighted, plain) real tiles, Fourier-cropped by `bin_factor`, once every frame is added;
        both on the scale of a plain sum, and without dose weights the first image is the plain sum."""
        out_shape = (self.tile_shape[0] // bin_factor, self.tile_shape[1] // bin_factor)
        scale = np.float32(1.0 / bin_factor**2)

        def to_real(spectra: np.ndarray) -> np.ndarray:
            cropped = crop_spectra(spectra, out_shape) if bin_factor > 1 else spectra
            return scipy.fft.irfft2(cropped, s=out_shape, workers=workers) * scale

        plain = to_real(self.plain)
        if self.weighted is None:
            return plain, plain
        self.weighted *= self.weighted_scale
        return to_real(self.weighted), plain


def global_sum(spectra: np.ndarray, shape: tuple[int, int], shifts_px: np.ndarray, pixel_size_a: float,
               exposure: Exposure | None, bin_factor: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(dose-weighted, plain) sums of whole-frame `spectra` (n, ky, kx) aligned by `shifts_px` (n, 2)."""
    total = DoseWeightedSum(shape, 1, pixel_size_a, exposure)
    ey, ex = phase_ramps(shifts_px, shape)
    n_frames, n_rows, n_cols = spectra.shape
    block = max(1, _BLOCK_ELEMENTS // n_cols)
    for start in range(0, n_rows, block):
        rows = slice(start, start + block)
        weighted = None if total.weighted is None else total.weighted[0, rows]
        ratio = None if total.ratio is None else total.ratio[rows]
        for i in reversed(range(n_frames)):
            _add_frame(total.plain[0, rows], weighted, ratio, spectra[i, rows], ey[i, rows], ex[i])
    dw, plain = total.images(bin_factor, workers)
    return dw[0], plain[0]


class TileLayout:
    """Overlapping square tiles: cores of `core_px` covering the image, each padded by `margin_px`.

    Sizes are multiples of the output binning so tiles stay aligned with the binned pixel grid.
    """

    def __init__(self, shape: tuple[int, int], core_px: int, margin_px: int) -> None:
        self.shape = shape
        self.core_px = core_px
        self.margin_px = margin_px
        self.size_px = core_px + 2 * margin_px
        ny, nx = shape
        rows = np.arange(0, ny, core_px)
        cols = np.arange(0, nx, core_px)
        self.origins_px = np.array([(r, c) for r in rows for c in cols])  # core corners [row, col]

    @property
    def centres_xy_px(self) -> np.ndarray:
        """Centre of each tile's core as [x, y]."""
        centre = self.origins_px + (self.core_px - 1) / 2.0
        return centre[:, ::-1].astype(np.float64)

    def cut(self, frame: np.ndarray, offsets_px: np.ndarray) -> np.ndarray:
        """(n_tiles, size, size) tiles, each read from the frame moved by whole-pixel `offsets_px` [x, y].

        Reads beyond the frame repeat its edge pixels.
        """
        ny, nx = frame.shape
        steps = np.arange(self.size_px) - self.margin_px
        rows = np.clip(self.origins_px[:, 0, None] + offsets_px[:, 1, None] + steps, 0, ny - 1)
        cols = np.clip(self.origins_px[:, 1, None] + offsets_px[:, 0, None] + steps, 0, nx - 1)
        return frame[rows[:, :, None], cols[:, None, :]]

    def blend(self, tiles: np.ndarray, bin_factor: int) -> np.ndarray:
        """Assemble (binned) tiles into one image with a weight that is 1 in each core and fades in the margin."""
        size = tiles.shape[-1]
        margin = self.margin_px // bin_factor
        ny, nx = self.shape[0] // bin_factor, self.shape[1] // bin_factor
        ramp = np.ones(size, dtype=np.float32)
        fade = 0.5 - 0.5 * np.cos(np.pi * (np.arange(2 * margin, dtype=np.float32) + 0.5) / (2 * margin))
        ramp[: 2 * margin] = fade
        ramp[size - 2 * margin:] = fade[::-1]
        weight = ramp[:, None] * ramp[None, :]
        image = np.zeros((ny, nx), dtype=np.float32)
        total = np.zeros((ny, nx), dtype=np.float32)
        for (r, c), tile in zip(self.origins_px // bin_factor, tiles):
            r0, c0 = r - margin, c - margin
            rs = slice(max(r0, 0), min(r0 + size, ny))
            cs = slice(max(c0, 0), min(c0 + size, nx))
            inner = (slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0))
            image[rs, cs] += tile[inner] * weight[inner]
            total[rs, cs] += weight[inner]
        return image / np.maximum(total, 1e-6)


def local_sum(frame_at: Callable[[int], np.ndarray], n_frames: int, layout: TileLayout,
              shifts_at: Callable[[np.ndarray, int], np.ndarray], pixel_size_a: float, exposure: Exposure | None,
              bin_factor: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(dose-weighted, plain) sums with a shift per tile and frame: `shifts_at(centres_xy, frame)` -> (n_tiles, 2)."""
    tile_shape = (layout.size_px, layout.size_px)
    total = DoseWeightedSum(tile_shape, len(layout.origins_px), pixel_size_a, exposure)
    centres = layout.centres_xy_px
    for i in reversed(range(n_frames)):
        shifts = shifts_at(centres, i)
        whole = np.rint(shifts).astype(int)
        tiles = layout.cut(frame_at(i), whole)
        spectra = scipy.fft.rfft2(tiles, workers=workers)
        total.add(spectra, shifts - whole)
    dw, plain = total.images(bin_factor, workers)
    return layout.blend(dw, bin_factor), layout.blend(plain, bin_factor)
