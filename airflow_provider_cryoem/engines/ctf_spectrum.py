"""The averaged amplitude spectrum of a micrograph and its flattened form, which CTF fitting compares to CTF².

As in CTFFIND4 (Rohou & Grigorieff 2015): power spectra of overlapping tiles are averaged, the smooth
background is removed with a box filter wider than a Thon ring, and what is left is divided by its local
RMS so that weak high-resolution rings count as much as strong low-resolution ones.
"""
from __future__ import annotations

import numpy as np
import scipy.fft
from scipy.ndimage import affine_transform, uniform_filter
from scipy.signal.windows import tukey

from .ctf_model import frequency_grid

# Fraction of each tile edge that is tapered, to damp the bright cross of tile-edge discontinuities
# without widening the Thon rings the way a full Hann window would.
_TAPER_FRACTION = 0.2
# Tiles transformed at once: bounds memory on large micrographs.
_TILES_PER_BATCH = 16
# Flattened values beyond ±this many local RMS are clipped (hot spots, ice crystals).
_CLIP_RMS = 4.0


def tile_origins(length_px: int, box_px: int) -> list[int]:
    """Start of each tile along one axis: half-overlapping, the last one flush with the far edge."""
    step = box_px // 2
    origins = list(range(0, length_px - box_px + 1, step))
    if origins[-1] != length_px - box_px:
        origins.append(length_px - box_px)
    return origins


def centred_frequency_grid(box_px: int, pixel_size_a: float) -> tuple[np.ndarray, np.ndarray]:
    """Frequency (1/Å) and azimuth (rad) of each pixel of a centred (fftshifted) box×box spectrum."""
    freq, azimuth = frequency_grid((box_px, box_px), pixel_size_a)
    return scipy.fft.fftshift(freq), scipy.fft.fftshift(azimuth)


