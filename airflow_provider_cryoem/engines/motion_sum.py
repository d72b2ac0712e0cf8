"""Aligned sums of movie frames, with and without dose weighting, in Fourier space.

The global path shifts each whole-frame spectrum; the local path cuts every frame into overlapping
tiles, shifts each tile by the motion at its centre and blends the summed tiles back with smooth
weights, so the shift varies across the image at the cost of a few more (small) FFTs.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.fft

from .dose_weighting import RadialDoseWeights
from .motion_fourier import crop_spectra, phase_ramps, radius_inv_a


class DoseWeightedSum:
    """Accumulates shifted frame spectra of a batch of equal tiles into plain and dose-weighted sums."""

    def __init__(self, tile_shape: tuple[int, int], n_tiles: int, pixel_size_a: float,
                 weights: RadialDoseWeights | None) -> None:
        self.tile_shape = tile_shape
        half = (n_tiles, tile_shape[0], tile_shape[1] // 2 + 1)
        self.plain = np.zeros(half, dtype=np.complex64)
        self.weighted = np.zeros(half, dtype=np.complex64) if weights is not None else None
        self.weights = weights
        self.index = weights.bin_index(radius_inv_a(tile_shape, pixel_size_a)) if weights is not None else None
        self.n_frames = 0

    def add(self, spectra: np.ndarray, frame: int, shifts_px: np.ndarray) -> None:
        """Add `spectra` (n_tiles, ky, kx) of `frame`, aligned by moving each tile by -shifts_px (n_tiles, 2)."""
        ey, ex = phase_ramps(shifts_px, self.tile_shape)
        spectra = spectra * ey
        spectra *= ex
        self.plain += spectra
        if self.weighted is not None:
            spectra *= self.weights.frame_weights(frame, self.index)
            self.weighted += spectra
        self.n_frames += 1

    def images(self, bin_factor: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
        """(dose-weighted, plain) real tiles, Fourier-cropped by `bin_factor`; both on the scale of a plain sum.

        The weights sum to 1 per frequency, so the weighted sum is scaled by the frame count; without
        dose weights the first image is the plain sum.
        """
        out_shape = (self.tile_shape[0] // bin_factor, self.tile_shape[1] // bin_factor)
        scale = np.float32(1.0 / bin_factor**2)

        def to_real(spectra: np.ndarray) -> np.ndarray:
            cropped = crop_spectra(spectra, out_shape) if bin_factor > 1 else spectra
            return scipy.fft.irfft2(cropped, s=out_shape, workers=workers) * scale

        plain = to_real(self.plain)
        if self.weighted is None:
            return plain, plain
        return to_real(self.weighted) * np.float32(self.n_frames), plain


def global_sum(spectra: np.ndarray, shape: tuple[int, int], shifts_px: np.ndarray, pixel_size_a: float,
               weights: RadialDoseWeights | None, bin_factor: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(dose-weighted, plain) sums of whole-frame `spectra` (n, ky, kx) aligned by `shifts_px` (n, 2)."""
    total = DoseWeightedSum(shape, 1, pixel_size_a, weights)
    for i in range(spectra.shape[0]):
        total.add(spectra[i][None], i, shifts_px[i][None])
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
              shifts_at: Callable[[np.ndarray, int], np.ndarray], pixel_size_a: float,
              weights: RadialDoseWeights | None, bin_factor: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(dose-weighted, plain) sums with a shift per tile and frame: `shifts_at(centres_xy, frame)` -> (n_tiles, 2)."""
    tile_shape = (layout.size_px, layout.size_px)
    total = DoseWeightedSum(tile_shape, len(layout.origins_px), pixel_size_a, weights)
    centres = layout.centres_xy_px
    for i in range(n_frames):
        shifts = shifts_at(centres, i)
        whole = np.rint(shifts).astype(int)
        tiles = layout.cut(frame_at(i), whole)
        spectra = scipy.fft.rfft2(tiles, workers=workers)
        total.add(spectra, i, shifts - whole)
    dw, plain = total.images(bin_factor, workers)
    return layout.blend(dw, bin_factor), layout.blend(plain, bin_factor)
