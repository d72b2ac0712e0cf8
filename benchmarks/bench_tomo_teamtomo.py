"""Tomography benchmark: our tilt-series alignment next to teamtomo's `torch-tiltxcorr` (IMOD tiltxcorr's
cosine-stretched neighbour cross-correlation, in PyTorch), run by hand on the same simulated series.

Reproduce:
    python3.11 -m venv /tmp/teamtomo-venv                      # its own venv, no system site-packages
    /tmp/teamtomo-venv/bin/pip install torch==2.13.0 torch-tiltxcorr
    .venv/bin/python benchmarks/bench_tomo_teamtomo.py [--sizes 256 1024] [--threads 1] [--seed 3]
        [--teamtomo-python /tmp/teamtomo-venv/bin/python]     (or TEAMTOMO_PYTHON)

torch-tiltxcorr is not a dependency of this project: it runs in the other venv, in a subprocess that reads
the stack from an .npy file, so nothing of torch is imported here. Without that interpreter or package the
benchmark says so and exits 0.

Series: bench_tomo's "phantom" cases (the same builder, seed and sizes: 41 tilts ±60° in 3° steps, true
axis 85°, planted tracking shifts, white noise at SNR 0.7). Rows, each scored like bench_tomo (per-tilt
shift RMSE in input px after removing the unobservable rigid specimen translation):
- ours, full: align_tilt_stack as the pipeline runs it (coarse chain, axis refinement from the nominal
  axis, 2 rounds of projection matching), started at the nominal axis 80°.
- ours, coarse only: the same entry point with axis refinement and projection matching off, i.e. the same
  kind of stretch-and-correlate chain as tiltxcorr, at the axis given.
- tiltxcorr: `torch_tiltxcorr.tiltxcorr` at its README's suggested low-pass (4 × the pixel size) and at
  `--lowpass-px` others (default also 8 ×), at the axis given. It does not refine the axis, so it is run at
  the nominal 80° and at the true 85°.
tiltxcorr's shifts are the (dy, dx) that re-centre each tilt; the planted ones are (dx, dy) displacements,
so its output is compared as -(dx, dy). Its tilt-axis angle is the same number as ours (CCW from the
image y axis, as IMOD and SerialEM give it). Checked by hand on the 256² series, tiltxcorr at 85°: -(dx, dy)
0.33 px, the other sign or axis swaps 5.8-9.3 px; at the mirrored axis 95° (= -85°) 0.70 px, at 5° 7.3 px.
Times: wall seconds of the alignment call alone (data in memory), `--threads` FFT workers for ours and
torch threads for tiltxcorr; the first tiltxcorr call of a process is preceded by a warm-up call on
a 2-tilt stack so torch's one-off set-up is not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tomo import AXIS_START_OFFSET_DEG, TRUE_AXIS_DEG, phantom_case  # noqa: E402

from airflow_provider_cryoem.engines.tomo_align import TiltAlignmentSettings, align_tilt_stack  # noqa: E402
from airflow_provider_cryoem.engines.tomo_scoring import shift_errors_px, shift_rmse_px  # noqa: E402

DEFAULT_PYTHON = "/tmp/teamtomo-venv/bin/python"
NOMINAL_AXIS_DEG = TRUE_AXIS_DEG + AXIS_START_OFFSET_DEG

# Runs inside the teamtomo venv: argv = stack.npy angles.npy jobs.json out.json
RUNNER = r"""
import json, sys, time
import numpy as np
import torch
from torch_tiltxcorr import tiltxcorr

stack_path, angles_path, jobs_path, out_path = sys.argv[1:5]
jobs = json.loads(open(jobs_path).read())
torch.set_num_threads(jobs["threads"])
stack = torch.from_numpy(np.load(stack_path))
angles = torch.from_numpy(np.load(angles_path))
tiltxcorr(tilt_series=stack[:2].clone(), tilt_angles=angles[:2].clone(), tilt_axis_angle=85.0,
          pixel_spacing_angstroms=jobs["pixel_size_a"], lowpass_angstroms=4 * jobs["pixel_size_a"])  # warm-up
out = []
for lowpass_px in jobs["lowpass_px"]:
    for axis in jobs["axes_deg"]:
        start = time.perf_counter()
        shifts = tiltxcorr(tilt_series=stack, tilt_angles=angles, tilt_axis_angle=axis,
                           pixel_spacing_angstroms=jobs["pixel_size_a"],
                           lowpass_angstroms=lowpass_px * jobs["pixel_size_a"])
        out.append({"axis_deg": axis, "lowpass_px": lowpass_px, "seconds": time.perf_counter() - start,
                    "shifts_yx": shifts.tolist()})