def _full_from_half(half: np.ndarray, box_px: int) -> np.ndarray:
    """Complete an rfft2-layout power spectrum into the full fft2 layout using Friedel symmetry."""
    full = np.empty((box_px, box_px), dtype=half.dtype)
    full[:, : box_px // 2 + 1] = half
    mirrored_rows = (-np.arange(box_px)) % box_px
    full[:, box_px // 2 + 1:] = half[mirrored_rows, 1: box_px // 2][:, ::-1]
    return full


def average_amplitude_spectrum(image: np.ndarray, box_px: int, workers: int = 1) -> tuple[np.ndarray, int]:
    """Square root of the mean tile power spectrum, centred (zero frequency at [box/2, box/2]), float32.

    Returns (spectrum, number of tiles). Each tile has its mean removed and its edges tapered.
    """
    window_1d = tukey(box_px, _TAPER_FRACTION).astype(np.float32)
    window = np.outer(window_1d, window_1d)
    corners = [(y, x) for y in tile_origins(image.shape[0], box_px) for x in tile_origins(image.shape[1], box_px)]
    power = np.zeros((box_px, box_px // 2 + 1), dtype=np.float64)
    for start in range(0, len(corners), _TILES_PER_BATCH):
        batch = np.stack([image[y: y + box_px, x: x + box_px] for y, x in corners[start: start + _TILES_PER_BATCH]])
        batch = batch.astype(np.float32)
        batch -= batch.mean(axis=(1, 2), keepdims=True)
        batch *= window
        transform = scipy.fft.rfft2(batch, axes=(-2, -1), workers=workers)
        power += (transform.real**2 + transform.imag**2).sum(axis=0)
    power /= len(corners)
    spectrum = np.sqrt(_full_from_half(power, box_px)).astype(np.float32)
    return scipy.fft.fftshift(spectrum), len(corners)


def background_box_px(box_px: int, pixel_size_a: float, min_resolution_a: float) -> int:
    """Odd box-filter width (px) spanning √2/min_resolution in frequency, as CTFFIND4 chooses it."""
    width = int(box_px * pixel_size_a / min_resolution_a * np.sqrt(2.0))
    return max(3, width + 1 - width % 2)


def flatten_spectrum(spectrum: np.ndarray, freq: np.ndarray, min_frequency: float, filter_px: int) -> np.ndarray:
    """Background-subtracted spectrum in units of its local RMS, float32.

    Inside `min_frequency` the spectrum is replaced by its value at that radius first, so the strong
    low-frequency peak does not leak into the box-filtered background of the fitted band.
    """
    data = spectrum.astype(np.float32, copy=True)
    inside = freq < min_frequency
    rim = (freq >= min_frequency) & (freq < min_frequency * 1.15)
    data[inside] = np.median(data[rim]) if rim.any() else np.median(data)
    background = uniform_filter(data, filter_px, mode="reflect")
    residual = data - background
    local_rms = np.sqrt(uniform_filter(residual * residual, filter_px, mode="reflect"))
    flat = residual / np.maximum(local_rms, np.float32(1e-12) * max(float(local_rms.max()), 1e-30))
    flat[inside] = 0.0
    return np.clip(flat, -_CLIP_RMS, _CLIP_RMS).astype(np.float32)


def radial_profile(values: np.ndarray, box_px: int, pixel_size_a: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotational average of a centred spectrum in 1-pixel rings: (frequency 1/Å, mean value) up to Nyquist."""
    centre = box_px // 2
    yy, xx = np.indices(values.shape)
    ring = np.rint(np.hypot(yy - centre, xx - centre)).astype(np.int64).ravel()
    n_rings = centre + 1
    keep = ring < n_rings
    sums = np.bincount(ring[keep], weights=values.ravel()[keep], minlength=n_rings)
    counts = np.bincount(ring[keep], minlength=n_rings)
    freq = np.arange(n_rings) / (box_px * pixel_size_a)
    return freq, (sums / np.maximum(counts, 1)).astype(np.float32)


# Hexagonal ice reflections at 3.89, 3.67 and 3.44 Å; the band below covers the strongest pair.
_ICE_BAND_A = (3.9, 3.6)
_ICE_FLANKS_A = ((4.3, 3.9), (3.6, 3.3))


def ice_ring_density(spectrum: np.ndarray, box_px: int, pixel_size_a: float) -> float | None:
    """Excess of the rotationally averaged spectrum in the 3.9–3.6 Å ice band over its flanks (0 = no ice rings).

    None when Nyquist is coarser than 3.3 Å, so the band cannot be seen.
    """
    if 2.0 * pixel_size_a > _ICE_FLANKS_A[1][1]:
        return None
    freq, profile = radial_profile(spectrum, box_px, pixel_size_a)

    def band_mean(low_a: float, high_a: float) -> float:
        inside = (freq >= 1.0 / low_a) & (freq < 1.0 / high_a)
        return float(profile[inside].mean()) if inside.any() else float("nan")

    flank = np.nanmean([band_mean(*band) for band in _ICE_FLANKS_A])
    ring = band_mean(*_ICE_BAND_A)
    if not np.isfinite(ring) or not np.isfinite(flank) or flank <= 0:
        return None
    return ring / flank - 1.0


def ring_index(freq: np.ndarray, box_px: int, pixel_size_a: float) -> np.ndarray:
    """Nearest 1-pixel ring of each spectrum pixel (0 at the centre)."""
    return np.rint(freq * box_px * pixel_size_a).astype(np.int64)


def flatten_with_model(spectrum: np.ndarray, model: np.ndarray, rings: np.ndarray, period_px: np.ndarray,
                       first_ring: int) -> np.ndarray:
    """Flattened spectrum from a background B(r) and envelope E(r) fitted knowing the CTF² model.

    For each ring r the spectrum is regressed on [1, δ, CTF², CTF²·δ] (δ = ring offset) over rings within
    one Thon-ring period, i.e. B and E are locally linear in radius; the result is (A − B) / σ with σ the
    local residual RMS. Unlike a box filter, this does not eat broad low-resolution rings, which biased
    the defocus upwards. Rings inside `first_ring` are set to 0.
    """
    n_rings = int(period_px.shape[0])
    keep = rings < n_rings
    r, a, c = rings[keep], spectrum[keep].astype(np.float64), model[keep].astype(np.float64)
    columns = [np.ones_like(a), c, a, a * c, c * c, a * a]
    sums = np.stack([np.bincount(r, weights=col, minlength=n_rings) for col in columns])  # n, C, A, AC, CC, AA
    n_, c_, a_, ac_, cc_, aa_ = sums
    background = np.zeros(n_rings)
    noise = np.ones(n_rings)
    for i in range(first_ring, n_rings):
        half = int(np.clip(np.ceil(period_px[i]), 3, n_rings))
        lo, hi = max(first_ring, i - half), min(n_rings, i + half + 1)
        delta = np.arange(lo, hi) - i
        w0, w1, w2 = n_[lo:hi], n_[lo:hi] * delta, n_[lo:hi] * delta**2
        sc, scd, scc = c_[lo:hi], c_[lo:hi] * delta, c_[lo:hi] * delta**2
        sccc, sccd, sccdd = cc_[lo:hi], cc_[lo:hi] * delta, cc_[lo:hi] * delta**2
        normal = np.array([
            [w0.sum(), w1.sum(), sc.sum(), scd.sum()],
            [w1.sum(), w2.sum(), scd.sum(), scc.sum()],
            [sc.sum(), scd.sum(), sccc.sum(), sccd.sum()],
            [scd.sum(), scc.sum(), sccd.sum(), sccdd.sum()]])
        rhs = np.array([a_[lo:hi].sum(), (a_[lo:hi] * delta).sum(), ac_[lo:hi].sum(), (ac_[lo:hi] * delta).sum()])
        ridge = 1e-9 * np.trace(normal) * np.eye(4)
        beta = np.linalg.solve(normal + ridge, rhs)
        residual = aa_[lo:hi].sum() - beta @ rhs
        background[i] = beta[0]
        noise[i] = np.sqrt(max(residual, 0.0) / max(w0.sum() - 4, 1.0))
    noise = np.maximum(noise, 1e-12 * max(float(noise.max()), 1e-30))
    flat = np.zeros(spectrum.shape, dtype=np.float32)
    inside = keep & (rings >= first_ring)
    flat[inside] = (spectrum[inside] - background[rings[inside]]) / noise[rings[inside]]
    return np.clip(flat, -_CLIP_RMS, _CLIP_RMS)


def azimuthal_smoothing(spectrum: np.ndarray, half_width_deg: float, step_deg: float = 1.0) -> np.ndarray:
    """Mean of the centred spectrum rotated about its centre by -half_width..+half_width degrees.

    For pictures only: it averages along the rings, not across them, so Thon rings too weak to see pixel
    by pixel show, while their radius (what a person compares with the fit) is unchanged.
    """
    box = spectrum.shape[0]
    centre = np.array([box // 2, box // 2], dtype=np.float64)
    data = spectrum.astype(np.float32)
    total = np.zeros_like(data)
    angles = np.deg2rad(np.arange(-half_width_deg, half_width_deg + 0.5 * step_deg, step_deg))
    for angle in angles:
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        total += affine_transform(data, rotation, offset=centre - rotation @ centre, order=1, mode="constant")
    return total / len(angles)
