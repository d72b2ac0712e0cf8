"""One SPA movie from its settings and index: specimen → microscope → motion → detector, with its truth."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import scipy.fft
from scipy.ndimage import map_coordinates

from .density import FFT_WORKERS
from .detector import counts_dtype, detector_transfer, gain_reference, record_frame, sensitivity
from .motion import global_shifts_px, local_motion, max_displacement_px
from .optics import contrast_image, critical_exposure_e_a2, exposure_filter
from .settings import SpaSimulationSettings
from .specimen import build_specimen, micrograph_ice_thickness_a
from .structure import make_structure
from .truth import LocalMotionTruth, MovieTruth

CANVAS_PADDING_PX = 8
DEFOCUS_TARGET_STEP_A = 1000.0


@dataclass
class SimulatedMovie:
    """A simulated movie in memory: raw frames, the gain to multiply in, and what was planted."""

    frames: np.ndarray               # (n_frames, ny, nx) raw counts, uint8/uint16 (float32 without noise)
    gain: np.ndarray                 # (ny, nx) float32 gain reference as written (see settings.gain_rotation)
    clean_micrograph: np.ndarray     # noise-free gain-corrected sum of all frames aligned to frame 0 (e⁻/px)
    projected_potential: np.ndarray  # projected phase (rad) before the CTF, frame-0 field of view
    truth: MovieTruth
    settings: SpaSimulationSettings


def movie_stem(settings: SpaSimulationSettings, index: int) -> str:
    """EPU-like name of movie `index` (four shots per foil hole, acquisition date and time at the end)."""
    acquired = settings.session_start + timedelta(seconds=index * settings.acquisition_interval_s)
    return (f"FoilHole_{1_000_000 + index // 4}_Data_{2_000_000 + index % 4}_{3_000_000 + index}_"
            f"{acquired:%Y%m%d_%H%M%S}")


def simulate_movie(settings: SpaSimulationSettings, index: int) -> SimulatedMovie:
    """Simulate movie `index` of the session; deterministic in (settings, index)."""
    rng = np.random.default_rng([settings.seed, 1, index])
    shifts_px = global_shifts_px(rng, settings)
    local = local_motion(rng, settings, shifts_px)
    margin_px = _canvas_margin_px(settings, max_displacement_px(shifts_px, settings))
    defocus_mean_a = rng.uniform(settings.defocus_min_a, settings.defocus_max_a)
    astigmatism_a = rng.uniform(0.0, settings.astigmatism_max_a)
    defocus_u_a, defocus_v_a = defocus_mean_a + 0.5 * astigmatism_a, defocus_mean_a - 0.5 * astigmatism_a
    angle_deg = float(rng.uniform(0.0, 180.0)) if astigmatism_a > 0 else 0.0
    specimen = build_specimen(rng, settings, make_structure(settings), margin_px,
                              micrograph_ice_thickness_a(settings, index),
                              realism_rng=np.random.default_rng([settings.seed, 4, index]))
    contrast = contrast_image(specimen.phase_rad, specimen.transmission, settings.pixel_size_a, defocus_u_a,
                              defocus_v_a, angle_deg, settings.voltage_kv, settings.cs_mm,
                              settings.amplitude_contrast, settings.envelope_bfactor_a2)
    steady = None if specimen.steady_phase_rad is None else contrast_image(
        specimen.steady_phase_rad, specimen.transmission, settings.pixel_size_a, defocus_u_a, defocus_v_a, angle_deg,
        settings.voltage_kv, settings.cs_mm, settings.amplitude_contrast, settings.envelope_bfactor_a2)
    frames, clean = _record_movie(rng, settings, specimen.transmission, contrast, shifts_px, local, margin_px, steady)
    frames = counts_dtype(frames)
    crop = slice(margin_px, margin_px + settings.image_size_px)
    stem = movie_stem(settings, index)
    truth = MovieTruth(
        index=index, movie_name=f"{stem}_fractions.{settings.movie_format}", metadata_name=f"{stem}.xml",
        image_size_px=settings.image_size_px, n_frames=settings.n_frames, pixel_size_a=settings.pixel_size_a,
        dose_per_frame_e_a2=settings.dose_per_frame_e_a2, voltage_kv=settings.voltage_kv, cs_mm=settings.cs_mm,
        amplitude_contrast=settings.amplitude_contrast, frame_dtype=str(frames.dtype),
        acquisition_time=(settings.session_start + timedelta(seconds=index * settings.acquisition_interval_s))
        .isoformat(),
        shifts_px=shifts_px.tolist(), local_motion=local,
        defocus_target_a=round(defocus_mean_a / DEFOCUS_TARGET_STEP_A) * DEFOCUS_TARGET_STEP_A,
        defocus_u_a=round(defocus_u_a, 3), defocus_v_a=round(defocus_v_a, 3),
        astigmatism_angle_deg=round(angle_deg, 4),
        ice_thickness_centre_a=specimen.ice_thickness_centre_a,
        ice_gradient_direction_deg=round(specimen.ice_gradient_direction_deg, 4),
        carbon_edge=specimen.carbon_edge, particles=specimen.particles, contaminants=specimen.contaminants)
    return SimulatedMovie(frames=frames, gain=gain_reference(settings), clean_micrograph=clean,
                          projected_potential=np.ascontiguousarray(specimen.phase_rad[crop, crop]),
                          truth=truth, settings=settings)


def _canvas_margin_px(settings: SpaSimulationSettings, displacement_px: float) -> int:
    """Margin around the frame that covers all motion, grown until the canvas is a fast FFT size."""
    margin = math.ceil(displacement_px) + CANVAS_PADDING_PX
    def canvas(m: int) -> int:
        return settings.image_size_px + 2 * m
    while scipy.fft.next_fast_len(canvas(margin), real=True) != canvas(margin):
        margin += 1
    return margin


def _record_movie(rng: np.random.Generator, settings: SpaSimulationSettings, transmission: np.ndarray,
                  contrast: np.ndarray, shifts_px: np.ndarray, local: LocalMotionTruth,
                  margin_px: int, steady_contrast: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every frame (moved specimen, dose damage, counts) and the clean dose-integrated image at frame 0;
    `steady_contrast` (amorphous ice and carbon texture) is not faded by dose."""
    shape = transmission.shape
    size = settings.image_size_px
    dose_px = settings.dose_per_frame_e_a2 * settings.pixel_size_a**2
    transfer = detector_transfer(settings, shape)
    mean_spectrum = scipy.fft.rfft2(transmission, workers=FFT_WORKERS) * transfer
    contrast_spectrum = scipy.fft.rfft2(contrast, workers=FFT_WORKERS) * transfer
    if steady_contrast is not None:
        mean_spectrum = mean_spectrum + scipy.fft.rfft2(steady_contrast, workers=FFT_WORKERS) * transfer
    critical = critical_exposure_e_a2(shape, settings.pixel_size_a, settings.voltage_kv) \
        if settings.radiation_damage else None
    warp = _LocalWarp(local, size, margin_px, shape) if settings.local_motion_a > 0 else None
    sens = sensitivity(settings)
    crop = slice(margin_px, margin_px + size)
    dtype = np.float32 if not settings.counting_noise else np.uint16
    frames = np.empty((settings.n_frames, size, size), dtype=dtype)
    kept_sum = np.zeros(mean_spectrum.shape, dtype=np.float32)
    for i in range(settings.n_frames):
        kept = 1.0 if critical is None else exposure_filter(critical, settings.dose_per_frame_e_a2 * (i + 0.5))
        kept_sum += kept
        spectrum = mean_spectrum + kept * contrast_spectrum
        if warp is None:
            moved = scipy.fft.irfft2(spectrum * _shift_ramp(shape, shifts_px[i]), s=shape, workers=FFT_WORKERS)
            image = moved[crop, crop]
        else:
            image = warp.sample(scipy.fft.irfft2(spectrum * warp.prefilter, s=shape, workers=FFT_WORKERS),
                                i, shifts_px[i])
        frames[i] = record_frame(rng, dose_px * image, sens, settings.counting_noise)
    clean = scipy.fft.irfft2(settings.n_frames * mean_spectrum + kept_sum * contrast_spectrum, s=shape,
                             workers=FFT_WORKERS)
    return frames, (dose_px * clean[crop, crop]).astype(np.float32)


