"""Tomograms with a known clean counterpart, for judging denoisers: the simulator's phantom projected over the
tilt range, white noise added to the projections at a chosen SNR, and both stacks reconstructed the same way.

The clean reconstruction has the same missing wedge and filtering as the noisy one, so it is what a perfect
denoiser could reach; the phantom itself is returned too (the specimen, wedge-free).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..engines.tomo_projection import project_volume
from ..engines.tomo_reconstruct import TomogramSettings, reconstruct_stack
from .tilt_series import TiltSeriesSimulation
from .tomo_settings import TomoSimulationSettings


@dataclass(frozen=True)
class DenoisingCase:
    noisy: np.ndarray  # (nz, ny, nx) float32, reconstructed from noisy projections
    clean: np.ndarray  # the same reconstruction of noise-free projections
    phantom: np.ndarray  # the specimen on the same grid (sign as the reconstructions)
    voxel_size_a: float
    # with halves=True: the two half tomograms (each projection's noise split in two, as in even/odd frame
    # sums: each half has twice the noise variance and `noisy` is their mean)
    half1: np.ndarray | None = None
    half2: np.ndarray | None = None


def _centre_crop(volume: np.ndarray, ny: int | None, nx: int | None) -> np.ndarray:
    """The central `ny × nx` of each slice (all of an axis whose size is None or larger than the volume)."""
    slices = [slice(None)]
    for size, n in zip((ny, nx), volume.shape[1:]):
        keep = n if size is None else min(size, n)
        slices.append(slice((n - keep) // 2, (n - keep) // 2 + keep))
    return volume[tuple(slices)]


def noisy_and_clean_tomogram(settings: TomoSimulationSettings, snr: float, seed: int = 1,
                             crop_yx_px: tuple[int | None, int | None] = (None, None),
                             halves: bool = False) -> DenoisingCase:
    """Series 0 of `settings` as a noisy and a clean tomogram at the phantom's voxel size (pixel size ×
    phantom binning), the projections' noise variance = their signal variance / `snr`; with `halves`, also
    the two half tomograms whose mean is the noisy one."""
    phantom = TiltSeriesSimulation(settings, 0).phantom.volume
    voxel_a = settings.voxel_size_a
    angles = np.array(settings.tilt_angles_deg())
    clean = np.stack(list(project_volume(phantom, angles))).astype(np.float32)
    rng = np.random.default_rng(seed)
    sd = math.sqrt(float(clean.var()) / snr)
    if halves:
        parts = [clean + rng.normal(0.0, sd * math.sqrt(2.0), clean.shape).astype(np.float32) for _ in range(2)]
        stacks = [(parts[0] + parts[1]) / 2, clean, *parts]
    else:
        stacks = [clean + rng.normal(0.0, sd, clean.shape).astype(np.float32), clean]
    recon = TomogramSettings(pixel_size_a=voxel_a, thickness_nm=settings.thickness_nm)
    volumes = [reconstruct_stack(stack, angles, recon) for stack in stacks]
    nz = min(volumes[0].shape[0], phantom.shape[0])
    cropped = [_centre_crop(volume[:nz], *crop_yx_px) for volume in (*volumes, phantom)]
    return DenoisingCase(noisy=cropped[0], clean=cropped[1], phantom=cropped[-1], voxel_size_a=voxel_a,
                         half1=cropped[2] if halves else None, half2=cropped[3] if halves else None)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two volumes voxel by voxel."""
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])
