"""Motion correction on real content at full detector size: a real micrograph re-exposed with a known drift.

The micrograph (fei-extended.mrc from mrcfile 1.5.4's source distribution, 3838×3710 px, 0.854 Å/px, a
Titan at Diamond) is mirror-padded to 4096², shifted per frame by a known drift with Fourier sub-pixel
shifts and drawn as Poisson counts (`--dose-px` e⁻/px/frame), 40 frames, written as an LZW TIFF (uint8)
and an MRC (uint16). On each file the built-in engine and Relion 3.1's own motion correction
(`relion_run_motioncorr --use_own`) run with 1 and 2 threads, one after another in fresh processes; the
table gives the RMSE of each program's whole-frame shifts against the planted drift (mean offset
removed), wall time and peak RSS (GNU time, the same measure for both).

Get the micrograph:  pip download --no-binary :all: --no-deps mrcfile==1.5.4 && tar xzf mrcfile-1.5.4.tar.gz
Reproduce:  nice -n 10 .venv/bin/python benchmarks/bench_motion_real.py \
                --micrograph mrcfile-1.5.4/tests/test_data/fei-extended.mrc [--work /tmp/motion-real]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft

from bench_motion import _rmse_px

SIZE_PX = 4096
N_FRAMES = 40
PIXEL_SIZE_A = 0.854


def planted_drift_px(n_frames: int, seed: int) -> np.ndarray:
    """A stage-drift-like trajectory `[[dx, dy], ...]` (px): fast early motion that settles, plus a small
    random walk, 0 at frame 0. About 25 px in all, 1.5 px/frame at first and 0.4 px/frame at the end."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames, dtype=float)
    settling = 8.0 * (1.0 - np.exp(-t / 6.0))
    direction = np.array([np.cos(0.6), np.sin(0.6)])
    steady = 0.4 * t
    walk = np.cumsum(rng.normal(0.0, 0.08, size=(n_frames, 2)), axis=0)
    shifts = (settling + steady)[:, None] * direction[None, :] + walk
    return shifts - shifts[0]


def reexposed_frames(micrograph: np.ndarray, shifts_px: np.ndarray, dose_px: float, seed: int) -> np.ndarray:
    """uint8 Poisson counts (n, SIZE_PX, SIZE_PX): frame i shows the specimen displaced by shifts_px[i]."""
    padded = np.pad(micrograph, [(0, max(0, SIZE_PX - n)) for n in micrograph.shape], mode="reflect")
    padded = padded[:SIZE_PX, :SIZE_PX].astype(np.float64)
    # Counts are proportional to the image, with its mean at dose_px; real images are positive exposures.
    low, high = np.percentile(padded, [0.1, 99.9])
    exposure = np.clip(padded, low, high) - low
    exposure *= dose_px / exposure.mean()
    spectrum = scipy.fft.rfft2(exposure, workers=2)
    ky = np.fft.fftfreq(SIZE_PX)[:, None]
    kx = np.fft.rfftfreq(SIZE_PX)[None, :]
    rng = np.random.default_rng(seed)
    frames = np.empty((len(shifts_px), SIZE_PX, SIZE_PX), dtype=np.uint8)
    for index, (dx, dy) in enumerate(shifts_px):
        ramp = np.exp(-2j * np.pi * (kx * dx + ky * dy))
        frame = scipy.fft.irfft2(spectrum * ramp, s=(SIZE_PX, SIZE_PX), workers=2)
        frames[index] = np.minimum(rng.poisson(np.clip(frame, 0.0, None)), 255)
    return frames


def _write_movies(micrograph_path: Path, work: Path, dose_px: float, seed: int) -> tuple[dict[str, Path], np.ndarray]:
    from airflow_provider_cryoem.io import read_mrc, write_tiff
    from airflow_provider_cryoem.io.mrc import write_mrc

    truth = planted_drift_px(N_FRAMES, seed)
    paths = {"tiff": work / "movie.tif", "mrc": work / "movie.mrc"}
    if not all(path.exists() for path in paths.values()):
        image = np.asarray(read_mrc(micrograph_path, mmap=False), dtype=np.float32)
        image = image[0] if image.ndim == 3 else image
        frames = reexposed_frames(image, truth, dose_px, seed)
        write_tiff(paths["tiff"], frames, compression="lzw")
        write_mrc(paths["mrc"], frames.astype(np.uint16), PIXEL_SIZE_A)
        del frames
    return paths, truth


