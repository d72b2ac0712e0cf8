"""Picking accuracy and speed on simulated micrographs, against relion_autopick --LoG when it is installed.

For each condition (total dose = SNR, particle contrast, junk, carbon) it simulates micrographs with the
project's simulator (clean dose-integrated image + Poisson counts), picks them with the built-in LoG picker
and with Relion 3.1's LoG picker over the same diameter range, and scores precision / recall / F1 against
the planted non-junk particles (one-to-one matching within 0.3 × diameter). Prints a Markdown table.

    .venv/bin/python benchmarks/bench_picking.py [--micrographs 4] [--size 1024] [--preset realistic]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from airflow_provider_cryoem.engines.extract import read_coordinates
from airflow_provider_cryoem.engines.pick_scoring import matched_picks, precision_recall_f1
from airflow_provider_cryoem.engines.picking import PickingInputs, run_picking
from airflow_provider_cryoem.io import write_mrc
from airflow_provider_cryoem.simulate import SpaSimulationSettings, simulate_movie

DIAMETER_A = 140.0
# (label, simulator overrides): total dose sets the SNR; a weaker particle makes the low-SNR end harder.
CONDITIONS: list[tuple[str, dict]] = [
    ("40 e/Å², phase 0.05", {"dose_per_frame_e_a2": 10.0, "particle_phase_rad": 0.05}),
    ("20 e/Å², phase 0.05", {"dose_per_frame_e_a2": 5.0, "particle_phase_rad": 0.05}),
    ("10 e/Å², phase 0.05", {"dose_per_frame_e_a2": 2.5, "particle_phase_rad": 0.05}),
    ("5 e/Å², phase 0.05", {"dose_per_frame_e_a2": 1.25, "particle_phase_rad": 0.05}),
    ("2 e/Å², phase 0.05", {"dose_per_frame_e_a2": 0.5, "particle_phase_rad": 0.05}),
    ("20 e/Å², phase 0.15", {"dose_per_frame_e_a2": 5.0}),
    ("20 e/Å², phase 0.15, 20 % junk", {"dose_per_frame_e_a2": 5.0, "junk_fraction": 0.2}),
    ("20 e/Å², phase 0.15, carbon edge", {"dose_per_frame_e_a2": 5.0, "carbon_edge": True}),
]

# The realistic preset (true protein contrast, amorphous ice, carbon rim on every micrograph, contaminants,
# 10 % aggregates, touching particles) at its own contrast; dose and what is left out vary.
REALISTIC_CONDITIONS: list[tuple[str, dict]] = [
    ("realistic, 50 e/Å²", {"dose_per_frame_e_a2": 12.5}),
    ("realistic, 30 e/Å²", {"dose_per_frame_e_a2": 7.5}),
    ("realistic, 50 e/Å², no carbon", {"dose_per_frame_e_a2": 12.5, "carbon_edge": False,
                                       "carbon_particle_fraction": 0.0}),
    ("realistic, 50 e/Å², no carbon, no junk", {"dose_per_frame_e_a2": 12.5, "carbon_edge": False,
                                                "carbon_particle_fraction": 0.0, "junk_fraction": 0.0}),
]


def score(picks: np.ndarray, truth: np.ndarray, tolerance_px: float) -> tuple[int, int, int]:
    """(matched, picks, truth) with one-to-one matching within `tolerance_px`."""
    return matched_picks(picks, truth, tolerance_px), len(picks), len(truth)


def prf(counts: list[tuple[int, int, int]]) -> tuple[float, float, float]:
    return precision_recall_f1(*(sum(c[i] for c in counts) for i in range(3)))


def simulate_micrographs(folder: Path, overrides: dict, count: int, size_px: int,
                         preset: str = "easy") -> list[np.ndarray]:
    """Write `count` noisy micrographs into `folder`; return the planted non-junk [x, y] per micrograph."""
    truths = []
    for seed in range(count):
        settings = SpaSimulationSettings.preset(preset, image_size_px=size_px, n_frames=4,
                                                particle_diameter_a=DIAMETER_A, particles_per_micrograph=40,
                                                seed=seed, pixel_size_a=1.0, **overrides)
        movie = simulate_movie(settings, 0)
        counts = np.random.default_rng(seed).poisson(np.maximum(movie.clean_micrograph, 0)).astype(np.float32)
        write_mrc(folder / f"mic{seed:03d}.mrc", counts, settings.pixel_size_a)
        truths.append(np.asarray(movie.truth.particle_coordinates_px()).reshape(-1, 2))
    return truths


def run_ours(folder: Path, truths: list[np.ndarray]) -> tuple[tuple[float, float, float], float]:
    counts, seconds = [], 0.0
    for index, truth in enumerate(truths):
        start = time.perf_counter()
        result = run_picking(PickingInputs(micrograph_path=str(folder / f"mic{index:03d}.mrc"), pixel_size_a=1.0,
                                           particle_diameter_a=DIAMETER_A))
        seconds += time.perf_counter() - start
        counts.append(score(np.asarray(result.coordinates_px).reshape(-1, 2), truth, 0.3 * DIAMETER_A))
    return prf(counts), seconds / len(truths)


def run_relion(folder: Path, truths: list[np.ndarray]) -> tuple[tuple[float, float, float], float]:
    """relion_autopick --LoG with the GUI defaults (threshold 0, lowpass 20 Å, shrink 0), same diameters."""
    output = folder / "AutoPick"
    command = ["relion_autopick", "--i", str(folder / "*.mrc"), "--odir", f"{output}/", "--pickname", "autopick",
               "--LoG", "--LoG_diam_min", str(0.8 * DIAMETER_A), "--LoG_diam_max", str(1.2 * DIAMETER_A),
               "--angpix", "1", "--shrink", "0", "--lowpass", "20", "--LoG_adjust_threshold", "0",
               "--LoG_upper_threshold", "999"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=folder)
    seconds = (time.perf_counter() - start) / len(truths)
    counts = []
    for index, truth in enumerate(truths):
        star = next(output.rglob(f"mic{index:03d}_autopick.star"))
        counts.append(score(read_coordinates(star), truth, 0.3 * DIAMETER_A))
    return prf(counts), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micrographs", type=int, default=4, help="Micrographs per condition.")
    parser.add_argument("--size", type=int, default=1024, help="Micrograph size (px, 1 Å/px).")
    parser.add_argument("--preset", choices=["easy", "realistic"], default="easy",
                        help="Simulator preset; realistic runs its own conditions (REALISTIC_CONDITIONS).")
    args = parser.parse_args()
    relion = shutil.which("relion_autopick") is not None
    print(f"Picking, {args.micrographs} micrographs of {args.size}² px per row, {DIAMETER_A:.0f} Å particles, "
          f"F1 vs planted non-junk particles within 0.3 × diameter.\n")
    header = "| condition | ours P / R / F1 | ours s/mic |"
    header += " Relion LoG P / R / F1 | Relion s/mic |" if relion else ""
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for label, overrides in REALISTIC_CONDITIONS if args.preset == "realistic" else CONDITIONS:
        with tempfile.TemporaryDirectory(prefix="bench-picking-") as tmp:
            folder = Path(tmp)
            truths = simulate_micrographs(folder, overrides, args.micrographs, args.size, args.preset)
            (p, r, f), seconds = run_ours(folder, truths)
            row = f"| {label} | {p:.2f} / {r:.2f} / {f:.2f} | {seconds:.3f} |"
            if relion:
                (p, r, f), seconds = run_relion(folder, truths)
                row += f" {p:.2f} / {r:.2f} / {f:.2f} | {seconds:.2f} |"
        print(row, flush=True)
    print(f"\nReproduce: .venv/bin/python benchmarks/bench_picking.py --micrographs {args.micrographs} "
          f"--size {args.size}{' --preset realistic' if args.preset == 'realistic' else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
