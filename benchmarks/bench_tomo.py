"""Tomography benchmark: accuracy and speed of the built-in tilt-series alignment and reconstruction against
the simulator's planted truth.

Reproduce:  .venv/bin/python benchmarks/bench_tomo.py [--skip-full] [--seed 3]
Cases (41 tilts, ±60° in 3° steps, true tilt axis 85°, alignment started at 80°):
- "phantom": the simulator's specimen (vesicles + macromolecules in a slab) projected, moved by its planted
  tracking shifts, plus white noise at SNR 0.7 per tilt; 256² px at 20 Å and 1024² px at 10 Å (the size of
  a 4k series binned by 4).
- "full": the simulator's whole image formation (CTF with defocus gradient, ice, dose, Poisson counts),
  512² px at 8 Å, aligned binned by 2; frames are summed without motion correction (drift switched off),
  and the tomogram is phase-flipped with the planted defocus.
Scores: per-tilt shift RMSE in input px after removing the unobservable rigid translation of the specimen
(engines/tomo_scoring.py), tilt-axis error, and the FSC = 0.5 frequency of the tomogram against the
phantom at the phantom's voxel size (missing wedge included); wall times on one core.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from airflow_provider_cryoem.engines.tomo_align import TiltAlignmentSettings, align_tilt_stack
from airflow_provider_cryoem.engines.tomo_projection import project_volume, transform_image
from airflow_provider_cryoem.engines.tomo_reconstruct import TomogramSettings, reconstruct_stack
from airflow_provider_cryoem.engines.tomo_scoring import (
    fourier_shell_correlation,
    register_translation,
    resolution_cycles,
    shift_rmse_px,
)
from airflow_provider_cryoem.simulate.detector import gain_reference
from airflow_provider_cryoem.simulate.tilt_series import TiltSeriesSimulation
from airflow_provider_cryoem.simulate.tomo_image import canvas_from_projection
from airflow_provider_cryoem.simulate.tomo_settings import TomoSimulationSettings

TRUE_AXIS_DEG = 85.0
AXIS_START_OFFSET_DEG = -5.0
SNR = 0.7


@dataclass
class Case:
    name: str
    stack: np.ndarray           # recorded tilts, ascending angle
    angles_deg: np.ndarray
    shifts_px: np.ndarray       # planted (dx, dy), input px
    phantom: np.ndarray         # (nz, ny, nx) at `voxel_binning` × the stack's pixel size
    pixel_size_a: float
    voxel_binning: int
    thickness_nm: float
    defocus_a: list[float] | None = None
    alignment_binning: int = 1


def _settings(size_px: int, pixel_a: float, phantom_binning: int, seed: int, **extra: object) -> TomoSimulationSettings:
    return TomoSimulationSettings(image_size_px=size_px, pixel_size_a=pixel_a, phantom_binning=phantom_binning,
                                  n_vesicles=6, n_particles=40, tracking_error_px=3.0 * phantom_binning,
                                  tilt_axis_deg=TRUE_AXIS_DEG, seed=seed, **extra)


def phantom_case(size_px: int, pixel_a: float, phantom_binning: int, thickness_nm: float, seed: int) -> Case:
    """Projected phantom + planted shifts + white noise (see module docstring)."""
    settings = _settings(size_px, pixel_a, phantom_binning, seed, thickness_nm=thickness_nm)
    simulation = TiltSeriesSimulation(settings, 0)
    angles = np.array(settings.tilt_angles_deg())
    shifts = np.array([simulation.truth.tilt(float(angle)).shift_px for angle in angles])
    margin, canvas = simulation.margin_px, size_px + 2 * simulation.margin_px
    rng = np.random.default_rng(seed)
    stack = np.empty((angles.size, size_px, size_px), np.float32)
    for index, (projection, shift) in enumerate(zip(project_volume(simulation.phantom.volume, angles), shifts)):
        moved = transform_image(canvas_from_projection(projection, settings, canvas), 0.0, shift, fill=0.0)
        stack[index] = 1.0 - moved[margin:margin + size_px, margin:margin + size_px]
    noise_sd = math.sqrt(float(stack.var(axis=(1, 2)).mean()) / SNR)
    stack += rng.normal(0.0, noise_sd, stack.shape).astype(np.float32)
    return Case(f"phantom {size_px}² @ {pixel_a:g} Å", stack, angles, shifts, simulation.phantom.volume, pixel_a,
                phantom_binning, thickness_nm)


def full_case(size_px: int, pixel_a: float, seed: int) -> Case:
    """The simulator's full image formation, frames summed and gain-corrected (see module docstring)."""
    settings = _settings(size_px, pixel_a, 2, seed, n_frames=2, drift_a_per_frame=0.0, local_motion_a=0.0)
    simulation = TiltSeriesSimulation(settings, 0)
    gain = gain_reference(settings.as_spa_settings())
    tilts = sorted(simulation.tilts(), key=lambda tilt: tilt.truth.tilt_angle_deg)
    stack = np.stack([tilt.frames.sum(axis=0) * gain for tilt in tilts]).astype(np.float32)
    return Case(f"full {size_px}² @ {pixel_a:g} Å", stack, np.array([t.truth.tilt_angle_deg for t in tilts]),
                np.array([t.truth.shift_px for t in tilts]), simulation.phantom.volume, pixel_a, 2,
                settings.thickness_nm, defocus_a=[t.truth.defocus_um * 1e4 for t in tilts], alignment_binning=2)


