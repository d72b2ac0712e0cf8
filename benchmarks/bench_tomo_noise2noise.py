"""Topaz noise2noise on half tomograms against Topaz's pretrained 3D model, on a simulated tomogram whose clean
reconstruction is known: correlation with the clean volume and with the phantom, CPU seconds.

Reproduce:  nice .venv/bin/python benchmarks/bench_tomo_noise2noise.py [--threads 2] [--snr 0.1 0.3]
            [--epochs 3] [--n-train 40] [--lr 0.0001] [--seed 0]

The simulator's phantom (20 Å voxels, 96 × 64 × 40 kept) is projected over ±60° in 4° steps; each projection
gets two independent noise draws of twice the variance (the even- and odd-frame sums of one exposure), both
reconstructed alike into half tomograms, and their mean into the full tomogram (SIRT-like). The pretrained
unet-3d-20a denoises the full tomogram; noise2noise starts from the same model and trains on the halves with the
runner's `topaz denoise3d` flags (cubes of 32, the stage's CPU defaults), then denoises the full tomogram.
"""
from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from pathlib import Path

from airflow_provider_cryoem.io import read_mrc, write_mrc
from airflow_provider_cryoem.simulate.tomo_settings import TomoSimulationSettings
from airflow_provider_cryoem.simulate.tomo_volumes import correlation, noisy_and_clean_tomogram
from airflow_provider_cryoem.tools.topaz_denoise3d import main as runner

PATCH_PX, PADDING_PX, MODEL = 32, 16, "unet-3d-20a"


def settings() -> TomoSimulationSettings:
    return TomoSimulationSettings(image_size_px=128, pixel_size_a=10.0, phantom_binning=2, thickness_nm=80,
                                  vesicle_radius_min_a=120, vesicle_radius_max_a=220, n_vesicles=4, n_particles=20,
                                  tilt_min_deg=-60, tilt_max_deg=60, tilt_step_deg=4, seed=5)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(folder: Path, snr: float, threads: int, epochs: int, n_train: int, lr: float, seed: int) -> None:
    case = noisy_and_clean_tomogram(settings(), snr=snr, crop_yx_px=(64, 96), halves=True)
    full, half1, half2 = (write_mrc(folder / f"rec_snr{snr:g}{tag}.mrc", volume, case.voxel_size_a)
                          for tag, volume in (("", case.noisy), ("_half1", case.half1), ("_half2", case.half2)))
    common = [str(full), "-m", MODEL, "-s", str(PATCH_PX), "-p", str(PADDING_PX), "-j", str(threads)]
    trained = ["-a", str(half1), "-b", str(half2), "--N-train", str(n_train), "--N-test", "8", "--batch-size", "4",
               "--num-epochs", str(epochs), "--lr", f"{lr:g}", "--save-interval", str(epochs),
               "--save-prefix", str(folder / f"n2n_snr{snr:g}" / "model")]
    rows = [("raw", None, 0.0, 0.0, case.noisy)]
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)  # Topaz draws its training cubes, rotations and flips from numpy's and torch's generators
    torch.manual_seed(seed)
    for label, extra in (("pretrained " + MODEL, []), (f"noise2noise ({epochs} epochs × {n_train} cubes, lr {lr:g})", trained)):
        out = folder / f"{label.split()[0]}_snr{snr:g}"
        started, cpu = time.perf_counter(), cpu_s()
        assert runner([*common, "-o", str(out), *extra]) == 0
        rows.append((label, out, time.perf_counter() - started, cpu_s() - cpu,
                     read_mrc(out / f"{full.stem}.denoised.mrc")))
    for label, _, wall, cpu, volume in rows:
        print(f"| {snr:g} | {label} | {correlation(volume, case.clean):.3f} | {correlation(volume, case.phantom):.3f} "
              f"| {wall:.0f} | {cpu:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--snr", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.0001)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| SNR | volume | corr. vs clean | corr. vs phantom | wall s | CPU s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for snr in args.snr:
            run(Path(folder), snr, args.threads, args.epochs, args.n_train, args.lr, args.seed)


if __name__ == "__main__":
    main()
