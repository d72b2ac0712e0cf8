"""One tilt's movie from the projected phantom: canvas → ice → CTF with a defocus gradient → dose → frames.

Per tilt θ (all in the SPA simulator's terms, whose optics, motion and detector code this reuses):
- the phantom's line-integral projection (`engines.tomo_projection.project_volume`, axis frame) is resampled
  once (cubic spline) onto the full-resolution canvas, rotated CCW by the tilt-axis angle;
- amorphous ice adds white phase noise growing as √(path length), path = thickness / cos θ;
- the CTF is applied per pixel: the mid-plane of the slab seen at distance x' from the axis sits at height
  z' = -x' tan θ, so its defocus is the tilt's defocus + x' tan θ; the image is computed at defocus nodes
  `defocus_node_step_a` apart and each pixel interpolates linearly between the two nodes around its own
  defocus (the depth of objects within the slab is not resolved: the mid-plane defocus stands for all);
- electrons lost to inelastic scattering (zero-loss energy filter) leave exp(-path / λ) of the beam, and
  of the contrast; gold beads also stop electrons;
- the dose of earlier tilts has already faded the high frequencies (Grant & Grigorieff exposure filter), and
  the detector's square pixels blur the contrast (sinc MTF, `pixel_mtf`);
- frames: drift within the movie plus the tilt's tracking shift, Poisson counts at the per-frame dose,
  the detector's gain (`movie._record_movie`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.ndimage import affine_transform

from .density import FFT_WORKERS
from .movie import _record_movie
from .optics import contrast_image, critical_exposure_e_a2, exposure_filter
from .specimen import ICE_INELASTIC_MFP_A
from .tomo_phantom import GOLD_ATTENUATION_LENGTH_A
from .tomo_settings import TomoSimulationSettings
from .truth import LocalMotionTruth

# ICE_INELASTIC_MFP_A (300 nm at 300 kV, Rice et al. 2018) is the SPA simulator's; measured values run to
# 395 nm (NYSBC Krios, Leginon's ice-thickness notes), so the shorter one errs on the hard side.
ICE_TEXTURE_REFERENCE_A = 1000.0  # ice_texture_rad is given for 100 nm of ice at 1 Å/px


@dataclass
class TiltOptics:
    """What the tilt's image formation needs besides the projection."""

    tilt_angle_deg: float
    defocus_a: float               # mean underfocus at the tilt axis
    astigmatism_a: float
    astigmatism_angle_deg: float
    pre_exposure_e_a2: float


@dataclass
class TiltMotion:
    """The tilt's motion: drift per frame, local warp and the tracking shift, all in px."""

    frame_shifts_px: np.ndarray    # (n_frames, 2), frame 0 = [0, 0]
    local: LocalMotionTruth
    tracking_px: np.ndarray        # (2,)


@dataclass
class RecordedTilt:
    """A recorded tilt: raw frames, the noise-free image and the phase it was made from."""

    frames: np.ndarray               # (n_frames, ny, nx) raw counts (float32 expected counts without noise)
    clean: np.ndarray                # noise-free gain-corrected frame sum, tracking shift and drift removed
    projected_potential: np.ndarray  # projected phase of the phantom (rad), same frame as `clean`
    path_length_a: float
    transmission: float


def path_length_a(settings: TomoSimulationSettings, tilt_angle_deg: float) -> float:
    """Electron path through the slab at this tilt (Å)."""
    return 10.0 * settings.thickness_nm / math.cos(math.radians(tilt_angle_deg))


def canvas_from_projection(projection: np.ndarray, settings: TomoSimulationSettings, canvas_px: int) -> np.ndarray:
    """The axis-frame projection (phantom voxels) on the full-resolution canvas, rotated CCW by the tilt axis.

    One cubic-spline resampling; the rotation is `tomo_projection.transform_image`'s, with the change of
    sampling folded in, so canvas pixel p reads the projection at R(-α)·(p - c)·(pixel / voxel) + centre.
    """
    alpha = math.radians(settings.tilt_axis_deg)
    scale = 1.0 / settings.phantom_binning
    matrix = scale * np.array([[math.cos(alpha), -math.sin(alpha)], [math.sin(alpha), math.cos(alpha)]])
    canvas_centre = np.full(2, (canvas_px - 1) / 2.0)
    projection_centre = (np.asarray(projection.shape, dtype=np.float64) - 1) / 2.0
    offset = projection_centre - matrix @ canvas_centre
    return affine_transform(projection.astype(np.float32), matrix, offset=offset, output_shape=(canvas_px,) * 2,
                            order=3, mode="constant", cval=0.0).astype(np.float32)


