"""Fitting CTF² to a flattened amplitude spectrum: 1D exhaustive search, 2D refinement, fit resolution.

The score everywhere is the normalised cross-correlation between the flattened spectrum and CTF², as in
CTFFIND4 (Rohou & Grigorieff 2015). Astigmatism is parameterised as defocus(θ) = mean + a·cos 2θ + b·sin 2θ
during refinement, which has no angle wrap-around and no U/V swap, and is converted to U, V and the angle
of U (counter-clockwise from +x, in [0, 180)) at the end.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from .ctf_model import ctf_phase, defocus_at_azimuth_a, electron_wavelength_a

# Astigmatism (Å) and azimuth (deg) grids of the coarse 2D search that seeds the refinement.
_ASTIGMATISM_GRID_A = (250.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0)
_ANGLE_GRID_DEG = tuple(range(0, 180, 15))
_MEAN_OFFSETS_A = (-300.0, 0.0, 300.0)
_REFINEMENT_STARTS = 3
# Local CC between equiphase profile and fit below which the fit is no longer trusted (CTFFIND4 uses
# a similar criterion on its 1D "fit quality" curve).
_FIT_CC_THRESHOLD = 0.3
# Thon rings closer than this (px) are aliased by the spectrum sampling: no fit is trusted beyond.
_MIN_RING_PERIOD_PX = 3.0


@dataclass(frozen=True)
class CtfOptics:
    """Microscope constants the CTF depends on."""

    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float

    def ctf_squared(self, freq: np.ndarray, defocus_a: np.ndarray | float, phase_shift_rad: float = 0.0) -> np.ndarray:
        """CTF² (what an amplitude spectrum shows, up to envelope and background)."""
        chi = ctf_phase(freq, defocus_a, self.voltage_kv, self.cs_mm, self.amplitude_contrast, phase_shift_rad)
        return np.sin(chi) ** 2


@dataclass(frozen=True)
class CtfParameters:
    """A fitted CTF in the project's convention (U ≥ V, angle of U in [0, 180), phase shift in [0, 180))."""

    defocus_u_a: float
    defocus_v_a: float
    astigmatism_angle_deg: float
    phase_shift_deg: float = 0.0

    @classmethod
    def from_components(cls, mean_a: float, cos_a: float, sin_a: float, phase_shift_deg: float = 0.0
                        ) -> "CtfParameters":
        """From defocus(θ) = mean + cos_a·cos 2θ + sin_a·sin 2θ."""
        half_a = float(np.hypot(cos_a, sin_a))
        angle_deg = float(np.rad2deg(0.5 * np.arctan2(sin_a, cos_a))) % 180.0
        return cls(mean_a + half_a, mean_a - half_a, angle_deg, phase_shift_deg % 180.0)

    def components(self) -> tuple[float, float, float]:
        """(mean, cos_a, sin_a) with defocus(θ) = mean + cos_a·cos 2θ + sin_a·sin 2θ."""
        half, angle = 0.5 * self.astigmatism_a, np.deg2rad(2.0 * self.astigmatism_angle_deg)
        return self.mean_defocus_a, float(half * np.cos(angle)), float(half * np.sin(angle))

    @property
    def mean_defocus_a(self) -> float:
        return 0.5 * (self.defocus_u_a + self.defocus_v_a)

    @property
    def astigmatism_a(self) -> float:
        return self.defocus_u_a - self.defocus_v_a

    def defocus_at(self, azimuth_rad: np.ndarray) -> np.ndarray:
        return defocus_at_azimuth_a(azimuth_rad, self.defocus_u_a, self.defocus_v_a, self.astigmatism_angle_deg)

    def phase(self, optics: CtfOptics, freq: np.ndarray, azimuth_rad: np.ndarray) -> np.ndarray:
        """CTF phase χ at each frequency/azimuth (CTF = -sin χ)."""
        return ctf_phase(freq, self.defocus_at(azimuth_rad), optics.voltage_kv, optics.cs_mm,
                         optics.amplitude_contrast, np.deg2rad(self.phase_shift_deg))

    def ctf_squared(self, optics: CtfOptics, freq: np.ndarray, azimuth_rad: np.ndarray) -> np.ndarray:
        return np.sin(self.phase(optics, freq, azimuth_rad)) ** 2


