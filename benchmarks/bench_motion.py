"""Motion correction benchmark: accuracy, speed and memory of the built-in engine against planted truth,
the read + FFT floor, and Relion 3.1's own implementation (`relion_run_motioncorr --use_own`) when
installed, on the same simulated movies and the same thread count.

Reproduce:  .venv/bin/python benchmarks/bench_motion.py [--sizes 1024 2048] [--threads 2] [--repeats 3] [--no-relion]
            [--preset realistic]
Each measurement runs in a fresh subprocess, so its peak memory (ru_maxrss) is its own; ours and the floor
run alternately `--repeats` times and report the median wall time (Relion runs once).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

# Dose (e/Å² per frame) × drift (Å per late frame) grid at the first size; one middle case at larger sizes.
DOSES = (0.5, 1.0, 2.0)
DRIFTS = (0.5, 2.0)
N_FRAMES = 24


def _rmse_px(estimated: np.ndarray, truth: np.ndarray) -> float:
    error = np.asarray(estimated, dtype=float) - np.asarray(truth, dtype=float)
    error -= error.mean(axis=0)
    return float(np.sqrt((error**2).sum(axis=1).mean()))


def _worker(kind: str, job: dict) -> dict:
    """One measurement inside its own process: wall time, Python-heap peak, process peak RSS."""
    import scipy.fft

    from airflow_provider_cryoem.engines.motion import (
        MotionCorrectionInputs,
        run_motion_correction,
    )
    from airflow_provider_cryoem.io import apply_gain, load_gain, read_movie

    def floor() -> None:
        frames = read_movie(job["movie"])
        gain = load_gain(job["gain"], expected_shape=frames.shape[1:])
        for frame in frames:
            scipy.fft.rfft2(apply_gain(frame, gain), workers=job["threads"])

    def ours() -> dict:
        inputs = MotionCorrectionInputs(movie_path=job["movie"], output_path=job["out"], pixel_size_a=1.0,
                                        dose_per_frame_e_a2=job["dose"], gain_reference_path=job["gain"],
                                        threads=job["threads"])
        result = run_motion_correction(inputs)
        return {"shifts_px": result.shifts_px, "local_applied": result.local_motion.applied}

    task = floor if kind == "floor" else ours
    start = time.perf_counter()
    extra = task() or {}
    wall = time.perf_counter() - start
    tracemalloc.start()
    task()
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"wall_s": wall, "heap_peak_bytes": heap_peak,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **extra}


def _run_worker(kind: str, job: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", kind, json.dumps(job)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(job: dict, repeats: int) -> tuple[dict, dict]:
    """(ours, floor): each the first run's numbers with the median wall time of `repeats` fresh processes,
    run alternately so that both see the same load on a shared machine."""
    runs: dict[str, list[dict]] = {"ours": [], "floor": []}
    for _ in range(repeats):
        for kind, results in runs.items():
            results.append(_run_worker(kind, job))
    ours, floor = ({**results[0], "wall_s": float(np.median([run["wall_s"] for run in results]))}
                   for results in runs.values())
    return ours, floor


def _relion(job: dict, work: Path) -> dict | None:
    """relion_run_motioncorr --use_own on one movie; shifts from the `global_shift` block of its STAR file."""
    exe = shutil.which("relion_run_motioncorr")
    if exe is None:
        return None
    import starfile

    movie = Path(job["movie"])
    star = work / "movies.star"
    star.write_text("data_optics\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n"
                    "_rlnMicrographOriginalPixelSize #3\n_rlnVoltage #4\n_rlnSphericalAberration #5\n"
                    "_rlnAmplitudeContrast #6\nopticsGroup1 1 1.0 300 2.7 0.1\n\n"
                    f"data_movies\nloop_\n_rlnMicrographMovieName #1\n_rlnOpticsGroup #2\n{movie.name} 1\n")
    out = work / "relion_out"
    shutil.rmtree(out, ignore_errors=True)
    command = [exe, "--i", star.name, "--o", "relion_out/", "--use_own", "--j", str(job["threads"]),
               "--angpix", "1", "--voltage", "300", "--dose_per_frame", str(job["dose"]), "--dose_weighting",
               "--gainref", str(job["gain"]), "--patch_x", "5", "--patch_y", "5", "--bfactor", "150"]
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M", *command], cwd=work, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
        return None
    rss = next((int(line.split()[1]) * 1024 for line in done.stderr.splitlines() if line.startswith("MAXRSS_KB")), 0)
    shifts_star = out / f"{movie.stem}.star"
    blocks = starfile.read(shifts_star, always_dict=True)
    shift = blocks["global_shift"]
    # Relion reports the correction applied to each frame: the negative of our specimen position.
    shifts = -np.stack([shift["rlnMicrographShiftX"], shift["rlnMicrographShiftY"]], axis=1)
    return {"wall_s": wall, "max_rss_bytes": rss, "shifts_px": shifts.tolist()}


def _simulate(size: int, dose: float, drift: float, folder: Path, preset: str = "easy") -> tuple[dict, np.ndarray, int]:
    from airflow_provider_cryoem.io import write_mrc
    from airflow_provider_cryoem.simulate import SpaSimulationSettings, simulate_movie
    from airflow_provider_cryoem.simulate.files import movie_bytes

    settings = SpaSimulationSettings.preset(preset, image_size_px=size, n_frames=N_FRAMES, dose_per_frame_e_a2=dose,
                                            drift_a_per_frame=drift, seed=11, pixel_size_a=1.0)
    movie = simulate_movie(settings, 0)
    folder.mkdir(parents=True, exist_ok=True)
    # MRC for both programs: Relion reads TIFF frames upside down relative to an MRC gain reference.
    path = folder / "movie.mrc"
    path.write_bytes(movie_bytes(movie.frames, "mrc", 1.0))
    gain = write_mrc(folder / "gain.mrc", movie.gain, 1.0)
    job = {"movie": str(path), "gain": str(gain), "dose": dose, "out": str(folder / "ours" / "mic.mrc")}
    return job, np.asarray(movie.truth.shifts_px), movie.frames.size * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="fresh runs of ours and the floor (median time)")
    parser.add_argument("--no-relion", action="store_true", help="skip Relion (its columns read n/a)")
    parser.add_argument("--preset", choices=["easy", "realistic"], default="easy",
                        help="simulator preset (realistic: true protein contrast, amorphous ice, carbon rim, "
                             "counting camera, 2 Å local motion)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker[0], json.loads(args.worker[1]))))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-motion-") as tmp:
        for size_index, size in enumerate(args.sizes):
            cases = [(d, v) for d in DOSES for v in DRIFTS] if size_index == 0 else [(1.0, 2.0)]
            for dose, drift in cases:
                folder = Path(tmp) / f"{size}_{dose}_{drift}"
                job, truth, movie_bytes_f32 = _simulate(size, dose, drift, folder, args.preset)
                job["threads"] = args.threads
                ours, floor = _measure(job, args.repeats)
                relion = None if args.no_relion else _relion(job, folder)
                rows.append({"size": size, "dose": dose, "drift": drift, "movie_mb": movie_bytes_f32 / 2**20,
                             "ours": ours, "floor": floor, "relion": relion,
                             "ours_rmse": _rmse_px(ours["shifts_px"], truth),
                             "relion_rmse": _rmse_px(relion["shifts_px"], truth) if relion else None})
                print(f"done {size} px dose {dose} drift {drift}", file=sys.stderr)
    _print_table(rows, args)


def _print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nMotion correction, {N_FRAMES}-frame simulated movies, {args.threads} threads, 5x5 patches, B 150 Å²; "
          f"ours and floor: median of {args.repeats} runs\n")
    print("| size px | dose e/Å²/frame | drift Å/frame | ours RMSE px | Relion RMSE px | ours s | Relion s | "
          "floor s | ours / floor | Relion / ours | ours heap peak / movie f32 | ours RSS MB | Relion RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ours, floor, relion = r["ours"], r["floor"], r["relion"]
        relion_cells = (f"{r['relion_rmse']:.3f}", f"{relion['wall_s']:.2f}", f"{relion['wall_s'] / ours['wall_s']:.2f}",
                        f"{relion['max_rss_bytes'] / 2**20:.0f}") if relion else ("n/a",) * 4
        print(f"| {r['size']} | {r['dose']} | {r['drift']} | {r['ours_rmse']:.3f} | {relion_cells[0]} | "
              f"{ours['wall_s']:.2f} | {relion_cells[1]} | {floor['wall_s']:.2f} | "
              f"{ours['wall_s'] / floor['wall_s']:.2f} | {relion_cells[2]} | "
              f"{ours['heap_peak_bytes'] / (r['movie_mb'] * 2**20):.2f} | {ours['max_rss_bytes'] / 2**20:.0f} | "
              f"{relion_cells[3]} |")
    print(f"\nReproduce: .venv/bin/python benchmarks/bench_motion.py --sizes {' '.join(map(str, args.sizes))} "
          f"--threads {args.threads} --repeats {args.repeats}{' --no-relion' if args.no_relion else ''}"
          f"{' --preset ' + args.preset if args.preset != 'easy' else ''}")


if __name__ == "__main__":
    main()
