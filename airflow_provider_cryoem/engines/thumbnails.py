"""Small JPEG/PNG pictures of each stage's output for the UI and the results store, drawn with Pillow
(images, the CTF spectrum panel and the side-by-side pictures; plots of data series are in `plots`, drawn
with matplotlib).

Arrays are `[y, x]` and drawn with row 0 at the top, as `mrc_to_jpeg` in cryoem-services shows them;
coordinates are `[x, y]` in the pixels of the array passed in. The file format follows the suffix.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io._atomic import atomic_path

_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)
_PICK = (0, 230, 0)


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


# Fonts with Å, µ, ² and σ; Pillow's built-in font lacks them and is the last resort.
_FONT_FILES = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf")


def _font(size_px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for name in _FONT_FILES:
        try:
            return ImageFont.truetype(name, size_px)
        except OSError:
            continue
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


_RING = (255, 160, 0)
# The spectrum panel maps median ± this many robust standard deviations (of the fitted band) to black..white.
_SPECTRUM_STRETCH_SIGMA = 2.5


def _resolution_label(resolution_a: float) -> str:
    return f"{resolution_a:.1f} Å" if resolution_a < 10 else f"{resolution_a:.0f} Å"


def _equalise_rings(values: np.ndarray, ring: np.ndarray, use: np.ndarray) -> np.ndarray:
    """`values` divided by their RMS over nearby rings (1 px wide, within ±max(3, radius/3) px) where `use` is
    set, so strong low-resolution and weak high-resolution Thon rings show with similar contrast; the window
    grows with radius so it spans more than a ring period and the rings themselves are not flattened."""
    n_rings = int(ring.max()) + 1
    sums = np.concatenate([[0.0], np.cumsum(np.bincount(ring[use], weights=values[use].astype(np.float64) ** 2,
                                                        minlength=n_rings))])
    counts = np.concatenate([[0], np.cumsum(np.bincount(ring[use], minlength=n_rings))])
    radius = np.arange(n_rings)
    half = np.maximum(3, radius // 3)
    lo, hi = np.clip(radius - half, 0, n_rings), np.clip(radius + half + 1, 0, n_rings)
    rms = np.sqrt((sums[hi] - sums[lo]) / np.maximum(counts[hi] - counts[lo], 1))
    out = np.zeros_like(values)
    scale = rms[ring[use]]
    out[use] = np.where(scale > 0, values[use] / np.where(scale > 0, scale, 1.0), 0.0)
    return out


def ctf_spectrum_panel(data: np.ndarray, fit: np.ndarray | None, freq: np.ndarray, fit_band: tuple[float, float],
                       display_max_freq: float, size_px: int = 420) -> Image.Image:
    """A centred spectrum as CTFFIND users read it: data on the left, fit on the right within the fitted band.

    `data` is the background-subtracted spectrum, `fit` CTF² on the same grid (None: the right half of
    `data` is drawn as it is, e.g. CTFFIND's own diagnostic image), `freq` each pixel's frequency (1/Å).
    Only frequencies up to `display_max_freq` are shown, so the rings fill the panel; each ring of the data
    is scaled to the same RMS (weak outer rings stay visible) and orange circles mark the band, in Å.
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] != data.shape[1] or freq.shape != data.shape:
        raise ValueError(f"data {data.shape} and freq {freq.shape} must be the same square 2D shape")
    box = data.shape[0]
    centre = box // 2
    step = float(freq[centre, centre + 1])
    radius = int(np.clip(np.ceil(display_max_freq / step), 8, centre))
    window = (slice(centre - radius, centre + radius), slice(centre - radius, centre + radius))
    shown, shown_freq = data[window], freq[window]
    low, high = fit_band
    outside_low = shown_freq >= low
    shown = _equalise_rings(shown, np.rint(shown_freq / step).astype(np.int64), outside_low)
    reference = shown[outside_low] if outside_low.sum() > 16 else shown
    median = float(np.median(reference))
    spread = 1.4826 * float(np.median(np.abs(reference - median)))
    lo, hi = median - _SPECTRUM_STRETCH_SIGMA * spread, median + _SPECTRUM_STRETCH_SIGMA * spread
    grey = np.clip((shown - lo) / max(float(hi - lo), 1e-12) * 255.0, 0, 255)
    right = np.zeros_like(outside_low)
    right[:, radius:] = True
    band = outside_low & (shown_freq <= high)
    if fit is not None:
        model = np.asarray(fit, dtype=np.float32)[window]
        replace = right & band
        grey[replace] = 40.0 + 175.0 * np.clip(model[replace], 0.0, 1.0)
    picture = Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
    picture = picture.resize((size_px, size_px), Image.Resampling.LANCZOS if 2 * radius > size_px
                             else Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(picture)
    font = _font(max(11, size_px // 28))
    # Orange on a black outline, 2 px circles: legible over the rings and still visible in a 256 px thumbnail.
    label_style = {"fill": _RING, "font": font, "stroke_width": 1, "stroke_fill": _INK}
    scale = size_px / (2.0 * radius * step)  # canvas px per 1/Å
    mid = size_px / 2.0
    for index, frequency in enumerate((low, high)):
        r = frequency * scale
        if 2 < r < mid * 1.42:
            draw.ellipse((mid - r, mid - r, mid + r, mid + r), outline=_RING, width=2)
            label = _resolution_label(1.0 / frequency) + (" (fit)" if index else "")
            y = min(mid + r + 2, size_px - font.size - 2)
            draw.text((mid + 4, y), label, anchor="la", **label_style)
    draw.line((mid, 0, mid, size_px), fill=(90, 90, 90), width=1)
    draw.text((6, 4), "data", **label_style)
    draw.text((size_px - 6, 4), "fit", anchor="ra", **label_style)
    return picture


def side_by_side(path: str | Path, panels: Sequence[Image.Image], caption: str = "") -> Path:
    """Save `panels` in one row, tops aligned, with an optional one-line caption underneath."""
    font = _font(15)
    caption_px = font.size + 10 if caption else 0
    gap = 6
    width = sum(panel.width for panel in panels) + gap * (len(panels) - 1)
    height = max(panel.height for panel in panels) + caption_px
    picture = Image.new("RGB", (width, height), _BACKGROUND)
    x = 0
    for panel in panels:
        picture.paste(panel.convert("RGB"), (x, 0))
        x += panel.width + gap
    if caption:
        ImageDraw.Draw(picture).text((6, height - caption_px + 4), caption, fill=_INK, font=font)
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
