"""`make demo`: a simulated live SPA session processed by `spa_live` on the embedded defaults.

The microscope is the simulator writing movies into a watched folder in the background; Airflow runs
each batch of the session with `airflow dags test` (SQLite metadata, built-in engines, SQLite results),
one run after another until the session ends by itself on its end marker, as the scheduler would chain
them. The recipe is recipes/demo/spa_live.yaml: the live recipe with small 2D/3D settings, so that on a
laptop the session ends, minutes later, with 2D classes, a de-novo initial model, a 3D classification, a
refined and post-processed map and a B-factor. Prints the session summary and where everything is.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .cli_commands.summary import format_summary
from .devtools.dags_test import dags_test_env
from .pipeline.stores import results_store
from .simulate import GAIN_REFERENCE_NAME, SpaSimulationSettings
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


def _airflow_env() -> dict[str, str]:
    home = OUTPUT / "airflow_home"
    home.mkdir(parents=True, exist_ok=True)
    return dags_test_env(home, CRYOEM_DATA_ROOTS=str(OUTPUT), CRYOEM_RECIPES_DIR=str(REPO / "recipes" / "demo"))


def _airflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env, text=True,
                          capture_output=True)


def main() -> int:
    session_dir = OUTPUT / "session"
    watch_dir, processing_dir = session_dir / "raw", session_dir / "processing"
    if session_dir.exists():
        subprocess.run(["rm", "-rf", str(session_dir)], check=True)
    env = _airflow_env()
    print("Preparing Airflow metadata (SQLite) ...", flush=True)
    migrated = _airflow(env, "db", "migrate")
    if migrated.returncode:
        print(migrated.stdout[-3000:], migrated.stderr[-3000:], file=sys.stderr)
        return 1

    settings = SpaSimulationSettings(n_movies=N_MOVIES, **SIMULATION)
    microscope = threading.Thread(target=run_live_session, args=(settings, watch_dir, 3.0), daemon=True)
    microscope.start()
    print(f"Simulated microscope writing {N_MOVIES} movies into {watch_dir}, one every 3 s", flush=True)

    conf = {"session_name": "demo", "watch_dir": str(watch_dir), "processing_dir": str(processing_dir),
            "pixel_size_a": settings.pixel_size_a, "dose_per_frame_e_a2": settings.dose_per_frame_e_a2,
            "particle_diameter_a": settings.particle_diameter_a, "movie_glob": "*.tiff",
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME), "idle_timeout_s": 120,
            **SMALL_SESSION}
    for batch in range(1, N_MOVIES + 2):
        started = time.monotonic()
        run = _airflow(env, "dags", "test", "spa_live", "--conf", json.dumps(conf))
        if run.returncode:
            print(run.stdout[-5000:], run.stderr[-5000:], file=sys.stderr)
            print(f"spa_live run {batch} failed", file=sys.stderr)
            return 1
        store = results_store(None, str(processing_dir))
        summary = store.session_summary("demo")
        print(f"run {batch}: {time.monotonic() - started:.1f} s, {summary.files_claimed} movies taken so far",
              flush=True)
        if summary.ended:
            break
    microscope.join()

    summary = results_store(None, str(processing_dir)).session_summary("demo")
    print("\nSession summary")
    print(format_summary(summary))
    print(f"\nMovies:          {watch_dir}")
    print(f"Relion project:  {processing_dir / 'relion'}")
    print(f"Results (SQLite): {processing_dir / 'results.sqlite'}")
    print(f"Summary again:   cryoem summary demo --db sqlite:///{processing_dir / 'results.sqlite'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