def normalised_cc(data: np.ndarray, model: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson correlation along `axis` (0 where either side is constant)."""
    d = data - data.mean(axis=axis, keepdims=True)
    m = model - model.mean(axis=axis, keepdims=True)
    denominator = np.sqrt((d * d).sum(axis=axis) * (m * m).sum(axis=axis))
    return np.where(denominator > 0, (d * m).sum(axis=axis) / np.where(denominator > 0, denominator, 1.0), 0.0)


def search_defocus_1d(freq: np.ndarray, profile: np.ndarray, optics: CtfOptics, defoci_a: np.ndarray,
                      phase_shifts_rad: np.ndarray) -> tuple[float, float, float]:
    """Best (defocus Å, phase shift rad, CC) of a rotational average over a defocus × phase-shift grid.

    The best grid defocus is then polished by a bounded 1D search within one grid step.
    """
    best = (float(defoci_a[0]), float(phase_shifts_rad[0]), -np.inf)
    for phase in phase_shifts_rad:
        models = optics.ctf_squared(freq[None, :], defoci_a[:, None], float(phase))
        scores = normalised_cc(profile[None, :], models)
        index = int(np.argmax(scores))
        if scores[index] > best[2]:
            best = (float(defoci_a[index]), float(phase), float(scores[index]))
    step = float(defoci_a[1] - defoci_a[0]) if len(defoci_a) > 1 else 100.0
    defocus, phase, _ = best

    def negative_cc(value: float) -> float:
        return -float(normalised_cc(profile, optics.ctf_squared(freq, value, phase)))

    polished = minimize_scalar(negative_cc, bounds=(defocus - step, defocus + step), method="bounded",
                               options={"xatol": 1.0})
    if -polished.fun > best[2]:
        return float(polished.x), phase, float(-polished.fun)
    return best


@dataclass(frozen=True)
class SpectrumBand:
    """The flattened-spectrum pixels used for 2D fitting: one half-plane inside the resolution band."""

    freq: np.ndarray
    azimuth_rad: np.ndarray
    values: np.ndarray
    cos2: np.ndarray
    sin2: np.ndarray

    @classmethod
    def select(cls, flat: np.ndarray, freq: np.ndarray, azimuth_rad: np.ndarray, min_frequency: float,
               max_frequency: float, also: np.ndarray | None = None) -> "SpectrumBand":
        """Pixels of the band (and of the optional mask `also`) in one half-plane."""
        # Friedel mates carry the same information: keep azimuths in [-90°, 90°).
        half_plane = (azimuth_rad >= -np.pi / 2) & (azimuth_rad < np.pi / 2)
        keep = half_plane & (freq >= min_frequency) & (freq <= max_frequency)
        if also is not None:
            keep &= also
        azimuth = azimuth_rad[keep]
        return cls(freq[keep], azimuth, flat[keep], np.cos(2 * azimuth), np.sin(2 * azimuth))


@dataclass(frozen=True)
class RefinementLimits:
    """Bounds and restraint of the 2D refinement."""

    min_defocus_a: float
    max_defocus_a: float
    max_astigmatism_a: float
    astigmatism_restraint_a: float | None


def _score(band: SpectrumBand, optics: CtfOptics, vector: np.ndarray, phase_rad: float, limits: RefinementLimits
           ) -> float:
    """CC of the 2D model for (mean, cos_a, sin_a[, phase_deg]) minus the astigmatism restraint penalty."""
    mean_a, cos_a, sin_a = vector[:3]
    phase = np.deg2rad(vector[3]) if len(vector) > 3 else phase_rad
    astigmatism_a = 2.0 * float(np.hypot(cos_a, sin_a))
    if not limits.min_defocus_a <= mean_a <= limits.max_defocus_a or astigmatism_a > limits.max_astigmatism_a:
        return -1.0
    defocus = mean_a + cos_a * band.cos2 + sin_a * band.sin2
    cc = float(normalised_cc(band.values, optics.ctf_squared(band.freq, defocus, phase)))
    restraint = limits.astigmatism_restraint_a
    if restraint is not None and astigmatism_a > restraint:
        cc -= ((astigmatism_a - restraint) / restraint) ** 2
    return cc


def _grid_seeds(band: SpectrumBand, optics: CtfOptics, mean_defocus_a: float, phase_shift_rad: float,
                limits: RefinementLimits) -> list[np.ndarray]:
    """The best (mean, cos_a, sin_a) of a coarse astigmatism × angle grid around a 1D defocus."""
    scored: list[tuple[float, np.ndarray]] = []
    for offset in _MEAN_OFFSETS_A:
        mean = mean_defocus_a + offset
        candidates = [np.array([mean, 0.0, 0.0])]
        for astigmatism in (a for a in _ASTIGMATISM_GRID_A if a <= limits.max_astigmatism_a):
            for angle in np.deg2rad(_ANGLE_GRID_DEG):
                half = 0.5 * astigmatism
                candidates.append(np.array([mean, half * np.cos(2 * angle), half * np.sin(2 * angle)]))
        scored.extend((_score(band, optics, c, phase_shift_rad, limits), c) for c in candidates)
    scored.sort(key=lambda item: -item[0])
    return [vector for _, vector in scored[:_REFINEMENT_STARTS]]


def refine_2d(band: SpectrumBand, optics: CtfOptics, start: CtfParameters, fit_phase_shift: bool,
              limits: RefinementLimits, grid_search: bool) -> tuple[CtfParameters, float]:
    """Nelder–Mead on the 2D CC from `start`, or (with `grid_search`) from the best coarse-grid points
    around its mean defocus, which finds the astigmatism angle without a good first guess.

    Returns the parameters and their CC (restraint penalty included, as the optimiser saw it).
    """
    phase_rad = float(np.deg2rad(start.phase_shift_deg))
    starts = (_grid_seeds(band, optics, start.mean_defocus_a, phase_rad, limits) if grid_search
              else [np.array(start.components())])
    best_vector, best_score = starts[0], -np.inf
    for x0 in starts:
        if fit_phase_shift:
            x0 = np.append(x0, start.phase_shift_deg)
        steps = np.array([200.0, 100.0, 100.0, 10.0][: len(x0)])
        simplex = np.vstack([x0, x0 + np.diag(steps)])
        result = minimize(lambda v: -_score(band, optics, v, phase_rad, limits), x0, method="Nelder-Mead",
                          options={"initial_simplex": simplex, "xatol": 1.0, "fatol": 1e-6, "maxiter": 2000})
        if -result.fun > best_score:
            best_vector, best_score = result.x, float(-result.fun)
    phase_deg = float(best_vector[3]) if fit_phase_shift else start.phase_shift_deg
    mean, cos_a, sin_a = (float(v) for v in best_vector[:3])
    return CtfParameters.from_components(mean, cos_a, sin_a, phase_deg), best_score


def thon_ring_period_px(defocus_a: float, optics: CtfOptics, bin_freq: np.ndarray) -> np.ndarray:
    """Distance (in bins of `bin_freq`) between successive Thon-ring zeros around each bin's frequency."""
    chi = ctf_phase(bin_freq, defocus_a, optics.voltage_kv, optics.cs_mm, optics.amplitude_contrast)
    return np.pi / np.maximum(np.abs(np.gradient(chi)), 1e-12)


def _equivalent_frequency(freq: np.ndarray, defocus_a: np.ndarray, mean_defocus_a: float, optics: CtfOptics
                          ) -> np.ndarray:
    """Frequency at which a CTF of the mean defocus reaches the phase this pixel has (equiphase averaging)."""
    wavelength = electron_wavelength_a(optics.voltage_kv)
    quartic = 0.5 * np.pi * optics.cs_mm * 1e7 * wavelength**3
    quadratic = np.pi * wavelength * mean_defocus_a
    k2 = freq * freq
    target = np.pi * wavelength * defocus_a * k2 - quartic * k2 * k2
    discriminant = np.maximum(quadratic * quadratic - 4.0 * quartic * target, 0.0)
    u = 2.0 * target / (quadratic + np.sqrt(discriminant))
    return np.sqrt(np.maximum(u, 0.0))


@dataclass(frozen=True)
class FitProfile:
    """The 1D view of a fit, per frequency bin, as CTFFIND's `_avrot.txt` reports it and a person plots it.

    Bins are 1/(box·pixel) wide and run to the spectrum's corner. Spectrum values are the flattened
    (background-subtracted, RMS-normalised) spectrum; bins with no pixels hold 0.
    """

    freq: np.ndarray  # bin centre, 1/Å
    rotational_average: np.ndarray  # plain ring average (as if there were no astigmatism)
    equiphase_average: np.ndarray  # pixels binned by the frequency of equal CTF phase at the mean defocus
    ctf_squared: np.ndarray  # the fit along the mean defocus
    phase: np.ndarray  # its CTF phase χ (rad)
    measured: np.ndarray  # bins with pixels inside Nyquist and past the low-resolution limit
    local_cc: np.ndarray  # CC of equiphase average and fit within ±2 Thon-ring periods of each bin
    noise_cc_2sigma: np.ndarray  # 2/√n for the n bins of that window: the CC pure noise stays below
    fit_band: tuple[float, float]  # (low, high) frequency over which the rings were followed, 1/Å
    fit_resolution_a: float

    def renormalised(self, values: np.ndarray) -> np.ndarray:
        """`values` (one of the averages) given, within the ±2-period window of each bin, the mean and spread
        of the fit there, so weak high-resolution rings and strong low-resolution ones share the fit's axis
        (CTFFIND renormalises its rotational average the same way). 0 where there is no window."""
        out = np.zeros(len(values))
        for i, window in _phase_windows(self.phase, self.measured):
            data, model = values[window], self.ctf_squared[window]
            spread = float(data.std())
            if spread > 0:
                out[i] = (values[i] - data.mean()) / spread * model.std() + model.mean()
        return out



def _phase_windows(chi: np.ndarray, measured: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Each bin from the first measured one on, with its window (measured bins within ±2π of its CTF phase,
    i.e. ±2 Thon-ring periods) when that holds at least 5 bins."""
    first = int(np.argmax(measured))
    windows = ((i, measured & (np.abs(chi - chi[i]) <= 2 * np.pi)) for i in range(first, len(chi)))
    return [(i, window) for i, window in windows if window.sum() >= 5]


def fit_profile(flat: np.ndarray, freq: np.ndarray, azimuth_rad: np.ndarray, params: CtfParameters,
                optics: CtfOptics, box_px: int, pixel_size_a: float, min_frequency: float) -> FitProfile:
    """Rotational and equiphase averages, the fit, the local CC and the fit resolution.

    Pixels are binned by the frequency at which a stigmatic CTF of the mean defocus has their phase, so
    astigmatic rings add up. For each bin the CC of profile vs CTF² over ±2 ring periods is computed; the
    fit resolution is the first bin past the first CTF zero where it drops below the threshold, and never
    beyond the frequency where the rings of defocus U become too dense for the spectrum's sampling.
    """
    mean = params.mean_defocus_a
    step = 1.0 / (box_px * pixel_size_a)
    n_bins = int(np.ceil(box_px / 2 * np.sqrt(2.0))) + 1
    equivalent = _equivalent_frequency(freq, params.defocus_at(azimuth_rad), mean, optics)
    index = np.rint(equivalent / step).astype(np.int64)
    keep = (freq >= min_frequency) & (index < n_bins)
    sums = np.bincount(index[keep], weights=flat[keep], minlength=n_bins)
    counts = np.bincount(index[keep], minlength=n_bins)
    plain = np.rint(freq / step).astype(np.int64)
    plain_keep = freq >= min_frequency
    plain_sums = np.bincount(plain[plain_keep], weights=flat[plain_keep], minlength=n_bins)
    plain_counts = np.bincount(plain[plain_keep], minlength=n_bins)
    bin_freq = np.arange(n_bins) * step
    phase_shift = np.deg2rad(params.phase_shift_deg)
    chi = ctf_phase(bin_freq, mean, optics.voltage_kv, optics.cs_mm, optics.amplitude_contrast, phase_shift)
    model = np.sin(chi) ** 2

    # The last bin before the rings of defocus U alias, and never past Nyquist.
    ring_period_px = thon_ring_period_px(params.defocus_u_a, optics, bin_freq)
    aliased = np.nonzero((ring_period_px < _MIN_RING_PERIOD_PX) & (bin_freq > min_frequency))[0]
    last_bin = min(int(aliased[0]) - 1 if len(aliased) else n_bins - 1, box_px // 2 - 1)

    # Beyond Nyquist only the corners have pixels, and the flattened spectrum is 0 there.
    valid = (counts > 0) & (np.arange(n_bins) < box_px // 2)
    profile = np.where(valid, sums / np.maximum(counts, 1), 0.0)
    rotational = np.where(plain_counts > 0, plain_sums / np.maximum(plain_counts, 1), 0.0)
    local_cc = np.zeros(n_bins)
    noise = np.ones(n_bins)
    start = np.nonzero((bin_freq >= min_frequency) & valid)[0]
    if len(start) == 0:
        resolution = float(1.0 / (min_frequency or step))
        return FitProfile(bin_freq, rotational, profile, model, chi, valid, local_cc, noise,
                          (min_frequency, min_frequency), resolution)
    first = int(start[0])
    measured = valid.copy()
    measured[:first] = False
    for i, window in _phase_windows(chi, measured):
        local_cc[i] = normalised_cc(profile[window], model[window])
        noise[i] = min(1.0, 2.0 / np.sqrt(window.sum()))
    # Start judging after the first zero past the low-resolution limit, where the rings are established.
    zero_order = np.floor((chi - chi[first]) / np.pi)
    past_zero = np.nonzero(zero_order >= 1)[0]
    first_judged = int(past_zero[0]) if len(past_zero) else first
    resolution_bin = last_bin
    for i in range(first_judged, last_bin + 1):
        if noise[i] >= 1.0 or local_cc[i] < _FIT_CC_THRESHOLD:
            resolution_bin = i - 1
            break
    resolution_bin = max(resolution_bin, first)
    high = max(float(bin_freq[resolution_bin]), step)
    return FitProfile(bin_freq, rotational, profile, model, chi, measured, local_cc, noise,
                      (float(bin_freq[first]), high), float(1.0 / high))
