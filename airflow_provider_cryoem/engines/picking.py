"""Template-free particle picking: Laplacian-of-Gaussian blobs at the particle size (as relion_autopick --LoG).

The micrograph is Fourier-cropped so the particle radius spans about ten pixels, filtered with a
scale-normalised LoG at a few diameters in [min, max], each response turned into robust z-scores; the
per-pixel best scale gives the figure of merit. A second filter bank adds the LoG stretched into rods (length
the diameter, width a third of it, twelve orientations): side views of elongated particles are rods that an
isotropic blob of their length barely covers, and rods lying side by side merge into one blob. Which bank a
micrograph is picked with is decided by the F1 that the adaptive threshold (below) estimates for each, both
against the larger of their particle counts: the rods win on elongated particles in the realistic
simulator, the isotropic LoG on fei-extended's and EMPIAR-10028's compact particles, where extra
orientations only find more ice texture. Where the isotropic bank is kept, a third score is tried: the
normalised cross-correlation with a reference averaged from that bank's own picks (picking_template.py); it
is kept where its estimated F1 is higher and it finds at least 1.5 × the particles (particles packed edge to
edge, EMPIAR-10059, whose bright gaps the LoG's null counts as noise). Peaks are kept greedily from the
strongest down with a minimum distance, away from the edges. The threshold adapts to the micrograph: blobs of the opposite contrast
(bright where particles are dark) come from noise and ice texture alone, so their count above a threshold
estimates the false picks among the particle-contrast blobs, and the threshold with the best estimated F1 is
taken (never below `threshold`). A fixed z cut-off assumes the simulator's white noise; on real micrographs it
kept hundreds of ice blobs or, raised, missed the particles. Two checks remove the usual false picks: junk
(blobs that still respond strongly at 1.25 × the largest diameter, i.e. are larger than a particle, as
Relion's --Log_max_search scan of larger scales does, judged against the picks' own spread of that ratio;
or whose response is far stronger than the population's) and carbon / thick-ice regions (local mean or std
at a three-diameter scale far from the micrograph's robust median; within a diameter of the mask's border
a pixel stays masked only if its one-diameter mean is nearer the film's level than the ice's, since the
three-diameter window reaches that far into the ice beside a carbon edge, where particles were dropped; the
masked pixels are also left out of the z-score statistics). Real-data accuracy: BENCHMARKS.md,
benchmarks/bench_picking_real.py.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.fft
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage

from ..io import ImageFileError, read_image_2d, write_star
from .picking_template import normalised_cross_correlation, self_reference
from .thumbnails import picks_overlay

# The downsampled pixel is diameter / _PIXELS_PER_DIAMETER: the radius spans ~10 pixels, enough for LoG.
_PIXELS_PER_DIAMETER = 20.0
_SCALE_COUNT = 5
# Junk test: a particle's LoG response falls off above its size; at 1.25 × the largest diameter it keeps
# < 0.4 of its in-range response on simulated particles at 1-3 µm defocus, aggregates larger than that > 0.45.
_JUNK_SCALE_FACTOR = 1.25
_JUNK_RESPONSE_RATIO = 0.45
# ... and that large-scale response must itself be a detection (z), or noise at low dose rejects particles.
_JUNK_MIN_Z = 2.5
# ... and above the picks' own ratios by this many robust std (on real micrographs particles keep 0.5-0.95).
_JUNK_RATIO_MADS = 3.0
# Local statistics window, in particle diameters, for carbon / thick-ice detection.
_LOCAL_WINDOW_DIAMETERS = 3.0
_MAD_TO_STD = 1.4826
# Default minimum distance between picks, in diameters: touching particles (centres 0.7-1 diameter apart) are
# both picked; the two lobes of one elongated particle (< 0.6 diameter apart), which the isotropic LoG can
# see as two blobs, are not.
_MIN_DISTANCE_DIAMETERS = 0.7
# With the rods, which cover an elongated particle with one peak, 0.6: at 0.7 a fifth of the misses on the
# realistic simulator were particles 0.7 diameter from a picked neighbour that pulled its peak toward itself.
_ROD_MIN_DISTANCE_DIAMETERS = 0.6
# Rod filters: width = length / aspect (a 150 kDa rod 130 Å long is ~45 Å wide), orientations over 180°.
_ROD_ASPECT = 3.0
_ROD_ORIENTATIONS = 12
_ROD_STATISTICS_STRIDE = 2
_ROD_LENGTH_COUNT = 3
# Self-made reference (picking_template.py): made from the blob bank's picks, or its strongest 30 peaks when it
# kept fewer than 8; kept only when it also finds 1.5 × the particles the blob banks estimate (on the realistic
# simulator's elongated particles it found 1.0-1.55 × at a lower true F1; on EMPIAR-10059 1.6-3.5 ×).
_TEMPLATE_MIN_CANDIDATES = 8
_TEMPLATE_FALLBACK_CANDIDATES = 30
_TEMPLATE_MIN_PARTICLE_RATIO = 1.5


class PickingInputs(BaseModel):
    """One micrograph and the particle size to look for; distances in Å, converted with `pixel_size_a`."""

    model_config = ConfigDict(extra="forbid")

    micrograph_path: str = Field(min_length=1)
    pixel_size_a: float = Field(gt=0)
    particle_diameter_a: float = Field(gt=0)
    min_diameter_a: float | None = Field(None, gt=0, description="Smallest LoG diameter; default 0.8 × diameter.")
    max_diameter_a: float | None = Field(None, gt=0, description="Largest LoG diameter; default 1.2 × diameter.")
    threshold: float = Field(2.0, description="Lowest figure of merit, in robust standard deviations of the "
                                              "LoG map (Relion's LoG threshold unit); the adaptive threshold "
                                              "may raise it.")
    min_distance_a: float | None = Field(None, gt=0, description="Minimum distance between picks; default "
                                                                 "0.7 × diameter (touching particles), 0.6 × "
                                                                 "with the rod filters.")
    edge_exclusion_a: float | None = Field(None, ge=0, description="No pick closer than this to the edge; "
                                                                   "default the particle radius.")
    max_particles: int | None = Field(None, ge=1, description="Keep at most this many, the strongest.")
    adaptive_threshold: bool = Field(True, description="Raise the threshold to the best F1 estimated from the "
                                                       "micrograph's blobs of the opposite contrast (noise).")
    elongated_filters: bool = Field(True, description="Also try rod-shaped LoG filters over 12 orientations "
                                                      "and keep them where the estimated F1 is higher.")
    template_matching: bool = Field(True, description="Also score by NCC with a reference averaged from the "
                                                      "micrograph's own best candidates; kept where the "
                                                      "estimated F1 is higher.")
    particles_are_dark: bool = Field(True, description="Protein is dark in an untreated micrograph.")
    reject_carbon: bool = Field(True, description="Drop picks in carbon / thick-ice regions (local statistics).")
    reject_junk: bool = Field(True, description="Drop blobs much larger or far stronger than particles.")
    outlier_mads: float = Field(5.0, gt=0, description="Junk: figures of merit over this many robust std above "
                                                       "the picks' median.")
    local_statistics_mads: float = Field(3.5, gt=0, description="Carbon: local mean or std over this many robust "
                                                                "std from the micrograph's median.")
    coordinates_star_path: str | None = None
    summary_image_path: str | None = None

    @model_validator(mode="after")
    def _diameter_range_ordered(self) -> "PickingInputs":
        if self.diameter_range_a[0] > self.diameter_range_a[1]:
            raise ValueError(f"min_diameter_a ({self.diameter_range_a[0]}) exceeds max_diameter_a "
                             f"({self.diameter_range_a[1]})")
        return self

    @property
    def diameter_range_a(self) -> tuple[float, float]:
        return (self.min_diameter_a or 0.8 * self.particle_diameter_a,
                self.max_diameter_a or 1.2 * self.particle_diameter_a)


class PickingResult(BaseModel):
    """Picks in micrograph pixels `[x, y]` with their figures of merit (LoG z-scores), strongest first."""

    coordinates_px: list[list[float]]
    figures_of_merit: list[float]
    particle_count: int
    diameter_a: float = Field(description="Median best-scale diameter of the picks (nominal if none).")
    rejected: dict[str, int] = Field(description="Candidates dropped per reason: edge, carbon, junk, max_particles.")
    coordinates_star: str | None = None
    summary_image: str | None = None


def read_micrograph(path: str | Path) -> np.ndarray:
    """A 2D float32 micrograph (MRC or TIFF; a one-section stack is accepted); ImageFileError otherwise."""
    path, data = read_image_2d(path)
    image = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(image)):
        raise ImageFileError(path, "micrograph contains NaN or infinite values")
    return image


def fourier_crop(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Downscale the last two axes to `shape` by cropping the spectrum (ideal low-pass, no aliasing), float32.

    Sample i of the result lies at input position i × (n_in / n_out); the mean intensity is preserved.
    """
    data = np.asarray(images, dtype=np.float32)
    ny, nx = data.shape[-2:]
    my, mx = shape
    if (my, mx) == (ny, nx):
        return data.copy()
    if my > ny or mx > nx or my < 1 or mx < 1:
        raise ValueError(f"cannot Fourier-crop an image of {ny}×{nx} to {my}×{mx}")
    spectrum = scipy.fft.rfft2(data, axes=(-2, -1), workers=-1)
    rows = np.concatenate([spectrum[..., : (my + 1) // 2, : mx // 2 + 1],
                           spectrum[..., ny - my // 2:, : mx // 2 + 1]], axis=-2)
    cropped = scipy.fft.irfft2(rows, s=(my, mx), axes=(-2, -1), workers=-1)
    return (cropped * (my * mx / (ny * nx))).astype(np.float32)


def _downsample(image: np.ndarray, pixel_size_a: float, target_pixel_a: float) -> tuple[np.ndarray, np.ndarray]:
    """Fourier-crop to about `target_pixel_a`; returns (small image, per-axis [y, x] factor small→full px)."""
    factor = max(1.0, target_pixel_a / pixel_size_a)
    shape = tuple(max(16, int(round(n / factor / 2)) * 2) for n in image.shape)
    shape = tuple(min(s, n) for s, n in zip(shape, image.shape))
    small = fourier_crop(image, shape)
    return small, np.array(image.shape, dtype=np.float64) / np.array(shape, dtype=np.float64)


def _log_spectrum(freq_sq: np.ndarray, sigma_px: float) -> np.ndarray:
    """Fourier transform of the scale-normalised LoG, −σ²∇²G: positive response at bright blobs of radius ≈ σ√2."""
    factor = (2.0 * np.pi * sigma_px) ** 2
    return (factor * freq_sq * np.exp(-0.5 * factor * freq_sq)).astype(np.float32)


def _elongated_log_spectrum(fy: np.ndarray, fx: np.ndarray, sigma_long_px: float, sigma_short_px: float,
                            angle_rad: float) -> np.ndarray:
    """Fourier transform of −(σu²∂uu + σv²∂vv)G, G a Gaussian with σu along `angle_rad` and σv across: the
    scale-normalised LoG stretched to an ellipse, strongest on bright rods 2√2 σu long and 2√2 σv wide at that
    angle (σu = σv gives `_log_spectrum`). Even in frequency, so the half-plane of an rfft grid suffices."""
    along = fx * math.cos(angle_rad) + fy * math.sin(angle_rad)
    across = fy * math.cos(angle_rad) - fx * math.sin(angle_rad)
    quadratic = (2.0 * np.pi) ** 2 * ((sigma_long_px * along) ** 2 + (sigma_short_px * across) ** 2)
    return (quadratic * np.exp(-0.5 * quadratic)).astype(np.float32)


def _robust_z(values: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """(values − median) / (1.4826 MAD) of `reference` (default `values`): a standard score that a minority
    of particles or carbon cannot skew."""
    reference = values if reference is None else reference
    median = np.median(reference)
    spread = _MAD_TO_STD * np.median(np.abs(reference - median))
    return (values - median) / (spread if spread > 0 else 1.0)


class _Estimate(NamedTuple):
    """What the opposite-contrast blobs say about the picks over a threshold: picks, true picks among them, and
    particles on the micrograph (the most true picks over any threshold)."""

    picks: int
    true_picks: int
    particles: int

    def f1(self, particles: int) -> float:
        """Estimated F1 against `particles` (the larger count when two filter banks are compared)."""
        total = self.picks + particles
        return 2 * self.true_picks / total if total else 0.0


def _adaptive_threshold(particle_scores: np.ndarray, null_scores: np.ndarray,
                        floor: float) -> tuple[float, _Estimate]:
    """The threshold (≥ `floor`) with the best F1 estimated from blobs of the opposite contrast, and the estimate.

    Noise and ice texture make dark and bright blobs alike; particles add only blobs of their own contrast.
    Above a threshold t, the opposite-contrast blobs estimate how many of the picks are noise, so
    picks(t) − opposite(t) estimates the true picks, its largest value the particles there are, and from these
    precision and recall follow: the threshold is set by this micrograph's own statistics, where a fixed z
    cut-off assumes one noise level (the simulator's white noise) for every micrograph.
    """
    candidates = np.sort(particle_scores[particle_scores >= floor])
    if len(candidates) == 0:
        return floor, _Estimate(0, 0, 0)
    picks_above = len(candidates) - np.arange(len(candidates))
    null_above = len(null_scores) - np.searchsorted(np.sort(null_scores), candidates, side="left")
    true_above = np.maximum(picks_above - null_above, 0)
    if true_above.max() == 0:  # nothing stands out from the noise: no picks
        return float(candidates[-1]) + 1e-6, _Estimate(0, 0, 0)
    f1 = 2 * true_above / (picks_above + true_above.max())
    best = int(np.argmax(f1))
    return float(candidates[best]), _Estimate(int(picks_above[best]), int(true_above[best]), int(true_above.max()))


class _LogFilter:
    """Scale-normalised LoG responses (isotropic or rods) of one image, z-scored against the pixels that are not
    carbon.

    The image is mirror-padded before the FFT so the periodic wrap does not make edge artefacts.
    """

    def __init__(self, image: np.ndarray, pad_px: int, reference_mask: np.ndarray) -> None:
        self.shape = image.shape
        self.pad_px = min(pad_px, *(n - 1 for n in image.shape))
        padded = np.pad(image, self.pad_px, mode="symmetric")
        self.spectrum = scipy.fft.rfft2(padded, workers=-1)
        fy = np.fft.fftfreq(padded.shape[0]).astype(np.float32)
        fx = np.fft.rfftfreq(padded.shape[1]).astype(np.float32)
        self.fy, self.fx = fy[:, None], fx[None, :]
        self.freq_sq = self.fy ** 2 + self.fx ** 2
        self.padded_shape = padded.shape
        self.reference_mask = reference_mask

    def z_map(self, transfer: np.ndarray, stride: int = 1) -> np.ndarray:
        """The image filtered by `transfer` (on the padded rfft grid), as robust z-scores; the median and MAD
        from every `stride`-th row and column (a band-limited map varies little from one pixel to the next)."""
        crop = (slice(self.pad_px, self.pad_px + self.shape[0]), slice(self.pad_px, self.pad_px + self.shape[1]))
        filtered = scipy.fft.irfft2(self.spectrum * transfer, s=self.padded_shape, workers=-1)[crop]
        return _robust_z(filtered, filtered[::stride, ::stride][self.reference_mask[::stride, ::stride]])

    def z_maps(self, diameters_px: np.ndarray) -> np.ndarray:
        """One z-scored map per diameter (diameter d ↔ σ = d / (2√2), the LoG scale that peaks on a disc)."""
        return np.stack([self.z_map(_log_spectrum(self.freq_sq, diameter / (2 * math.sqrt(2))))
                         for diameter in diameters_px])

    def best_rods(self, lengths_px: np.ndarray, aspect: float,
                  orientations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per pixel over rods of each length and orientation: the highest z, the index of its length, and
        the lowest z (the opposite contrast's best), reduced as they come (no stack of all the maps)."""
        best = np.full(self.shape, -np.inf, dtype=np.float32)
        lowest = np.full(self.shape, np.inf, dtype=np.float32)
        best_length = np.zeros(self.shape, dtype=np.int64)
        for index, length in enumerate(lengths_px):
            for angle in np.arange(orientations) * np.pi / orientations:
                z = self.z_map(_elongated_log_spectrum(self.fy, self.fx, length / (2 * math.sqrt(2)),
                                                       length / aspect / (2 * math.sqrt(2)), float(angle)),
                               stride=_ROD_STATISTICS_STRIDE)
                better = z > best
                best[better], best_length[better] = z[better], index
                np.minimum(lowest, z, out=lowest)
        return best, best_length, lowest


def _local_maxima(score: np.ndarray, threshold: float, min_distance_px: float) -> np.ndarray:
    """Row/col indices of local maxima above `threshold`, strongest first, thinned greedily to `min_distance_px`."""
    size = max(3, int(min_distance_px) | 1)
    peaks = (score == ndimage.maximum_filter(score, size=size, mode="nearest")) & (score > threshold)
    rows, cols = np.nonzero(peaks)
    order = np.argsort(-score[rows, cols], kind="stable")
    # each kept peak blocks a disc around it: one lookup per candidate instead of a distance to every kept one
    radius = math.ceil(min_distance_px)
    dy, dx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disc = dy ** 2 + dx ** 2 < min_distance_px ** 2
    blocked = np.zeros((score.shape[0] + 2 * radius, score.shape[1] + 2 * radius), dtype=bool)
    kept: list[tuple[int, int]] = []
    for row, col in zip(rows[order], cols[order]):
        if not blocked[row + radius, col + radius]:
            kept.append((row, col))
            blocked[row:row + 2 * radius + 1, col:col + 2 * radius + 1] |= disc
    return np.array(kept, dtype=np.int64).reshape(-1, 2)


def _subpixel(score: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Refine integer peaks by a parabola through the neighbours along each axis; returns float [row, col]."""
    refined = peaks.astype(np.float64)
    for axis in (0, 1):
        idx = peaks[:, axis]
        inside = (idx > 0) & (idx < score.shape[axis] - 1)
        lo, hi = peaks.copy(), peaks.copy()
        lo[:, axis] -= 1
        hi[:, axis] += 1
        lo[~inside], hi[~inside] = peaks[~inside], peaks[~inside]
        f_lo, f_0, f_hi = (score[p[:, 0], p[:, 1]] for p in (lo, peaks, hi))
        curvature = f_lo - 2 * f_0 + f_hi
        offset = np.where(curvature < 0, 0.5 * (f_lo - f_hi) / np.where(curvature < 0, curvature, -1), 0.0)
        refined[:, axis] += np.clip(offset, -0.5, 0.5)
    return refined


def _carbon_mask(image: np.ndarray, window_px: float, limit: float) -> np.ndarray:
    """Pixels whose local mean or local std (over `window_px`) lies over `limit` robust std from the median.

    Carbon scatters more than the ice (darker), and its edge or contamination add a step to the local
    variance; a gentle ice gradient spreads the local mean evenly and stays inside the limit.
    """
    size = max(3, int(round(window_px)))
    mean = ndimage.uniform_filter(image, size=size, mode="reflect")
    variance = np.maximum(ndimage.uniform_filter(image * image, size=size, mode="reflect") - mean * mean, 0)
    return (np.abs(_robust_z(mean)) > limit) | (_robust_z(np.sqrt(variance)) > limit)


def _refine_carbon_edge(mask: np.ndarray, image: np.ndarray, margin_px: int) -> np.ndarray:
    """`mask` with the band it adds beside the film handed back to the ice where the image there looks like ice.

    A window of several diameters flags the ice up to half its width beside a carbon edge, and the particles
    there with it. Pixels more than `margin_px` inside the mask are film; in the band nearer its border a
    pixel stays film only if its local mean, over `margin_px`, is nearer the film's level than the ice's.
    Small flagged areas (contamination, no interior) are kept whole.
    """
    core = ndimage.binary_erosion(mask, iterations=margin_px, border_value=1)
    if not core.any() or core.all() or not (~mask).any():
        return mask
    local_mean = ndimage.uniform_filter(image, size=max(3, margin_px), mode="reflect")
    ice_level, film_level = float(np.median(local_mean[~mask])), float(np.median(local_mean[core]))
    film_like = np.abs(local_mean - film_level) < np.abs(local_mean - ice_level)
    return core | (mask & film_like)


def _detect(score: np.ndarray, null_score: np.ndarray, carbon_map: np.ndarray, inputs: PickingInputs,
            min_distance_px: float) -> tuple[np.ndarray, _Estimate]:
    """Peaks of `score` over the (adaptive) threshold, strongest first, and what the opposite-contrast peaks of
    `null_score` estimate for them: what decides between filter banks."""
    peaks = _local_maxima(score, inputs.threshold, min_distance_px)
    if not len(peaks):
        return peaks, _Estimate(0, 0, 0)
    null_peaks = _local_maxima(null_score, inputs.threshold, min_distance_px)
    off_carbon = ~carbon_map[peaks[:, 0], peaks[:, 1]]
    null_off_carbon = ~carbon_map[null_peaks[:, 0], null_peaks[:, 1]]
    threshold, estimate = _adaptive_threshold(
        score[peaks[off_carbon, 0], peaks[off_carbon, 1]],
        null_score[null_peaks[null_off_carbon, 0], null_peaks[null_off_carbon, 1]], inputs.threshold)
    if inputs.adaptive_threshold:
        peaks = peaks[score[peaks[:, 0], peaks[:, 1]] >= threshold]
    return peaks, estimate


def _template_bank(small: np.ndarray, score: np.ndarray, peaks: np.ndarray, carbon_map: np.ndarray,
                   inputs: PickingInputs, small_pixel_a: float,
                   min_distance_px: float) -> tuple[np.ndarray, np.ndarray, _Estimate] | None:
    """(z-scored map, peaks, estimate) of the NCC with a reference averaged from the blob bank's picks (its
    best candidates, the first 30 if it kept fewer than 8); the opposite-contrast null is the NCC's negative,
    i.e. matches to the reference with its contrast inverted. None when no reference could be made."""
    candidates = peaks[~carbon_map[peaks[:, 0], peaks[:, 1]]]
    if len(candidates) < _TEMPLATE_MIN_CANDIDATES:
        candidates = _local_maxima(score, -np.inf, min_distance_px)
        candidates = candidates[~carbon_map[candidates[:, 0], candidates[:, 1]]][:_TEMPLATE_FALLBACK_CANDIDATES]
    diameter_px = inputs.particle_diameter_a / small_pixel_a
    reference = self_reference(small, candidates, diameter_px)
    if reference is None:
        return None
    ncc = normalised_cross_correlation(small, reference)
    z = _robust_z(ncc, ncc[~carbon_map])
    template_peaks, template_estimate = _detect(z, -z, carbon_map, inputs, min_distance_px)
    return z, template_peaks, template_estimate


def _write_coordinates_star(path: str | Path, coordinates_px: np.ndarray, merits: np.ndarray) -> Path:
    """Relion coordinate STAR (rlnCoordinateX/Y, rlnAutopickFigureOfMerit), written atomically."""
    table = pd.DataFrame({"rlnCoordinateX": np.round(coordinates_px[:, 0], 2),
                          "rlnCoordinateY": np.round(coordinates_px[:, 1], 2),
                          "rlnAutopickFigureOfMerit": np.round(merits, 4)})
    return write_star(path, {"": table})


def pick_particles(image: np.ndarray,
                   inputs: PickingInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Pick `image`; returns ([x, y] full-size px, figures of merit, best diameters Å, rejected counts)."""
    pixel_a = inputs.pixel_size_a
    target_pixel_a = inputs.particle_diameter_a / _PIXELS_PER_DIAMETER
    small, factor_yx = _downsample(image, pixel_a, target_pixel_a)
    small_pixel_a = pixel_a * float(factor_yx.mean())
    if inputs.particles_are_dark:
        small = -small
    small = small - small.mean()
    carbon_map = (_carbon_mask(small, _LOCAL_WINDOW_DIAMETERS * inputs.particle_diameter_a / small_pixel_a,
                               inputs.local_statistics_mads)
                  if inputs.reject_carbon else np.zeros(small.shape, dtype=bool))
    if carbon_map.mean() > 0.5:  # mostly carbon (or a very uneven image): no robust idea of "normal ice"
        carbon_map[:] = False
    if carbon_map.any():
        carbon_map = _refine_carbon_edge(carbon_map, small, max(1, round(inputs.particle_diameter_a / small_pixel_a)))

    low_a, high_a = inputs.diameter_range_a
    diameters_a = np.linspace(low_a, high_a, _SCALE_COUNT) if high_a > low_a else np.array([low_a])
    junk_diameter_px = _JUNK_SCALE_FACTOR * high_a / small_pixel_a
    log_filter = _LogFilter(small, math.ceil(2 * junk_diameter_px), ~carbon_map)
    maps = log_filter.z_maps(diameters_a / small_pixel_a)
    # blobs of the opposite contrast, at the same scales, are the noise the adaptive threshold measures
    score, null_score = maps.max(axis=0), -maps.min(axis=0)
    best_diameter_a = diameters_a[maps.argmax(axis=0)]
    min_distance_px = (inputs.min_distance_a or _MIN_DISTANCE_DIAMETERS * inputs.particle_diameter_a) / small_pixel_a
    peaks, estimate = _detect(score, null_score, carbon_map, inputs, min_distance_px)
    rods_kept = False
    if inputs.elongated_filters:
        rod_lengths_a = np.linspace(low_a, high_a, _ROD_LENGTH_COUNT) if high_a > low_a else np.array([low_a])
        rods, rod_scale, rods_lowest = log_filter.best_rods(rod_lengths_a / small_pixel_a, _ROD_ASPECT,
                                                            _ROD_ORIENTATIONS)
        with_rods = np.maximum(score, rods)
        null_with_rods = np.maximum(null_score, -rods_lowest)
        rod_distance_px = (inputs.min_distance_a
                           or _ROD_MIN_DISTANCE_DIAMETERS * inputs.particle_diameter_a) / small_pixel_a
        rod_peaks, rod_estimate = _detect(with_rods, null_with_rods, carbon_map, inputs, rod_distance_px)
        # each bank's F1 against the larger particle count: a bank that sees only the compact views of
        # elongated particles counts fewer particles and would otherwise score its few picks as complete
        particles = max(estimate.particles, rod_estimate.particles)
        if rod_estimate.f1(particles) > estimate.f1(particles):
            best_diameter_a = np.where(rods > score, rod_lengths_a[rod_scale], best_diameter_a)
            score, peaks = with_rods, rod_peaks
            estimate, rods_kept = rod_estimate, True
        estimate = _Estimate(estimate.picks, estimate.true_picks, particles)
    if inputs.template_matching and not rods_kept:  # a rotationally averaged reference suits compact particles
        template = _template_bank(small, score, peaks, carbon_map, inputs, small_pixel_a, min_distance_px)
        if template is not None:
            template_score, template_peaks, template_estimate = template
            # the NCC's own null flatters it (a round reference scores elongated or irregular particles with
            # few opposite-contrast matches), so it must also find clearly more particles than the blob banks
            particles = max(estimate.particles, template_estimate.particles)
            if (template_estimate.f1(particles) > estimate.f1(particles)
                    and template_estimate.particles >= _TEMPLATE_MIN_PARTICLE_RATIO * estimate.particles):
                score, peaks = template_score, template_peaks
                best_diameter_a = np.full(score.shape, inputs.particle_diameter_a)

    rejected = {"edge": 0, "carbon": 0, "junk": 0, "max_particles": 0}
    if len(peaks) == 0:
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0), rejected
    merits = score[peaks[:, 0], peaks[:, 1]]
    keep = np.ones(len(peaks), dtype=bool)

    if inputs.reject_junk:
        big = log_filter.z_maps(np.array([junk_diameter_px]))[0]
        big_ratio = big[peaks[:, 0], peaks[:, 1]] / merits
        ratio_limit = _JUNK_RESPONSE_RATIO
        if len(merits) >= 10:  # real particles among neighbours keep more of their response than simulated ones
            ratio_limit = max(ratio_limit, float(np.median(big_ratio) + _JUNK_RATIO_MADS * _MAD_TO_STD
                                                 * np.median(np.abs(big_ratio - np.median(big_ratio)))))
        too_big = (big_ratio > ratio_limit) & (big[peaks[:, 0], peaks[:, 1]] > _JUNK_MIN_Z)
        too_strong = _robust_z(merits) > inputs.outlier_mads if len(merits) >= 10 else np.zeros_like(keep)
        junk = too_big | too_strong
        rejected["junk"] = int(np.count_nonzero(junk))
        keep &= ~junk
    carbon = carbon_map[peaks[:, 0], peaks[:, 1]] & keep
    rejected["carbon"] = int(np.count_nonzero(carbon))
    keep &= ~carbon

    rows_cols = _subpixel(score, peaks) * factor_yx
    coordinates = rows_cols[:, ::-1]
    edge_px = (inputs.edge_exclusion_a if inputs.edge_exclusion_a is not None
               else 0.5 * inputs.particle_diameter_a) / pixel_a
    limits = np.array([image.shape[1], image.shape[0]], dtype=np.float64) - 1 - edge_px
    off_edge = np.any((coordinates < edge_px) | (coordinates > limits), axis=1) & keep
    rejected["edge"] = int(np.count_nonzero(off_edge))
    keep &= ~off_edge

    index = np.flatnonzero(keep)
    if inputs.max_particles is not None and len(index) > inputs.max_particles:
        rejected["max_particles"] = len(index) - inputs.max_particles
        index = index[: inputs.max_particles]
    return (coordinates[index], merits[index].astype(np.float64),
            best_diameter_a[peaks[index, 0], peaks[index, 1]], rejected)


def run_picking(inputs: PickingInputs) -> PickingResult:
    """Pick one micrograph file, write the coordinate STAR and the overlay picture when paths are given."""
    image = read_micrograph(inputs.micrograph_path)
    coordinates, merits, diameters_a, rejected = pick_particles(image, inputs)
    star = (str(_write_coordinates_star(inputs.coordinates_star_path, coordinates, merits))
            if inputs.coordinates_star_path else None)
    summary = None
    if inputs.summary_image_path:
        summary = str(picks_overlay(image, coordinates.tolist(), inputs.particle_diameter_a / inputs.pixel_size_a,
                                    inputs.summary_image_path))
    return PickingResult(
        coordinates_px=np.round(coordinates, 2).tolist(),
        figures_of_merit=np.round(merits, 4).tolist(),
        particle_count=len(coordinates),
        diameter_a=float(np.median(diameters_a)) if len(diameters_a) else inputs.particle_diameter_a,
        rejected=rejected,
        coordinates_star=star,
        summary_image=summary,
    )