def _shift_ramp(shape: tuple[int, int], shift_px: np.ndarray) -> np.ndarray:
    """Fourier phase ramp (rfft layout) that moves an image by shift_px = [dx, dy]."""
    ramp_y = np.exp(-2j * np.pi * np.fft.fftfreq(shape[0]) * shift_px[1]).astype(np.complex64)
    ramp_x = np.exp(-2j * np.pi * np.fft.rfftfreq(shape[1]) * shift_px[0]).astype(np.complex64)
    return ramp_y[:, None] * ramp_x[None, :]


class _LocalWarp:
    """Samples a canvas at x - shift - d(x) with cubic B-splines, whose coefficients come from a Fourier prefilter."""

    def __init__(self, local: LocalMotionTruth, size: int, margin_px: int, shape: tuple[int, int]) -> None:
        self.local = local
        ky = np.fft.fftfreq(shape[0]).astype(np.float32)
        kx = np.fft.rfftfreq(shape[1]).astype(np.float32)
        # Cubic B-spline sampled at the integers is [1/6, 2/3, 1/6]; dividing by its transfer gives coefficients.
        self.prefilter = 9.0 / ((2.0 + np.cos(2 * np.pi * ky))[:, None] * (2.0 + np.cos(2 * np.pi * kx))[None, :])
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.base_y, self.base_x = yy + margin_px, xx + margin_px
        # The warp only changes its scale from frame to frame: evaluate its shape once.
        self.full_dx, self.full_dy = local.displacement_px(xx, yy, len(local.amplitude_profile) - 1, size)
        self.full_scale = local.amplitude_profile[-1]

    def sample(self, coefficients: np.ndarray, frame: int, shift_px: np.ndarray) -> np.ndarray:
        scale = self.local.amplitude_profile[frame] / self.full_scale if self.full_scale else 0.0
        coords = np.stack([self.base_y - (shift_px[1] + scale * self.full_dy),
                           self.base_x - (shift_px[0] + scale * self.full_dx)])
        return map_coordinates(coefficients, coords, order=3, prefilter=False, mode="nearest")
