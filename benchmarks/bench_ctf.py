"""Accuracy and speed of the built-in CTF estimator on simulated micrographs over defocus and dose.

Each micrograph is the simulator's noise-free dose-integrated image (CTF, envelope, dose damage) with
Poisson counting noise drawn at the total dose, i.e. a perfectly motion-corrected sum. Prints a Markdown
table. Reproduce with:

    .venv/bin/python benchmarks/bench_ctf.py --defoci 8000 15000 25000 40000 --doses 20 40 --repeats 4
    .venv/bin/python benchmarks/bench_ctf.py --preset realistic --defoci 8000 15000 25000 --doses 50 --repeats 3
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from airflow_provider_cryoem.engines.ctf import CtfInputs, run_ctf_estimation
from airflow_provider_cryoem.io import write_mrc
from airflow_provider_cryoem.simulate import SpaSimulationSettings, simulate_movie

_FRAMES = 4
# Angle errors are only meaningful when the rings are visibly elliptical.
_ANGLE_MIN_ASTIGMATISM_A = 500.0


def angle_error_deg(estimated_deg: float, true_deg: float) -> float:
    """Smallest difference of two axis directions (mod 180°)."""
    difference = (estimated_deg - true_deg) % 180.0
    return min(difference, 180.0 - difference)


def simulated_micrograph(defocus_a: float, total_dose_e_a2: float, astigmatism_max_a: float, size_px: int,
                         seed: int, preset: str = "easy") -> tuple[np.ndarray, dict[str, float]]:
    """A Poisson micrograph of the simulator preset at `total_dose_e_a2` and its true CTF."""
    settings = SpaSimulationSettings.preset(preset, seed=seed, image_size_px=size_px, n_frames=_FRAMES,
                                            dose_per_frame_e_a2=total_dose_e_a2 / _FRAMES, defocus_min_a=defocus_a,
                                            defocus_max_a=defocus_a, astigmatism_max_a=astigmatism_max_a,
                                            drift_a_per_frame=0.0, local_motion_a=0.0, pixel_size_a=1.0)
    movie = simulate_movie(settings, 0)
    counts = np.random.default_rng(seed).poisson(np.clip(movie.clean_micrograph, 0, None)).astype(np.float32)
    truth = movie.truth
    return counts, {"u": truth.defocus_u_a, "v": truth.defocus_v_a, "angle": truth.astigmatism_angle_deg}


def run_case(defocus_a: float, dose: float, seed: int, args: argparse.Namespace, work_dir: Path) -> dict[str, float]:
    image, truth = simulated_micrograph(defocus_a, dose, args.astigmatism_max_a, args.size_px, seed, args.preset)
    path = write_mrc(work_dir / f"mic_{defocus_a:.0f}_{dose:.0f}_{seed}.mrc", image, 1.0)
    start = time.perf_counter()
    result = run_ctf_estimation(CtfInputs(micrograph_path=str(path), pixel_size_a=1.0))
    wall_s = time.perf_counter() - start
    true_mean = 0.5 * (truth["u"] + truth["v"])
    estimated_mean = 0.5 * (result.defocus_u_a + result.defocus_v_a)
    true_astigmatism = truth["u"] - truth["v"]
    return {
        "defocus_error_pct": 100.0 * abs(estimated_mean - true_mean) / true_mean,
        "astigmatism_error_a": abs(result.astigmatism_a - true_astigmatism),
        "angle_error_deg": (angle_error_deg(result.astigmatism_angle_deg, truth["angle"])
                            if true_astigmatism >= _ANGLE_MIN_ASTIGMATISM_A else float("nan")),
        "fit_resolution_a": result.fit_resolution_a,
        "wall_s": wall_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defoci", type=float, nargs="+", default=[8000, 15000, 25000, 40000])
    parser.add_argument("--doses", type=float, nargs="+", default=[20, 40], help="Total dose (e⁻/Å²).")
    parser.add_argument("--repeats", type=int, default=4, help="Micrographs (seeds) per cell.")
    parser.add_argument("--astigmatism-max-a", type=float, default=1500.0)
    parser.add_argument("--size-px", type=int, default=1024)
    parser.add_argument("--preset", choices=["easy", "realistic"], default="easy",
                        help="Simulator preset (realistic: true protein contrast, amorphous ice, carbon rim, "
                             "counting camera).")
    args = parser.parse_args()

    print("| defocus (Å) | dose (e⁻/Å²) | n | median defocus error (%) | max defocus error (%) | "
          "median astig. error (Å) | median angle error (°, astig ≥ 500 Å) | median fit res. (Å) | "
          "wall s / micrograph |")
    print("|---|---|---|---|---|---|---|---|---|")
    everything: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ctf-") as tmp:
        for defocus_a in args.defoci:
            for dose in args.doses:
                rows = [run_case(defocus_a, dose, seed, args, Path(tmp)) for seed in range(args.repeats)]
                everything.extend(rows)
                print(_table_row(f"{defocus_a:.0f}", f"{dose:.0f}", rows), flush=True)
    print(_table_row("all", "all", everything))


def _table_row(defocus: str, dose: str, rows: list[dict[str, float]]) -> str:
    def column(key: str) -> np.ndarray:
        return np.array([row[key] for row in rows])

    angles = column("angle_error_deg")
    angle = f"{np.nanmedian(angles):.1f}" if np.isfinite(angles).any() else "–"
    return (f"| {defocus} | {dose} | {len(rows)} | {np.median(column('defocus_error_pct')):.2f} | "
            f"{column('defocus_error_pct').max():.2f} | {np.median(column('astigmatism_error_a')):.0f} | {angle} | "
            f"{np.median(column('fit_resolution_a')):.1f} | {np.median(column('wall_s')):.2f} |")


if __name__ == "__main__":
    main()
