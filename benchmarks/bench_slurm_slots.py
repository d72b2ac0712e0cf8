"""Worker slots held while a live session's per-movie jobs wait in the Slurm queue (the target is 0).

A copy of spa_live whose motion correction is Relion placed on the local Slurm cluster
(scripts/local_slurm.sh), under a real Airflow stack (LocalExecutor, PostgreSQL). `--movies` tiny movies land
at once and are cut into one mapped task per movie; the cluster's partition is set DOWN first, so every job
stays PENDING. Once every job is in the queue, the task instances are sampled for `--sample-s` seconds:
`running` ones hold a worker slot, `deferred` ones wait in the triggerer. Then the jobs are cancelled, the
partition set UP again, and the stack stopped. Not a test; prints a Markdown table.

Reproduce (root, Debian 12): .venv/bin/python -m benchmarks.bench_slurm_slots --movies 50
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from airflow_provider_cryoem.devtools.live_session import live_stack, session_conf, trigger
from airflow_provider_cryoem.devtools.local_airflow import POSTGRES_ADMIN_URL, REPO, wait_until
from airflow_provider_cryoem.devtools.local_postgres import postgres_server
from airflow_provider_cryoem.simulate import END_MARKER_NAME, SpaSimulationSettings, write_spa_session

DAG_ID = "slurm_burst"
PARTITION = "cryoem"  # scripts/local_slurm.sh's default partition


def _recipe(folder: Path, conn_id: str) -> Path:
    """Motion correction only, Relion on the cluster, one movie per mapped task."""
    folder.mkdir(parents=True)
    recipe = {"name": DAG_ID, "batching": {"max_movies_per_task": 1, "parallel_tasks": 256},
              "stages": {"motioncorr": {"tool": "relion", "params": {"patches_x": 1, "patches_y": 1},
                                        "runs_on": {"slurm_conn_id": conn_id, "cpus": 1, "time_limit_min": 10}}}}
    (folder / f"{DAG_ID}.yaml").write_text(yaml.safe_dump(recipe))
    return folder


def _scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True, timeout=30)


def _queued_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%j %T"], check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.startswith("cryoem-motioncorr-")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, default=50)
    parser.add_argument("--sample-s", type=float, default=10.0)
    args = parser.parse_args()

    subprocess.run(["bash", str(REPO / "scripts" / "local_slurm.sh")], check=True, capture_output=True, timeout=600)
    conn = json.loads(Path("/var/lib/cryoem-slurm/airflow_conn.json").read_text())
    root = Path(tempfile.mkdtemp(prefix="bench-slurm-slots-"))
    settings = SpaSimulationSettings(n_movies=args.movies, image_size_px=128, n_frames=2, particle_diameter_a=40,
                                     particles_per_micrograph=2, seed=5)
    watch_dir = root / "session" / "raw"
    write_spa_session(settings, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    samples: Counter[str] = Counter()
    n_samples = 0
    _scontrol("update", f"PartitionName={PARTITION}", "State=DOWN")
    try:
        with postgres_server(POSTGRES_ADMIN_URL) as admin_url, \
                live_stack(root, admin_url, DAG_ID, recipes_dir=_recipe(root / "recipes", "cryoem_slurm"),
                           settings={"AIRFLOW_CONN_CRYOEM_SLURM": json.dumps(conn)}) as (stack, _):
            trigger(stack, DAG_ID, session_conf(settings, "slots", watch_dir, root / "session" / "processing",
                                                idle_timeout_s=600))
            wait_until(lambda: len(_queued_jobs()) >= args.movies, 900, f"{args.movies} jobs in the Slurm queue",
                       interval_s=2.0, on_timeout=stack.diagnostics)
            started = time.monotonic()
            while time.monotonic() - started < args.sample_s:
                states = stack.query("SELECT state FROM task_instance WHERE dag_id = :d AND task_id = 'motioncorr'",
                                     d=DAG_ID)
                samples.update(row["state"] for row in states)
                n_samples += 1
                time.sleep(1.0)
            pending = sum(line.endswith("PENDING") for line in _queued_jobs())
            subprocess.run(["scancel", "--name=" + ",".join(line.split()[0] for line in _queued_jobs())],
                           check=False, capture_output=True)
    finally:
        _scontrol("update", f"PartitionName={PARTITION}", "State=UP")
    print(f"\n{args.movies} movies, one mapped motion-correction task each, Relion on Slurm, partition DOWN "
          f"({pending} jobs PENDING at the end of sampling); task instances over {n_samples} samples:\n")
    print("| state | mean task instances | worker slot held |")
    print("|---|---|---|")
    for state, count in sorted(samples.items()):
        print(f"| {state} | {count / n_samples:.1f} | {'yes' if state == 'running' else 'no'} |")
    print(f"\nReproduce: .venv/bin/python -m benchmarks.bench_slurm_slots --movies {args.movies}")


if __name__ == "__main__":
    main()
