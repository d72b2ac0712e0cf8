"""Topaz's pretrained picker (the `pick: {tool: topaz}` stage's commands) on simulated micrographs, against
the built-in LoG picker, at several Topaz thresholds.

The micrographs and conditions are benchmarks/bench_picking.py's (dose-integrated image + Poisson counts,
140 Å particles at 1 Å/px, 40 planted per micrograph). Topaz runs as the stage runs it on a worker:
`python -m topaz.commands.preprocess` (downsampling by Relion's rule, here 4) then
`python -m topaz.commands.extract -m resnet16 -r <particle radius> -d -1` on the CPU, once per condition
over all its micrographs, at -t -6; higher thresholds are the same picks cut. Precision and recall are
against the planted non-junk particles, one-to-one within a particle radius (0.5 × diameter). Time per
micrograph: the two commands run on one micrograph alone, as the stage does per movie (both import torch).

`--k3`: instead, time and peak memory of the two commands on one K3-size micrograph (5760 × 4092 at 0.83 Å/px,
noise: only the cost is measured), scored whole and in 512-pixel patches (-p).

    .venv/bin/python benchmarks/bench_topaz_picking.py [--micrographs 4] [--size 1024] [--k3]
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from airflow_provider_cryoem.engines.picking import PickingInputs, run_picking
from airflow_provider_cryoem.tools.topaz import relion_downscale

sys.path.insert(0, str(Path(__file__).parent))
from bench_picking import CONDITIONS, DIAMETER_A, prf, score, simulate_micrographs  # noqa: E402

THRESHOLDS = (-6.0, -3.0, -2.0, 0.0)
TOLERANCE_PX = 0.5 * DIAMETER_A  # a particle radius at 1 Å/px


def topaz(folder: Path, micrographs: list[Path], scale: int, radius: int, threshold: float) -> Path:
    preprocessed, picks = folder / f"pre{scale}", folder / f"picks_{len(micrographs)}.txt"
    subprocess.run([sys.executable, "-m", "topaz.commands.preprocess", "-s", str(scale), "-d", "-1",
                    "-o", str(preprocessed), *map(str, micrographs)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "topaz.commands.extract", "-m", "resnet16", "-r", str(radius),
                    "-t", f"{threshold:g}", "-d", "-1", "-o", str(picks),
                    *[str(preprocessed / m.name) for m in micrographs]], check=True, capture_output=True)
    return picks


def read_picks(path: Path, scale: int) -> dict[str, np.ndarray]:
    """{micrograph stem: rows of x, y, score} in micrograph pixels."""
    rows: dict[str, list[list[float]]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            rows.setdefault(row["image_name"], []).append(
                [float(row["x_coord"]) * scale, float(row["y_coord"]) * scale, float(row["score"])])
    return {name: np.asarray(values) for name, values in rows.items()}


def measured(command: list[str]) -> tuple[float, float]:
    """(wall s, peak resident MB) of one command."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def k3_cost() -> None:
    from airflow_provider_cryoem.io import write_mrc

    pixel_a = 0.83
    scale = relion_downscale(DIAMETER_A, pixel_a)
    radius = max(1, round(DIAMETER_A / 2 / pixel_a / scale))
    with tempfile.TemporaryDirectory(prefix="bench-topaz-k3-") as tmp:
        folder = Path(tmp)
        write_mrc(folder / "k3.mrc", np.random.default_rng(0).normal(size=(4092, 5760)).astype(np.float32), pixel_a)
        print(f"One K3-size micrograph (5760 × 4092, {pixel_a} Å/px, {DIAMETER_A:.0f} Å particles): downsampled "
              f"×{scale}, radius {radius} px, CPU.\n")
        print("| command | wall s | peak memory |\n|---|---|---|")
        wall, peak = measured([sys.executable, "-m", "topaz.commands.preprocess", "-s", str(scale), "-d", "-1",
                               "-o", str(folder / "pre"), str(folder / "k3.mrc")])
        print(f"| topaz preprocess | {wall:.1f} | {peak / 1024:.1f} GB |", flush=True)
        for patch in (0, 512):
            wall, peak = measured([sys.executable, "-m", "topaz.commands.extract", "-m", "resnet16", "-r", str(radius),
                                   "-t", "-3", "-d", "-1", "-p", str(patch), "-o", str(folder / f"picks{patch}.txt"),
                                   str(folder / "pre" / "k3.mrc")])
            print(f"| topaz extract{f' -p {patch}' if patch else ''} | {wall:.1f} | {peak / 1024:.1f} GB |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micrographs", type=int, default=4, help="Micrographs per condition.")
    parser.add_argument("--size", type=int, default=1024, help="Micrograph size (px, 1 Å/px).")
    parser.add_argument("--k3", action="store_true", help="Cost on one K3-size micrograph instead.")
    args = parser.parse_args()
    if args.k3:
        k3_cost()
        return 0
    scale = relion_downscale(DIAMETER_A, 1.0)
    radius = max(1, round(DIAMETER_A / 2 / scale))
    print(f"Picking, {args.micrographs} micrographs of {args.size}² px per row, {DIAMETER_A:.0f} Å particles; "
          f"P / R vs planted non-junk particles, one-to-one within a particle radius. Topaz resnet16 on the CPU, "
          f"downsampled ×{scale}, radius {radius} px.\n")
    header = "| condition | built-in LoG P / R | " + " | ".join(f"Topaz t={t:g} P / R (picks/mic)"
                                                          for t in THRESHOLDS) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    single_mic_s = []
    for label, overrides in CONDITIONS:
        with tempfile.TemporaryDirectory(prefix="bench-topaz-") as tmp:
            folder = Path(tmp)
            truths = simulate_micrographs(folder, overrides, args.micrographs, args.size)
            micrographs = [folder / f"mic{index:03d}.mrc" for index in range(len(truths))]
            ours = []
            for micrograph, truth in zip(micrographs, truths):
                result = run_picking(PickingInputs(micrograph_path=str(micrograph), pixel_size_a=1.0,
                                                   particle_diameter_a=DIAMETER_A))
                ours.append(score(np.asarray(result.coordinates_px).reshape(-1, 2), truth, TOLERANCE_PX))
            p, r, _ = prf(ours)
            row = f"| {label} | {p:.2f} / {r:.2f} |"
            picks = read_picks(topaz(folder, micrographs, scale, radius, min(THRESHOLDS)), scale)
            for threshold in THRESHOLDS:
                counts = []
                for micrograph, truth in zip(micrographs, truths):
                    table = picks.get(micrograph.stem, np.zeros((0, 3)))
                    counts.append(score(table[table[:, 2] >= threshold, :2], truth, TOLERANCE_PX))
                p, r, _ = prf(counts)
                row += f" {p:.2f} / {r:.2f} ({sum(c[1] for c in counts) / len(counts):.0f}) |"
            start = time.perf_counter()
            topaz(folder, micrographs[:1], scale, radius, -3.0)
            single_mic_s.append(time.perf_counter() - start)
        print(row, flush=True)
    print(f"\nTopaz per movie as the stage runs it (preprocess + extract, one {args.size}² micrograph, two "
          f"processes): median {np.median(single_mic_s):.1f} s wall.")
    print(f"Reproduce: .venv/bin/python benchmarks/bench_topaz_picking.py --micrographs {args.micrographs} "
          f"--size {args.size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
