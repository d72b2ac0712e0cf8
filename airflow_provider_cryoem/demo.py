"""`make demo`: a simulated live session processed by Airflow on the embedded defaults.

The microscope is the simulator writing into a watched folder in the background; Airflow runs each batch
of the session with `airflow dags test` (SQLite metadata, built-in engines, SQLite results), one run after
another until the session ends by itself on its end marker, as the scheduler would chain them.

SPA (the default): movies through `spa_live` with recipes/demo/spa_live.yaml, the live recipe with small
2D/3D settings, so that on a laptop the session ends, minutes later, with 2D classes, a de-novo initial
model, a 3D classification, a refined and post-processed map and a B-factor.

Tomography (`--tomo`, `make demo TOMO=1`): two tilt series collected tilt by tilt as SerialEM does (tilt
movies and a growing .mdoc per series) through `tomo_live` with recipes/tomo_live.yaml as it is: every
tilt motion-corrected and CTF-estimated as it lands, every series aligned and reconstructed once it is
complete, with its images and Relion 5 files.

Prints the session summary and where everything is. While the session runs, the session dashboard (the
provider's Airflow plugin) is served by an Airflow api-server of the demo's own: its URL is printed at the
start; `--keep-dashboard` (`make demo KEEP=1`) keeps it running after the session until Ctrl-C, otherwise it
stops with the demo. `--no-dashboard` runs without it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from .cli_commands.summary import format_summary
from .devtools.dags_test import dags_test_env
from .devtools.local_airflow import AirflowStack
from .pipeline.stores import results_store
from .results import SessionSummary, schema
from .simulate import (
    GAIN_REFERENCE_NAME,
    SpaSimulationSettings,
    TomoSimulationSettings,
    run_live_tomo_session,
)
from .simulate.session import run_live_session

REPO = Path(__file__).resolve().parent.parent
OUTPUT = Path(os.environ.get("CRYOEM_DEMO_DIR", REPO / "demo_output"))
N_MOVIES = int(os.environ.get("CRYOEM_DEMO_MOVIES", "8"))
# 2 Å pixels and a 128 Å particle: about 60 picks per 1024-px movie, extracted into 40-px boxes; 8 frames of
# 5 e⁻/Å² (40 e⁻/Å², a usual exposure: at 8 e⁻/Å² the de-novo model and refinement stall near 17 Å,
# BENCHMARKS.md)
SIMULATION = {"image_size_px": 1024, "n_frames": 8, "pixel_size_a": 2.0, "dose_per_frame_e_a2": 5.0, "particle_diameter_a": 128.0,
              "particles_per_micrograph": 70, "junk_fraction": 0.15, "seed": 5}
# every particle in one 2D batch at the end, six classes; two 3D classes of everything selected
SMALL_SESSION = {"downscaled_box_size_px": 40, "class2d_classes": 6, "class3d_classes": 2,
                 "class3d_batch_size": 100_000}

# Two series of 21 tilts, ±60° (the session default `tilt_range_deg`, so each series is complete as soon
# as its mdoc reaches both ends) in 6° steps, dose-symmetric, 2.5 e⁻/Å² per tilt in 4 frames; 384-px tilts
# of 6 Å (a 230 nm field; real tilt movies have 1.5-2.7 Å pixels and 4k detectors, which take minutes per
# tilt here) over a 150 nm slab with vesicles and macromolecules. Coarser steps leave the built-in
# alignment too little overlap between neighbouring tilts.
TOMO_SIMULATION = {"n_series": 2, "image_size_px": 384, "pixel_size_a": 6.0, "phantom_binning": 2, "n_frames": 4,
                   "tilt_min_deg": -60.0, "tilt_max_deg": 60.0, "tilt_step_deg": 6.0, "n_vesicles": 6,
                   "n_particles": 40, "seed": 2}
TOMO_INTERVAL_S = 1.0  # between tilts
# tomograms at 12 Å voxels (192² × 125)
TOMO_SESSION = {"tomogram_binning": 2}


def _airflow_env(home: str = "airflow_home", recipes_dir: Path = REPO / "recipes" / "demo") -> dict[str, str]:
    home_dir = OUTPUT / home
    home_dir.mkdir(parents=True, exist_ok=True)
    return dags_test_env(home_dir, CRYOEM_DATA_ROOTS=str(OUTPUT), CRYOEM_RECIPES_DIR=str(recipes_dir))


def _airflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env, text=True,
                          capture_output=True)


def _prepare(session_dir: Path, env: dict[str, str]) -> bool:
    """An empty session folder and migrated Airflow metadata; False (with Airflow's output) if that fails."""
    if session_dir.exists():
        subprocess.run(["rm", "-rf", str(session_dir)], check=True)
    print("Preparing Airflow metadata (SQLite) ...", flush=True)
    migrated = _airflow(env, "db", "migrate")
    if migrated.returncode:
        print(migrated.stdout[-3000:], migrated.stderr[-3000:], file=sys.stderr)
        return False
    return True


class DemoDashboard:
    """An api-server for the session dashboard alone, over the demo's results file: its own AIRFLOW_HOME and
    SQLite metadata (the `airflow dags test` runs keep theirs), every visitor an admin (no login: it listens
    on 127.0.0.1 only). Started in the background so the session does not wait for it."""

    def __init__(self, results_sqlite: Path) -> None:
        home = OUTPUT / "dashboard_home"
        home.mkdir(parents=True, exist_ok=True)
        self.stack = AirflowStack(home, f"sqlite:///{home / 'airflow.db'}", extra_env={
            "CRYOEM_RESULTS_SQLITE": str(results_sqlite), "CRYOEM_DATA_ROOTS": str(OUTPUT),
            "CRYOEM_DASHBOARD_POLL_S": "3"})
        self.url = f"http://127.0.0.1:{self.stack.api_port}/cryoem/"
        self.problem: str | None = None
        self._thread = threading.Thread(target=self._start, daemon=True)
        self._thread.start()
        print(f"Session dashboard: {self.url} (starting; the Airflow UI's 'Cryo-EM sessions' entry at "
              f"http://127.0.0.1:{self.stack.api_port}/)", flush=True)

    def _start(self) -> None:
        try:
            self.stack.start(components=("api-server",))
            print(f"Session dashboard is up: {self.url}", flush=True)
        except Exception as exc:  # the demo goes on without it
            self.problem = f"{type(exc).__name__}: {exc}"
            print(f"The session dashboard did not start ({self.problem}); logs in {self.stack.logs_dir}",
                  file=sys.stderr, flush=True)

    def finish(self, keep: bool) -> None:
        """Stop the api-server, or with `keep` leave it serving until Ctrl-C."""
        self._thread.join()
        try:
            if keep and self.problem is None:
                print(f"\nSession dashboard still at {self.url} - Ctrl-C to stop it.", flush=True)
                while self.stack.processes["api-server"].poll() is None:
                    time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            self.stack.stop()


def _start_microscope(target: Callable[..., Any], *args: Any) -> threading.Thread:
    microscope = threading.Thread(target=target, args=args, daemon=True)
    microscope.start()
    return microscope


def _run_until_session_ends(env: dict[str, str], dag_id: str, conf: dict[str, Any], max_runs: int,
                            progress: Callable[[SessionSummary], str]) -> bool:
    """`airflow dags test` runs of `dag_id`, one after another, until the session has ended (at most
    `max_runs`); each prints its time and `progress`. False, with the end of Airflow's output, if one fails."""
    processing_dir = conf["processing_dir"]
    for batch in range(1, max_runs + 1):
        started = time.monotonic()
        run = _airflow(env, "dags", "test", dag_id, "--conf", json.dumps(conf))
        if run.returncode:
            print(run.stdout[-5000:], run.stderr[-5000:], file=sys.stderr)
            print(f"{dag_id} run {batch} failed", file=sys.stderr)
            return False
        summary = results_store(None, processing_dir).session_summary(conf["session_name"])
        print(f"run {batch}: {time.monotonic() - started:.1f} s, {progress(summary)}", flush=True)
        if summary.ended:
            break
    return True


def _where(session_name: str, raw_label: str, watch_dir: Path, processing_dir: Path, relion_label: str) -> None:
    print(f"\n{raw_label:<16} {watch_dir}")
    print(f"{relion_label:<16} {processing_dir / 'relion'}")
    print(f"Results (SQLite): {processing_dir / 'results.sqlite'}")
    print(f"Summary again:   cryoem summary {session_name} --db sqlite:///{processing_dir / 'results.sqlite'}")


SessionRun = Callable[[Path, Path, dict[str, str]], int]


def _run_demo(session_dir: Path, env: dict[str, str], session: SessionRun, dashboard: bool,
              keep_dashboard: bool) -> int:
    """A fresh session folder, the dashboard beside it (unless not wanted), then `session`'s run."""
    watch_dir, processing_dir = session_dir / "raw", session_dir / "processing"
    if not _prepare(session_dir, env):
        return 1
    board = DemoDashboard(processing_dir / "results.sqlite") if dashboard else None
    try:
        return session(watch_dir, processing_dir, env)
    finally:
        if board is not None:
            board.finish(keep_dashboard)


def main_spa(dashboard: bool = True, keep_dashboard: bool = False) -> int:
    return _run_demo(OUTPUT / "session", _airflow_env(), _spa_session, dashboard, keep_dashboard)


def _spa_session(watch_dir: Path, processing_dir: Path, env: dict[str, str]) -> int:
    settings = SpaSimulationSettings(n_movies=N_MOVIES, **SIMULATION)
    microscope = _start_microscope(run_live_session, settings, watch_dir, 3.0)
    print(f"Simulated microscope writing {N_MOVIES} movies into {watch_dir}, one every 3 s", flush=True)

    conf = {"session_name": "demo", "watch_dir": str(watch_dir), "processing_dir": str(processing_dir),
            "pixel_size_a": settings.pixel_size_a, "dose_per_frame_e_a2": settings.dose_per_frame_e_a2,
            "particle_diameter_a": settings.particle_diameter_a, "movie_glob": "*.tiff",
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME), "idle_timeout_s": 120,
            **SMALL_SESSION}
    if not _run_until_session_ends(env, "spa_live", conf, N_MOVIES + 1,
                                   lambda summary: f"{summary.files_claimed} movies taken so far"):
        return 1
    microscope.join()

    summary = results_store(None, str(processing_dir)).session_summary("demo")
    print("\nSession summary")
    print(format_summary(summary))
    _where("demo", "Movies:", watch_dir, processing_dir, "Relion project:")
    return 0


