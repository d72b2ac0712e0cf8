"""Worker slots held while a live session's per-movie or particle-batch jobs wait in the Slurm queue (target 0).

A copy of spa_live whose motion correction is Relion placed on the local Slurm cluster
(scripts/local_slurm.sh), under a real Airflow stack (LocalExecutor, PostgreSQL). `--movies` tiny movies land
at once and are cut into one mapped task per movie; the jobs go to a partition of the cluster's node kept
for the bench and always DOWN, so every job stays PENDING (other users of the cluster are not held up). Once
every job is in the queue, the task instances are sampled for `--sample-s` seconds: `running` ones hold a
worker slot, `deferred` ones wait in the triggerer. Then the jobs are cancelled and the stack stopped. Not a
test; prints a Markdown table.

`--stage class2d` measures a batch stage instead: the per-movie stages run on the worker (built-in engines),
the extracted particles fill batches of `--batch-particles`, and each batch's 2D classification (Relion, one
mapped task per batch) is placed on the cluster.

Reproduce (root, Debian 12): .venv/bin/python -m benchmarks.bench_slurm_slots --movies 50
                             .venv/bin/python -m benchmarks.bench_slurm_slots --stage class2d --movies 6
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from airflow_provider_cryoem.devtools.live_session import live_stack, session_conf, trigger
from airflow_provider_cryoem.devtools.local_airflow import POSTGRES_ADMIN_URL, REPO, wait_until
from airflow_provider_cryoem.devtools.local_postgres import postgres_server
from airflow_provider_cryoem.simulate import END_MARKER_NAME, SpaSimulationSettings, write_spa_session

DAG_ID = "slurm_burst"
# scripts/local_slurm.sh's partition kept DOWN (it survives slurmctld restarts): other users of the cluster,
# such as tests running meanwhile, are not held up.
PARTITION = "cryoem_bench"
# Task instance states of a mapped task that has submitted its job (deferred) or needs none (done, skipped).
SETTLED = {"deferred", "success", "skipped", "failed", "upstream_failed"}


def _recipe(folder: Path, conn_id: str, stage: str) -> Path:
    """`stage` with Relion on the cluster: motion correction alone, one movie per mapped task; or the per-movie
    stages here and 2D classification on the cluster, one particle batch per mapped task."""
    folder.mkdir(parents=True)
    on_slurm = {"slurm_conn_id": conn_id, "cpus": 1, "time_limit_min": 10}
    if stage == "motioncorr":
        stages: dict[str, Any] = {"motioncorr": {"tool": "relion", "params": {"patches_x": 1, "patches_y": 1},
                                                 "runs_on": on_slurm}}
    else:
        stages = {"motioncorr": {"params": {"patches_x": 1, "patches_y": 1}}, "ctf": {"after": ["motioncorr"]},
                  "pick": {"after": ["motioncorr"]}, "extract": {"after": ["pick", "ctf"]},
                  "select_particles": {"after": ["extract"]},
                  "class2d": {"tool": "relion", "after": ["select_particles"], "runs_on": on_slurm,
                              "params": {"iterations": 2, "min_particles_per_class": 5}}}
    recipe = {"name": DAG_ID, "batching": {"max_movies_per_task": 1, "parallel_tasks": 256}, "stages": stages}
    (folder / f"{DAG_ID}.yaml").write_text(yaml.safe_dump(recipe))
    return folder


def _queued_jobs(stage: str) -> list[str]:
    """The stage's jobs in the bench partition (none when slurmctld does not answer this time)."""
    out = subprocess.run(["squeue", "-h", "-p", PARTITION, "-o", "%j %T"], check=False, capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if line.startswith(f"cryoem-{stage}-")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, default=50)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--stage", choices=("motioncorr", "class2d"), default="motioncorr",
                        help="the stage placed on Slurm: per-movie motion correction, or 2D classification batches")
    parser.add_argument("--batch-particles", type=int, default=10, help="class2d: particles per 2D batch")
    args = parser.parse_args()

    subprocess.run(["bash", str(REPO / "scripts" / "local_slurm.sh")], check=True, capture_output=True, timeout=600)
    conn = json.loads(Path("/var/lib/cryoem-slurm/airflow_conn.json").read_text())
    conn["extra"]["slurm_partition"] = PARTITION
    subprocess.run(["scancel", "-p", PARTITION], check=False, capture_output=True)  # an interrupted run's jobs
    root = Path(tempfile.mkdtemp(prefix="bench-slurm-slots-"))
    settings = SpaSimulationSettings(n_movies=args.movies, image_size_px=128 if args.stage == "motioncorr" else 384,
                                     n_frames=2, particle_diameter_a=40 if args.stage == "motioncorr" else 80,
                                     particles_per_micrograph=2 if args.stage == "motioncorr" else 8, seed=5)
    batches = {"class2d_first_batch_size": args.batch_particles, "class2d_batch_size": args.batch_particles,
               "class2d_classes": 2} if args.stage == "class2d" else {}
    watch_dir = root / "session" / "raw"
    write_spa_session(settings, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    samples: Counter[str] = Counter()
    n_samples = 0
    with postgres_server(POSTGRES_ADMIN_URL) as admin_url, \
            live_stack(root, admin_url, DAG_ID, recipes_dir=_recipe(root / "recipes", "cryoem_slurm", args.stage),
                       settings={"AIRFLOW_CONN_CRYOEM_SLURM": json.dumps(conn)}) as (stack, _):
        trigger(stack, DAG_ID, session_conf(settings, "slots", watch_dir, root / "session" / "processing",
                                            idle_timeout_s=600, **batches))

        def task_states() -> list[str]:
            return [row["state"] for row in stack.query(
                "SELECT state FROM task_instance WHERE dag_id = :d AND task_id = :t AND map_index >= 0",
                d=DAG_ID, t=args.stage)]

        if args.stage == "motioncorr":
            wait_until(lambda: len(_queued_jobs(args.stage)) >= args.movies, 900,
                       f"{args.movies} jobs in the Slurm queue", interval_s=2.0, on_timeout=stack.diagnostics)
        else:  # as many batches as the picker found particles for; a batch too small for 2 classes is skipped
            wait_until(lambda: _queued_jobs(args.stage) and set(task_states()) <= SETTLED, 900,
                       "every 2D batch's job in the Slurm queue", interval_s=2.0, on_timeout=stack.diagnostics)
        started = time.monotonic()
        while time.monotonic() - started < args.sample_s:
            samples.update(task_states())
            n_samples += 1
            time.sleep(1.0)
        queued = _queued_jobs(args.stage)
        pending = sum(line.endswith("PENDING") for line in queued)
        subprocess.run(["scancel", "-p", PARTITION], check=False, capture_output=True)  # scancel --name takes one
    what = ("one mapped motion-correction task each" if args.stage == "motioncorr" else
             f"2D classification of {args.batch_particles}-particle batches, one mapped task per batch")
    print(f"\n{args.movies} movies, {what}, Relion on Slurm, partition DOWN "
          f"({pending} jobs PENDING at the end of sampling); task instances over {n_samples} samples:\n")
    print("| state | mean task instances | worker slot held |")
    print("|---|---|---|")
    for state, count in sorted(samples.items()):
        print(f"| {state} | {count / n_samples:.1f} | {'yes' if state == 'running' else 'no'} |")
    stage = "" if args.stage == "motioncorr" else f" --stage {args.stage} --batch-particles {args.batch_particles}"
    print(f"\nReproduce: .venv/bin/python -m benchmarks.bench_slurm_slots --movies {args.movies}{stage}")


if __name__ == "__main__":
    main()
