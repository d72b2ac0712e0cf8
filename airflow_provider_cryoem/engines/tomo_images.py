"""Pictures of one tilt series for the UI and the results store: a montage and a short movie of the tilts,
the alignment plot, and three views of the tomogram. Images with Pillow, over the helpers of
engines/thumbnails.py (contrast stretch, binning, atomic writes), so tilt series look like the rest of the
session; the alignment plot with matplotlib (engines/plots.py) as the other plots.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..io._atomic import atomic_path
from .plots import alignment_figure, save_png
from .thumbnails import (
    _font,
    bin_to_fit,
    class_gallery,
    micrograph_image,
    micrograph_jpeg,
    side_by_side,
)

_MEMBRANE = np.array([255, 60, 40], dtype=np.float32)  # segmentation overlay colour
_MEMBRANE_OPACITY = 0.55
_SLAB_Z = 16  # slices summed at once for a projection of a memory-mapped volume


def _by_angle(stack: np.ndarray, tilt_angles_deg: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(stack, dtype=np.float32)
    angles = np.asarray(tilt_angles_deg, dtype=np.float64)
    if images.ndim != 3 or images.shape[0] != angles.size or angles.size == 0:
        raise ValueError(f"expected one (ny, nx) image per tilt angle, got stack {images.shape} and "
                         f"{angles.size} angles")
    order = np.argsort(angles)
    return images[order], angles[order]


def tilt_series_montage(stack: np.ndarray, tilt_angles_deg: Sequence[float], path: str | Path,
                        tile_px: int = 128) -> Path:
    """All tilts in a grid sorted by angle, each binned to `tile_px` and stretched alone, angle under each."""
    images, angles = _by_angle(stack, tilt_angles_deg)
    tiles = np.stack([bin_to_fit(image, tile_px)[0] for image in images])
    return class_gallery(tiles, path, labels=[f"{angle:+.1f}°" for angle in angles], tile_px=tile_px)


def tilt_series_movie(stack: np.ndarray, tilt_angles_deg: Sequence[float], path: str | Path,
                      size_px: int = 256, frame_ms: int = 150) -> Path:
    """An animated GIF through the tilts from lowest to highest angle, the angle written in a corner.

    One contrast stretch for the whole series (from the middle tilt), so the darkening at high tilt shows.
    """
    images, angles = _by_angle(stack, tilt_angles_deg)
    binned = [bin_to_fit(image, size_px)[0] for image in images]
    low, high = np.percentile(binned[len(binned) // 2], [1.0, 99.0])
    font = _font(max(10, size_px // 16))
    frames = []
    for image, angle in zip(binned, angles):
        scaled = np.clip((image - low) * (255.0 / max(high - low, 1e-12)), 0, 255).astype(np.uint8)
        frame = Image.fromarray(scaled, mode="L")
        ImageDraw.Draw(frame).text((4, 4), f"{angle:+.1f}°", fill=255, font=font, stroke_width=2, stroke_fill=0)
        frames.append(frame)
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return Path(path)


def alignment_plot(tilt_angles_deg: Sequence[float], shifts_px: Sequence[Sequence[float]],
                   residuals_px: Sequence[float | None], path: str | Path, excluded: Sequence[bool] | None = None,
                   size_px: int = 560) -> Path:
    """Shift dx, dy and residual of each tilt against its tilt angle (PNG); excluded tilts as grey ticks.

    `shifts_px` are `[dx, dy]` per tilt; a residual of None (not measured) is left out.
    """
    angles = np.asarray(tilt_angles_deg, dtype=np.float64)
    shifts = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    residuals = np.array([np.nan if r is None else r for r in residuals_px], dtype=np.float64)
    if not (angles.size == shifts.shape[0] == residuals.size) or angles.size == 0:
        raise ValueError(f"{angles.size} angles, {shifts.shape[0]} shifts and {residuals.size} residuals: "
                         f"need one of each per tilt")
    skipped = np.zeros(angles.size, bool) if excluded is None else np.asarray(excluded, dtype=bool)
    return save_png(alignment_figure(angles, shifts, residuals, skipped, (size_px, round(size_px * 0.7))), path)


def tomogram_views(tomogram: np.ndarray, xy_path: str | Path, xz_path: str | Path, yz_path: str | Path,
                   max_size_px: int = 512) -> tuple[Path, Path, Path]:
    """The central XY slice (averaged over the middle 5 % of the thickness, at least one slice, to tame
    the noise of a single slice) and the XZ and YZ projections of a `(nz, ny, nx)` tomogram, each
    contrast-stretched and binned to `max_size_px`; the format follows each path's suffix. Rows are drawn
    top-down as everywhere in engines/thumbnails.py, so z = 0 (the side away from the beam source) is at
    the top of the XZ and YZ views."""
    volume = np.asarray(tomogram, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a (nz, ny, nx) tomogram, got shape {volume.shape}")
    nz = volume.shape[0]
    half = max(0, round(0.025 * nz))
    middle = volume[nz // 2 - half:nz // 2 + half + 1].mean(axis=0)
    return (micrograph_jpeg(middle, xy_path, max_size_px),
            micrograph_jpeg(volume.mean(axis=1), xz_path, max_size_px),
            micrograph_jpeg(volume.mean(axis=2), yz_path, max_size_px))



def central_slab(volume: np.ndarray) -> np.ndarray:
    """The central XY slice of a `(nz, ny, nx)` volume, averaged over the middle 5 % of its thickness (at
    least one slice) as in tomogram_views; only that slab is read from a memory-mapped volume."""
    if volume.ndim != 3:
        raise ValueError(f"expected a (nz, ny, nx) volume, got shape {volume.shape}")
    nz = volume.shape[0]
    half = max(0, round(0.025 * nz))
    return np.asarray(volume[max(0, nz // 2 - half):nz // 2 + half + 1], dtype=np.float32).mean(axis=0)


def denoising_comparison(raw: np.ndarray, denoised: np.ndarray, path: str | Path, max_size_px: int = 512) -> Path:
    """The central XY slices of the raw and the denoised tomogram side by side, each stretched on its own."""
    if raw.shape != denoised.shape:
        raise ValueError(f"raw {raw.shape} and denoised {denoised.shape} tomograms differ in shape")
    panels = [micrograph_image(central_slab(volume), max_size_px)[0] for volume in (raw, denoised)]
    return side_by_side(path, panels, "central slice: raw (left), denoised (right)")


def segmentation_overlay(tomogram: np.ndarray, labels: np.ndarray, path: str | Path,
                         max_size_px: int = 512) -> Path:
    """The membrane voxels of the central slab (any label within it) drawn in colour over the tomogram's
    central XY slice."""
    if tomogram.shape != labels.shape:
        raise ValueError(f"tomogram {tomogram.shape} and segmentation {labels.shape} differ in shape")
    grey, factor = micrograph_image(central_slab(tomogram), max_size_px)
    membrane = bin_to_fit((central_slab(labels) > 0).astype(np.float32), max_size_px)[0] > 0
    rgb = np.repeat(np.asarray(grey, dtype=np.float32)[..., None], 3, axis=2)
    rgb[membrane] = (1 - _MEMBRANE_OPACITY) * rgb[membrane] + _MEMBRANE_OPACITY * _MEMBRANE
    return side_by_side(path, [Image.fromarray(rgb.astype(np.uint8), mode="RGB")],
                        f"membranes over the central slice (bin {factor})")


def mask_projection(labels: np.ndarray, path: str | Path, max_size_px: int = 512) -> Path:
    """The membrane mask projected along z (membrane voxels per column), read a slab at a time: where the
    membranes are in the whole depth, which a single slice cannot show."""
    if labels.ndim != 3:
        raise ValueError(f"expected a (nz, ny, nx) segmentation, got shape {labels.shape}")
    counts = np.zeros(labels.shape[1:], dtype=np.float32)
    for z in range(0, labels.shape[0], _SLAB_Z):
        counts += (np.asarray(labels[z:z + _SLAB_Z]) > 0).sum(axis=0)
    binned, _ = bin_to_fit(counts, max_size_px)
    top = float(binned.max()) or 1.0
    return side_by_side(path, [Image.fromarray((255 - binned * (255.0 / top)).astype(np.uint8), mode="L")],
                        f"membrane mask, XY projection (darkest: {counts.max():.0f} voxels deep)")