def _tomo_progress(summary: SessionSummary) -> str:
    tomo = summary.tomography
    return (f"{summary.files_claimed} tilts taken so far, {tomo.series_complete} series complete, "
            f"{tomo.series_reconstructed} reconstructed")


def print_tomography(session_name: str, processing_dir: Path) -> None:
    """Per tilt series: its tilts, why it is complete, its tomogram (path, size, voxel), the alignment (tilt
    axis, mean residual) and the images written beside the tomogram; then the Relion 5 jobs."""
    store = results_store(None, str(processing_dir))
    summary = store.session_summary(session_name)
    with store.engine.connect() as connection:
        tomograms = {row.tilt_series_id: row for row in connection.execute(
            select(schema.tomogram).order_by(schema.tomogram.c.processing_job_id)).all()}  # newest last
    for series in store.tilt_series_of_session(summary.session_id):
        used = [t for t in series.tilts if not t.excluded and not t.late]
        print(f"{series.name}: {len(used)} of {len(series.tilts)} tilts, {series.status}"
              + (f" ({series.completed_reason})" if series.completed_reason else ""))
        row = tomograms.get(series.tilt_series_id)
        if row is None:
            print("  no tomogram")
            continue
        residual = "-" if row.residual_error_mean_px is None else f"{row.residual_error_mean_px:.2f} px"
        print(f"  tomogram:  {row.volume_file}")
        print(f"             {row.size_x_px}×{row.size_y_px}×{row.size_z_px} voxels of {row.pixel_size_a:.1f} Å; "
              f"tilt axis {row.tilt_axis_deg:.1f}°, mean alignment residual {residual} (tilt-image pixels)")
        images = {"central XY slice": row.central_slice_image, "XZ projection": row.projection_xz_image,
                  "alignment plot": row.alignment_plot, "tilt movie": row.tilt_series_movie}
        print(f"  images:    {Path(row.central_slice_image).parent}/ "
              + ", ".join(f"{Path(path).name} ({what})" for what, path in images.items() if path))
    relion = processing_dir / "relion"
    jobs = sorted(relion.glob("*/job*"), key=lambda job: job.name)
    print("Relion 5 jobs: " + ", ".join(str(job.relative_to(relion)) for job in jobs))
    for star in sorted(relion.glob("Tomograms/job*/tomograms.star")):
        print(f"Tomograms:     {star}")


