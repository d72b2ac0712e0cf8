"""Tomogram denoising (Topaz's pretrained 3D models, through the provider's memory-bounded runner on the CPU) and
membrane segmentation (membrain-seg with a random-weight checkpoint): quality where it can be measured, time,
memory.

Reproduce:  nice .venv/bin/python benchmarks/bench_tomo_denoise.py [--threads 2] [--skip-timing] [--skip-membrain]

1. Quality: the simulator's phantom (vesicles + macromolecules, 60 nm slab) projected over ±60° in 3° steps at
   10 Å, white noise added to the projections at SNR 0.1 and 0.3, both stacks reconstructed (SIRT-like, 20 Å
   voxels, 128 × 192 px kept): the correlation of the noisy and the denoised tomogram with the clean
   reconstruction (same missing wedge: what a perfect denoiser reaches) and with the phantom, for unet-3d-10a
   and unet-3d-20a.
2. Time and peak memory: the runner on a 64 × 128 × 128 tomogram in 64-voxel cubes with 32 of padding (each
   cube 64 × 128 × 128 at most), one run in its own process (/usr/bin/time's maximum resident size), then
   the rate in padded voxels per second extrapolated to a 1024 × 1024 × 300 tomogram (a 4k series binned by 4)
   at the same cube size.
3. membrain-seg (its own environment, scripts/membrain_env.sh) on the denoised SNR-0.3 tomogram with a small
   random-weight checkpoint (devtools/membrain_checkpoint.py): wall time and peak memory of the real code path.
   The segmentation quality cannot be measured without the released checkpoint, and the released network is
   wider (32 … 1024 channels instead of 4 … 128), so its time is NOT the real network's.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from airflow_provider_cryoem.devtools.membrain_checkpoint import write_random_checkpoint
from airflow_provider_cryoem.io import read_mrc, write_mrc
from airflow_provider_cryoem.simulate.tomo_settings import TomoSimulationSettings
from airflow_provider_cryoem.simulate.tomo_volumes import correlation, noisy_and_clean_tomogram
from airflow_provider_cryoem.tools.topaz_denoise3d import cube_windows

REPO = Path(__file__).resolve().parents[1]
REALISTIC_ZYX = (300, 1024, 1024)
TIMING_ZYX = (64, 128, 128)
TIMING_PATCH, TIMING_PADDING = 64, 32


def _settings(seed: int) -> TomoSimulationSettings:
    return TomoSimulationSettings(image_size_px=192, pixel_size_a=10.0, phantom_binning=2, thickness_nm=60,
                                  vesicle_radius_min_a=120, vesicle_radius_max_a=220, n_vesicles=6, n_particles=40,
                                  tilt_min_deg=-60, tilt_max_deg=60, tilt_step_deg=3, seed=seed)


def _runner(volume: Path, out: Path, model: str, patch: int, padding: int, threads: int) -> tuple[Path, float, float]:
    """Run the denoising runner in its own process: (output, wall seconds, peak resident memory in GB)."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "airflow_provider_cryoem.tools.topaz_denoise3d",
               str(volume), "-o", str(out), "-m", model, "-s", str(patch), "-p", str(padding), "-j", str(threads)]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    return out / f"{volume.stem}.denoised.mrc", wall, peak_kb / 1024**2


def padded_voxels(shape: tuple[int, ...], patch: int, padding: int) -> int:
    """Voxels the network sees for a tomogram: the sum of its padded cubes (clipped at the edges)."""
    return sum(math.prod(w.stop - w.start for w in window) for window, _ in cube_windows(shape, patch, padding))


def quality(folder: Path, threads: int, seed: int) -> Path:
    print("| SNR (projections) | model | corr. noisy vs clean | corr. denoised vs clean | corr. noisy vs phantom "
          "| corr. denoised vs phantom | s |")
    print("|---|---|---|---|---|---|---|")
    kept = folder / "denoised_snr0.3.mrc"
    for snr in (0.1, 0.3):
        case = noisy_and_clean_tomogram(_settings(seed), snr=snr, crop_yx_px=(128, 192))
        volume = write_mrc(folder / f"rec_snr{snr:g}.mrc", case.noisy, case.voxel_size_a)
        for model in ("unet-3d-10a", "unet-3d-20a"):
            out, wall, _ = _runner(volume, folder / model, model, 96, 48, threads)
            denoised = read_mrc(out)
            print(f"| {snr:g} | {model} | {correlation(case.noisy, case.clean):.3f} | "
                  f"{correlation(denoised, case.clean):.3f} | {correlation(case.noisy, case.phantom):.3f} | "
                  f"{correlation(denoised, case.phantom):.3f} | {wall:.0f} |", flush=True)
            if snr == 0.3 and model == "unet-3d-20a":
                shutil.copy(out, kept)
    print(f"(volumes {case.noisy.shape[::-1]} x×y×z voxels of {case.voxel_size_a:g} Å)")
    return kept


def timing(folder: Path, threads: int) -> None:
    rng = np.random.default_rng(0)
    volume = write_mrc(folder / "timing.mrc", rng.normal(size=TIMING_ZYX).astype(np.float32), 10.0)
    out, wall, peak_gb = _runner(volume, folder / "timing", "unet-3d-10a", TIMING_PATCH, TIMING_PADDING, threads)
    seen = padded_voxels(TIMING_ZYX, TIMING_PATCH, TIMING_PADDING)
    rate = seen / wall
    realistic = padded_voxels(REALISTIC_ZYX, TIMING_PATCH, TIMING_PADDING)
    print(f"\ntiming: {TIMING_ZYX[::-1]} x×y×z in {TIMING_PATCH}-voxel cubes + {TIMING_PADDING} padding, {threads} "
          f"torch threads: {wall:.0f} s wall ({wall / math.prod(TIMING_ZYX) * 1e6:.1f} s per million voxels), "
          f"peak memory {peak_gb:.2f} GB, {rate / 1e3:.1f} k padded voxels/s")
    print(f"extrapolated to {REALISTIC_ZYX[::-1]} x×y×z at the same cubes ({realistic / 1e9:.2f} G padded voxels): "
          f"{realistic / rate / 3600:.1f} h on this machine")


def membrain(tomogram: Path, folder: Path) -> None:
    subprocess.run(["bash", str(REPO / "scripts" / "membrain_env.sh")], check=True, capture_output=True)
    program = str(REPO / ".venv-membrain" / "bin" / "membrain")
    checkpoint = write_random_checkpoint(folder / "random_membrain.ckpt", program)
    shape = read_mrc(tomogram).shape
    for window in (64, 160):
        command = ["/usr/bin/time", "-v", program, "segment", "--tomogram-path", str(tomogram), "--ckpt-path",
                   str(checkpoint), "--out-folder", str(folder / f"seg{window}"), "--no-rescale-patches",
                   "--sliding-window-size", str(window), "--no-test-time-augmentation",
                   "--store-connected-components"]
        started = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
        print(f"\nmembrain segment (random-weight 4…128-channel checkpoint, window {window}, no TTA) on "
              f"{shape[::-1]} x×y×z: {wall:.0f} s wall (program start included), peak memory "
              f"{peak_kb / 1024**2:.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-membrain", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_tomo_denoise_") as tmp:
        folder = Path(tmp)
        print(f"cores: {os.cpu_count()} (torch threads {args.threads})\n")
        kept = quality(folder, args.threads, args.seed)
        if not args.skip_timing:
            timing(folder, args.threads)
        if not args.skip_membrain:
            membrain(kept, folder)


if __name__ == "__main__":
    main()