def run(case: Case) -> dict[str, float]:
    binning = case.alignment_binning
    stack = case.stack if binning == 1 else np.stack([transform_image(i, binning=binning) for i in case.stack])
    pixel_a = case.pixel_size_a * binning
    start = time.perf_counter()
    result, aligned = align_tilt_stack(stack, case.angles_deg, TiltAlignmentSettings(
        pixel_size_a=pixel_a, tilt_axis_deg=TRUE_AXIS_DEG + AXIS_START_OFFSET_DEG, thickness_nm=case.thickness_nm))
    align_s = time.perf_counter() - start
    shifts = np.array([tilt.shift_px for tilt in result.tilts]) * binning

    start = time.perf_counter()
    full = reconstruct_stack(aligned, result.aligned_tilt_angles_deg, TomogramSettings(
        pixel_size_a=pixel_a, thickness_nm=case.thickness_nm, defocus_a=case.defocus_a))
    reconstruct_s = time.perf_counter() - start
    tomo_binning = case.voxel_binning // binning
    tomogram = full if tomo_binning == 1 else reconstruct_stack(
        aligned, result.aligned_tilt_angles_deg, TomogramSettings(pixel_size_a=pixel_a, thickness_nm=case.thickness_nm,
                                                                  binning=tomo_binning, defocus_a=case.defocus_a))
    shape = np.minimum(tomogram.shape, case.phantom.shape)
    tomogram = _centre_crop(tomogram, shape)
    truth = -_centre_crop(case.phantom, shape)
    frequency, fsc = fourier_shell_correlation(register_translation(tomogram, truth), truth)
    resolution = resolution_cycles(frequency, fsc)
    voxel_a = case.pixel_size_a * case.voxel_binning
    return {"rmse_px": shift_rmse_px(shifts, case.shifts_px, case.angles_deg, TRUE_AXIS_DEG),
            "axis_error_deg": result.tilt_axis_deg - TRUE_AXIS_DEG, "fsc_cycles": resolution,
            "fsc_a": voxel_a / resolution, "align_s": align_s, "reconstruct_s": reconstruct_s,
            "tomogram": "×".join(str(n) for n in full.shape[::-1])}


def _centre_crop(volume: np.ndarray, shape: np.ndarray) -> np.ndarray:
    starts = (np.array(volume.shape) - shape) // 2
    return volume[tuple(slice(s, s + n) for s, n in zip(starts, shape))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-full", action="store_true", help="Leave out the full image-formation case (~2 min).")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    builders = [lambda: phantom_case(256, 20.0, 1, 100.0, args.seed),
                lambda: phantom_case(1024, 10.0, 2, 150.0, args.seed)]
    if not args.skip_full:
        builders.append(lambda: full_case(512, 8.0, args.seed))
    print("| case | shift RMSE (input px) | tilt-axis error (°) | FSC 0.5 (cycles/voxel, Å) | align s | "
          "reconstruct s (tomogram x×y×z) |")
    print("|---|---|---|---|---|---|")
    for build in builders:
        case = build()
        row = run(case)
        print(f"| {case.name} | {row['rmse_px']:.2f} | {row['axis_error_deg']:+.2f} | {row['fsc_cycles']:.3f} "
              f"({row['fsc_a']:.0f} Å) | {row['align_s']:.1f} | {row['reconstruct_s']:.1f} ({row['tomogram']}) |",
              flush=True)


if __name__ == "__main__":
    main()
