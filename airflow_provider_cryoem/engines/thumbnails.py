"""Small JPEG/PNG pictures of each stage's output for the UI and the results store (Pillow only).

Arrays are `[y, x]` and drawn with row 0 at the top, as `mrc_to_jpeg` in cryoem-services shows them;
coordinates are `[x, y]` in the pixels of the array passed in. The file format follows the suffix.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io._atomic import atomic_path

_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)
_TRACE = (31, 119, 180)
_PICK = (0, 230, 0)
_FIRST_FRAME = (214, 39, 40)


def stretch_to_uint8(image: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.0) -> np.ndarray:
    """Map the [low, high] percentile range to 0..255 so a few hot pixels do not wash out the picture."""
    data = np.asarray(image, dtype=np.float32)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(data.shape, dtype=np.uint8)
    low, high = np.percentile(finite, [low_percentile, high_percentile])
    if high <= low:
        high = low + 1.0
    scaled = (np.nan_to_num(data, nan=low) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def bin_to_fit(image: np.ndarray, max_size_px: int) -> tuple[np.ndarray, int]:
    """Average `factor`×`factor` blocks so the longest side is at most `max_size_px`; returns (binned, factor).

    Block averaging (rather than resampling) also averages the shot noise, so the picture shows the particles.
    """
    data = np.asarray(image, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {data.shape}")
    factor = max(1, math.ceil(max(data.shape) / max_size_px))
    ny, nx = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    binned = data[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).mean(axis=(1, 3))
    return binned, factor


def _save(picture: Image.Image, path: str | Path) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a picture."""
    image_format = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        picture.save(tmp, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return Path(path)


def _font(size_px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size_px)


def micrograph_image(image: np.ndarray, max_size_px: int = 512) -> tuple[Image.Image, int]:
    """A greyscale picture of a micrograph binned to `max_size_px`; returns (picture, bin factor)."""
    binned, factor = bin_to_fit(image, max_size_px)
    return Image.fromarray(stretch_to_uint8(binned), mode="L"), factor


def micrograph_jpeg(image: np.ndarray, path: str | Path, max_size_px: int = 512) -> Path:
    """Write the micrograph as a contrast-stretched JPEG whose longest side is at most `max_size_px`."""
    picture, _ = micrograph_image(image, max_size_px)
    return _save(picture, path)


def picks_overlay(image: np.ndarray, coordinates_px: Sequence[Sequence[float]], diameter_px: float,
                  path: str | Path, max_size_px: int = 1024) -> Path:
    """Draw a circle of `diameter_px` (micrograph pixels) around each `[x, y]` pick on the micrograph picture."""
    grey, factor = micrograph_image(image, max_size_px)
    picture = grey.convert("RGB")
    draw = ImageDraw.Draw(picture)
    radius = 0.5 * diameter_px / factor
    width = max(1, round(picture.width / 400))
    for x_px, y_px in coordinates_px:
        # Block k of the binned picture covers micrograph pixels k*factor .. (k+1)*factor-1.
        cx, cy = (x_px + 0.5) / factor - 0.5, (y_px + 0.5) / factor - 0.5
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=_PICK, width=width)
    return _save(picture, path)


def spectrum_fit_image(spectrum: np.ndarray, fit: np.ndarray, path: str | Path, size_px: int = 512) -> Path:
    """Left half: the measured power spectrum; right half: the fitted CTF², each stretched on its own.

    Both arrays are centred 2D spectra (zero frequency in the middle) of the same shape, as CTFFIND's
    diagnostic image shows them, so the Thon rings of the data and of the fit meet at the centre line.
    """
    spectrum, fit = np.asarray(spectrum, dtype=np.float32), np.asarray(fit, dtype=np.float32)
    if spectrum.ndim != 2 or spectrum.shape != fit.shape:
        raise ValueError(f"spectrum {spectrum.shape} and fit {fit.shape} must be 2D arrays of the same shape")
    half = spectrum.shape[1] // 2
    left = stretch_to_uint8(spectrum[:, :half], 2.0, 98.0)
    right = stretch_to_uint8(fit[:, half:], 2.0, 98.0)
    picture = Image.fromarray(np.concatenate([left, right], axis=1), mode="L")
    picture = picture.resize((size_px, round(size_px * picture.height / picture.width)), Image.Resampling.BILINEAR)
    return _save(picture, path)


def _nice_step(span: float, target_ticks: int = 6) -> float:
    """A 1/2/5×10^k tick step giving about `target_ticks` ticks over `span`."""
    raw = max(span, 1e-9) / target_ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def _axis_range(values: np.ndarray) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    pad = max(0.5, 0.08 * (high - low))
    return low - pad, high + pad


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{value:.{decimals}f}"