def defocus_map_a(settings: TomoSimulationSettings, optics: TiltOptics, canvas_px: int) -> np.ndarray:
    """Mean underfocus (Å) of the slab's mid-plane under each canvas pixel: tilt defocus + x' tan θ."""
    alpha = math.radians(settings.tilt_axis_deg)
    coords = (np.arange(canvas_px, dtype=np.float32) - (canvas_px - 1) / 2.0) * settings.pixel_size_a
    x_axis_a = coords[None, :] * math.cos(alpha) + coords[:, None] * math.sin(alpha)
    return (optics.defocus_a + x_axis_a * math.tan(math.radians(optics.tilt_angle_deg))).astype(np.float32)


def tilted_contrast(phase_rad: np.ndarray, defocus_a: np.ndarray, settings: TomoSimulationSettings,
                    optics: TiltOptics) -> np.ndarray:
    """2 · CTF ⊗ phase with a per-pixel defocus: linear interpolation between CTF images at defocus nodes."""
    low, high = float(defocus_a.min()), float(defocus_a.max())
    n_nodes = max(2, math.ceil((high - low) / settings.defocus_node_step_a) + 1)
    nodes = np.linspace(low, high, n_nodes) if high > low else np.array([low])
    position = (defocus_a - low) / (nodes[1] - nodes[0]) if nodes.size > 1 else np.zeros_like(defocus_a)
    contrast = np.zeros_like(phase_rad)
    ones = np.ones_like(phase_rad)
    half_astigmatism = 0.5 * optics.astigmatism_a
    for index, node in enumerate(nodes):
        weight = np.clip(1.0 - np.abs(position - index), 0.0, None)
        if not weight.any():
            continue
        contrast += weight * contrast_image(phase_rad, ones, settings.pixel_size_a, node + half_astigmatism,
                                            node - half_astigmatism, optics.astigmatism_angle_deg,
                                            settings.voltage_kv, settings.cs_mm, settings.amplitude_contrast,
                                            settings.envelope_bfactor_a2)
    return contrast


def pixel_mtf(shape: tuple[int, int]) -> np.ndarray:
    """MTF of an ideal counting detector's square pixels, sinc(fx)·sinc(fy) (cycles/px, rfft layout): 0.64
    at Nyquist along an axis, so fine detail reaches the counts weakened as it does on a real camera."""
    fy = np.fft.fftfreq(shape[0]).astype(np.float32)
    fx = np.fft.rfftfreq(shape[1]).astype(np.float32)
    return (np.sinc(fy)[:, None] * np.sinc(fx)[None, :]).astype(np.float32)


def record_tilt(rng: np.random.Generator, settings: TomoSimulationSettings, projection: np.ndarray,
                gold_projection: np.ndarray | None, optics: TiltOptics, motion: TiltMotion,
                margin_px: int) -> RecordedTilt:
    """Form the tilt's image from its axis-frame projection(s) and record its movie (see module docstring)."""
    canvas_px = settings.image_size_px + 2 * margin_px
    phase = canvas_from_projection(projection, settings, canvas_px)
    potential = phase[margin_px:margin_px + settings.image_size_px, margin_px:margin_px + settings.image_size_px]
    path_a = path_length_a(settings, optics.tilt_angle_deg)
    texture_rms = (settings.ice_texture_rad * math.sqrt(path_a / ICE_TEXTURE_REFERENCE_A) / settings.pixel_size_a)
    ice_rng = np.random.default_rng(rng.integers(2**63))
    ice = texture_rms * ice_rng.standard_normal(phase.shape, dtype=np.float32)
    contrast = tilted_contrast(phase + ice, defocus_map_a(settings, optics, canvas_px), settings, optics)
    transfer = pixel_mtf(contrast.shape)
    if settings.radiation_damage:
        transfer = transfer * exposure_filter(
            critical_exposure_e_a2(contrast.shape, settings.pixel_size_a, settings.voltage_kv), optics.pre_exposure_e_a2)
    contrast = scipy.fft.irfft2(scipy.fft.rfft2(contrast, workers=FFT_WORKERS) * transfer, s=contrast.shape,
                                workers=FFT_WORKERS).astype(np.float32)
    beam = math.exp(-path_a / ICE_INELASTIC_MFP_A)
    transmission = np.full(phase.shape, beam, dtype=np.float32)
    if gold_projection is not None:
        gold_path_a = canvas_from_projection(gold_projection, settings, canvas_px) * settings.voxel_size_a
        transmission *= np.exp(-np.maximum(gold_path_a, 0.0) / GOLD_ATTENUATION_LENGTH_A)
    shifts = motion.frame_shifts_px + motion.tracking_px[None, :]
    frames, clean = _record_movie(rng, settings.as_spa_settings(), transmission, transmission * contrast, shifts,
                                  motion.local, margin_px)
    return RecordedTilt(frames=frames, clean=clean, projected_potential=np.ascontiguousarray(potential),
                        path_length_a=path_a, transmission=beam)