open(out_path, "w").write(json.dumps({"torch": torch.__version__, "runs": out}))
"""


def teamtomo_available(python: str) -> str | None:
    """None when `python` can import torch_tiltxcorr, else why not."""
    if not Path(python).exists():
        return f"{python} does not exist"
    probe = subprocess.run([python, "-c", "import torch, torch_tiltxcorr; print(torch.__version__, "
                            "torch_tiltxcorr.__version__)"], capture_output=True, text=True)
    if probe.returncode:
        return f"{python} cannot import torch_tiltxcorr: {probe.stderr.strip().splitlines()[-1]}"
    return None


def run_tiltxcorr(python: str, stack: np.ndarray, angles: np.ndarray, pixel_size_a: float, axes: list[float],
                  threads: int, lowpass_px: list[float] = (4.0,)) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-teamtomo-") as folder:
        paths = [Path(folder) / name for name in ("stack.npy", "angles.npy", "jobs.json", "out.json", "run.py")]
        np.save(paths[0], stack.astype(np.float32))
        np.save(paths[1], angles.astype(np.float32))
        paths[2].write_text(json.dumps({"threads": threads, "pixel_size_a": pixel_size_a, "axes_deg": axes,
                                          "lowpass_px": list(lowpass_px)}))
        paths[4].write_text(RUNNER)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        done = subprocess.run([python, str(paths[4]), *map(str, paths[:4])], capture_output=True, text=True, env=env)
        if done.returncode:
            raise RuntimeError(f"tiltxcorr failed:\n{done.stderr[-3000:]}")
        return json.loads(paths[3].read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], choices=[256, 1024],
                        help="bench_tomo's phantom cases: 256² @ 20 Å and 1024² @ 10 Å")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lowpass-px", type=float, nargs="+", default=[4.0, 8.0],
                        help="tiltxcorr low-pass cut-offs in pixels (its README suggests 4 × the pixel size)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--teamtomo-python", default=os.environ.get("TEAMTOMO_PYTHON", DEFAULT_PYTHON))
    args = parser.parse_args()
    missing = teamtomo_available(args.teamtomo_python)
    if missing:
        print(f"SKIPPED: torch-tiltxcorr is not available ({missing}). Install it into its own venv:\n"
              f"  python3.11 -m venv /tmp/teamtomo-venv && /tmp/teamtomo-venv/bin/pip install torch==2.13.0 "
              f"torch-tiltxcorr\nand pass --teamtomo-python /tmp/teamtomo-venv/bin/python.")
        return 0

    print(f"| series | aligner | axis given (°) | axis used (°) | shift RMSE (input px) | max tilt error (px) "
          f"| align s ({args.threads} thread{'s' if args.threads > 1 else ''}) |")
    print("|---|---|---|---|---|---|---|")
    versions = ""
    for size in args.sizes:
        case = phantom_case(256, 20.0, 1, 100.0, args.seed) if size == 256 else \
            phantom_case(1024, 10.0, 2, 150.0, args.seed)
        rows = []
        for label, extra in (("ours, full", {}),
                             ("ours, coarse only", {"refine_tilt_axis": False, "projection_matching_iterations": 0})):
            for axis in ([NOMINAL_AXIS_DEG] if not extra else [NOMINAL_AXIS_DEG, TRUE_AXIS_DEG]):
                start = time.perf_counter()
                result, _ = align_tilt_stack(case.stack, case.angles_deg, TiltAlignmentSettings(
                    pixel_size_a=case.pixel_size_a, tilt_axis_deg=axis, thickness_nm=case.thickness_nm,
                    fft_workers=args.threads, **extra))
                seconds = time.perf_counter() - start
                rows.append((label, axis, result.tilt_axis_deg, np.array([t.shift_px for t in result.tilts]), seconds))
        out = run_tiltxcorr(args.teamtomo_python, case.stack, case.angles_deg, case.pixel_size_a,
                            [NOMINAL_AXIS_DEG, TRUE_AXIS_DEG], args.threads, args.lowpass_px)
        versions = out["torch"]
        for run in out["runs"]:
            yx = np.array(run["shifts_yx"])
            label = f"torch-tiltxcorr, low-pass {run['lowpass_px'] * case.pixel_size_a:g} Å"
            rows.append((label, run["axis_deg"], run["axis_deg"], -yx[:, ::-1], run["seconds"]))
        for label, axis, used, shifts, seconds in rows:
            errors = shift_errors_px(shifts, case.shifts_px, case.angles_deg, TRUE_AXIS_DEG)
            rmse = shift_rmse_px(shifts, case.shifts_px, case.angles_deg, TRUE_AXIS_DEG)
            print(f"| {case.name} | {label} | {axis:g} | {used:.2f} | {rmse:.2f} | "
                  f"{float(np.hypot(errors[:, 0], errors[:, 1]).max()):.2f} | {seconds:.1f} |", flush=True)
    print(f"\ntorch {versions}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