def main_tomo(dashboard: bool = True, keep_dashboard: bool = False) -> int:
    return _run_demo(OUTPUT / "tomo_session", _airflow_env("airflow_home_tomo", REPO / "recipes"), _tomo_session,
                     dashboard, keep_dashboard)


def _tomo_session(watch_dir: Path, processing_dir: Path, env: dict[str, str]) -> int:
    settings = TomoSimulationSettings(**TOMO_SIMULATION)
    n_tilts = settings.n_series * len(settings.tilt_angles_deg())
    microscope = _start_microscope(run_live_tomo_session, settings, watch_dir, TOMO_INTERVAL_S)
    print(f"Simulated microscope collecting {settings.n_series} tilt series of {len(settings.tilt_angles_deg())} "
          f"tilts into {watch_dir}, a tilt every {TOMO_INTERVAL_S:g} s", flush=True)

    conf = {"session_name": "tomo-demo", "watch_dir": str(watch_dir), "processing_dir": str(processing_dir),
            "pixel_size_a": settings.pixel_size_a, "dose_per_frame_e_a2": settings.dose_per_frame_e_a2,
            "tilt_axis_deg": settings.tilt_axis_deg, "thickness_nm": settings.thickness_nm,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME), "idle_timeout_s": 120, **TOMO_SESSION}
    if not _run_until_session_ends(env, "tomo_live", conf, n_tilts + 1, _tomo_progress):
        return 1
    microscope.join()

    summary = results_store(None, str(processing_dir)).session_summary("tomo-demo")
    print("\nSession summary")
    print(format_summary(summary))
    print("\nTilt series")
    print_tomography("tomo-demo", processing_dir)
    _where("tomo-demo", "Tilts + mdocs:", watch_dir, processing_dir, "Relion 5 project:")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_cryoem.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--tomo", action="store_true", help="a live tomography session through tomo_live instead")
    parser.add_argument("--keep-dashboard", action="store_true",
                        help="keep the session dashboard's api-server running after the session, until Ctrl-C")
    parser.add_argument("--no-dashboard", action="store_true", help="run without the session dashboard")
    args = parser.parse_args(argv)
    # A demo stopped by SIGTERM (`timeout`, a closed terminal) still stops the dashboard's api-server: the
    # `finally` blocks run on SystemExit, not on the default SIGTERM exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    run = main_tomo if args.tomo else main_spa
    return run(dashboard=not args.no_dashboard, keep_dashboard=args.keep_dashboard)


if __name__ == "__main__":
    sys.exit(main())