def _timed(command: list[str], cwd: Path) -> dict:
    """Run `command` under GNU time: wall s, CPU s (user + system, all threads), peak RSS, the process."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "GNU_TIME %M %U %S", *command], cwd=cwd, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - start
    line = next((line.split() for line in done.stderr.splitlines() if line.startswith("GNU_TIME")), None)
    rss_kb, user_s, system_s = (float(v) for v in line[1:4]) if line else (0.0, 0.0, 0.0)
    return {"wall_s": wall, "cpu_s": user_s + system_s, "max_rss_bytes": int(rss_kb * 1024), "done": done}


def run_ours(movie: Path, dose_e_a2: float, threads: int, out: Path) -> dict:
    job = {"movie": str(movie), "out": str(out / f"ours_{movie.suffix[1:]}_{threads}.mrc"), "dose": dose_e_a2,
           "threads": threads}
    measured = _timed([sys.executable, __file__, "--worker", json.dumps(job)], out)
    done = measured.pop("done")
    if done.returncode != 0:
        raise RuntimeError(f"built-in engine failed on {movie}: {done.stderr[-2000:]}")
    return {**measured, "shifts_px": json.loads(done.stdout.strip().splitlines()[-1])["shifts_px"]}


def run_relion(movie: Path, dose_e_a2: float, threads: int, out: Path) -> dict | None:
    """relion_run_motioncorr --use_own on one movie; its correction negated into a specimen displacement."""
    exe = shutil.which("relion_run_motioncorr")
    if exe is None:
        return None
    import starfile

    job_dir = out / f"relion_{movie.suffix[1:]}_{threads}"
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    (job_dir / movie.name).symlink_to(movie)
    (job_dir / "movies.star").write_text(
        "data_optics\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n_rlnMicrographOriginalPixelSize #3\n"
        f"_rlnVoltage #4\n_rlnSphericalAberration #5\n_rlnAmplitudeContrast #6\nopticsGroup1 1 {PIXEL_SIZE_A} 300 "
        f"2.7 0.1\n\ndata_movies\nloop_\n_rlnMicrographMovieName #1\n_rlnOpticsGroup #2\n{movie.name} 1\n")
    command = [exe, "--i", "movies.star", "--o", "out/", "--use_own", "--j", str(threads), "--angpix",
               str(PIXEL_SIZE_A), "--voltage", "300", "--dose_per_frame", f"{dose_e_a2:.4f}", "--dose_weighting",
               "--patch_x", "5", "--patch_y", "5", "--bfactor", "150"]
    measured = _timed(command, job_dir)
    done = measured.pop("done")
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
        return None
    shift = starfile.read(job_dir / "out" / f"{movie.stem}.star", always_dict=True)["global_shift"]
    shifts = -np.stack([shift["rlnMicrographShiftX"], shift["rlnMicrographShiftY"]], axis=1)
    if movie.suffix in (".tif", ".tiff"):
        # Relion reads TIFF rows bottom-up (its convention, shared with MotionCor2 and IMOD): y runs opposite.
        shifts[:, 1] *= -1.0
    return {**measured, "shifts_px": shifts.tolist()}


def _worker(job: dict) -> dict:
    from airflow_provider_cryoem.engines.motion import MotionCorrectionInputs, run_motion_correction

    result = run_motion_correction(MotionCorrectionInputs(
        movie_path=job["movie"], output_path=job["out"], pixel_size_a=PIXEL_SIZE_A,
        dose_per_frame_e_a2=job["dose"], threads=job["threads"]))
    return {"shifts_px": result.shifts_px}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micrograph", type=Path, help="fei-extended.mrc (see the docstring)")
    parser.add_argument("--work", type=Path, help="folder for the movies (kept; default: a temporary folder)")
    parser.add_argument("--dose-px", type=float, default=0.8, help="e⁻/px/frame (0.5–1 is counting-camera dose)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--formats", nargs="+", default=["tiff", "mrc"], choices=["tiff", "mrc"])
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    if args.micrograph is None or not args.micrograph.is_file():
        parser.error("--micrograph must name fei-extended.mrc (see the docstring for how to get it)")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-motion-real-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    paths, truth = _write_movies(args.micrograph.resolve(), work.resolve(), args.dose_px, args.seed)
    print(f"movies written in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{p.name} {p.stat().st_size / 2**20:.0f} MiB" for p in paths.values()), file=sys.stderr)
    dose_e_a2 = args.dose_px / PIXEL_SIZE_A**2
    rows = []
    for fmt in args.formats:
        for threads in args.threads:
            for name, runner in (("ours", run_ours), ("Relion 3.1 --use_own", run_relion)):
                measured = runner(paths[fmt].resolve(), dose_e_a2, threads, work.resolve())
                if measured is None:
                    continue
                rows.append({"format": fmt, "threads": threads, "program": name, **measured,
                             "rmse_px": _rmse_px(measured["shifts_px"], truth)})
                print(f"{fmt} {threads} thread(s) {name}: {measured['wall_s']:.1f} s, RMSE "
                      f"{rows[-1]['rmse_px']:.3f} px", file=sys.stderr)
    _print_table(rows, args, truth)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def _print_table(rows: list[dict], args: argparse.Namespace, truth: np.ndarray) -> None:
    path_px = float(np.linalg.norm(np.diff(truth, axis=0), axis=1).sum())
    print(f"\nReal micrograph re-exposed: {SIZE_PX}² px, {N_FRAMES} frames, {args.dose_px} e⁻/px/frame "
          f"({args.dose_px / PIXEL_SIZE_A**2:.2f} e⁻/Å²/frame), planted drift {path_px:.1f} px path; "
          f"5×5 patches, B 150 Å², dose weighting on; {os.cpu_count()} cores\n")
    print("| movie | threads | program | shift RMSE px | wall s | CPU s | peak RSS GiB | 1→2 threads: wall speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    walls = {(r["format"], r["threads"], r["program"]): r["wall_s"] for r in rows}
    for r in rows:
        one = walls.get((r["format"], 1, r["program"]))
        speedup = f"{one / r['wall_s']:.2f}" if one and r["threads"] == 2 else ""
        print(f"| {r['format']} | {r['threads']} | {r['program']} | {r['rmse_px']:.3f} | {r['wall_s']:.1f} | "
              f"{r['cpu_s']:.1f} | {r['max_rss_bytes'] / 2**30:.2f} | {speedup} |")
    print(f"\nLoad average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"\nReproduce: nice -n 10 .venv/bin/python benchmarks/bench_motion_real.py --micrograph "
          f"{args.micrograph} --dose-px {args.dose_px} --threads {' '.join(map(str, args.threads))}")


if __name__ == "__main__":
    main()