def plot_frame(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
               box: tuple[float, float, float, float], x_range: tuple[float, float],
               y_range: tuple[float, float], steps: tuple[float, float]) -> Callable[[float, float], tuple[float, float]]:
    """Draw a plot's frame in `box` (left, top, right, bottom) with ticks every `steps` and their labels;
    returns the mapping from data (x, y) to canvas pixels, y growing upwards."""
    left, top, right, bottom = box
    (x_low, x_high), (y_low, y_high), (x_step, y_step) = x_range, y_range, steps

    def to_canvas(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * (right - left),
                bottom - (y - y_low) / (y_high - y_low) * (bottom - top))

    draw.rectangle(box, outline=_INK)
    for tick in np.arange(math.ceil(x_low / x_step) * x_step, x_high, x_step):
        cx, _ = to_canvas(tick, y_low)
        draw.line((cx, bottom, cx, bottom + 5), fill=_INK)
        draw.text((cx, bottom + 7), _tick_label(tick, x_step), fill=_INK, font=font, anchor="mt")
    for tick in np.arange(math.ceil(y_low / y_step) * y_step, y_high, y_step):
        _, cy = to_canvas(x_low, tick)
        draw.line((left - 5, cy, left, cy), fill=_INK)
        draw.text((left - 7, cy), _tick_label(tick, y_step), fill=_INK, font=font, anchor="rm")
    return to_canvas


def drift_plot(shifts_px: Sequence[Sequence[float]], path: str | Path, size_px: int = 480,
               unit: str = "px") -> Path:
    """Plot the whole-frame trajectory `[[dx, dy], ...]`: a line through per-frame markers, first frame in red.

    Axes are labelled x/y shift in `unit`; y grows upwards as in a plot (not as image rows).
    """
    shifts = np.asarray(shifts_px, dtype=np.float64)
    if shifts.ndim != 2 or shifts.shape[1] != 2 or len(shifts) == 0:
        raise ValueError(f"shifts_px must be a non-empty list of [dx, dy], got shape {shifts.shape}")
    picture = Image.new("RGB", (size_px, size_px), _BACKGROUND)
    draw = ImageDraw.Draw(picture)
    font = _font(max(10, size_px // 40))
    left, right, top, bottom = size_px * 0.17, size_px * 0.95, size_px * 0.08, size_px * 0.85
    (x_low, x_high), (y_low, y_high) = _axis_range(shifts[:, 0]), _axis_range(shifts[:, 1])
    # Equal scale on both axes so the trajectory's shape is not distorted.
    span = max(x_high - x_low, y_high - y_low)
    x_mid, y_mid = 0.5 * (x_low + x_high), 0.5 * (y_low + y_high)
    x_low, x_high, y_low, y_high = x_mid - span / 2, x_mid + span / 2, y_mid - span / 2, y_mid + span / 2
    step = _nice_step(span)
    to_canvas = plot_frame(draw, font, (left, top, right, bottom), (x_low, x_high), (y_low, y_high), (step, step))
    draw.text(((left + right) / 2, size_px - 4), f"x shift ({unit})", fill=_INK, font=font, anchor="md")
    y_label = Image.new("RGB", (size_px // 2, font.size + 6), _BACKGROUND)
    ImageDraw.Draw(y_label).text((size_px // 4, 2), f"y shift ({unit})", fill=_INK, font=font, anchor="mt")
    y_label = y_label.rotate(90, expand=True)
    picture.paste(y_label, (4, round((top + bottom) / 2 - y_label.height / 2)))

    points = [to_canvas(x, y) for x, y in shifts]
    if len(points) > 1:
        draw.line(points, fill=_TRACE, width=2)
    marker = max(2, size_px // 160)
    for index, (cx, cy) in enumerate(points):
        colour = _FIRST_FRAME if index == 0 else _TRACE
        draw.ellipse((cx - marker, cy - marker, cx + marker, cy + marker), fill=colour)
    return _save(picture, path)


def class_gallery(stack: np.ndarray, path: str | Path, labels: Sequence[str] | None = None,
                  tile_px: int = 96, columns: int | None = None) -> Path:
    """Tile the images of a 2D class stack `(n, ny, nx)` in a grid, each stretched alone, labels under each."""
    images = np.asarray(stack, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"stack must be (n, ny, nx) with n >= 1, got shape {images.shape}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} class images")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    font = _font(max(9, tile_px // 8))
    label_px = font.size + 4 if labels is not None else 0
    gap = 2
    picture = Image.new("L", (columns * (tile_px + gap) + gap, rows * (tile_px + label_px + gap) + gap), 0)
    draw = ImageDraw.Draw(picture)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        x0, y0 = gap + column * (tile_px + gap), gap + row * (tile_px + label_px + gap)
        # Empty classes (all zeros) stay black instead of becoming noise after stretching.
        tile = stretch_to_uint8(image, 0.5, 99.5) if np.ptp(image) > 0 else np.zeros(image.shape, np.uint8)
        picture.paste(Image.fromarray(tile, mode="L").resize((tile_px, tile_px), Image.Resampling.BILINEAR),
                      (x0, y0))
        if labels is not None:
            draw.text((x0 + tile_px / 2, y0 + tile_px + 2), str(labels[index]), fill=255, font=font, anchor="mt")
    return _save(picture, path)
