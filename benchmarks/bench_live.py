"""spa_live under a real local Airflow 3 stack (PostgreSQL metadata and results, LocalExecutor): latency,
orchestration overhead and throughput. Not a test; prints a Markdown table and the command to reproduce.

Scenarios, one stack, one session each (movies are simulated beforehand, then land in the watched folder
as the microscope would: movie, then its XML sidecar whose mtime is the landing time):
- paced:  `--movies` full-size movies (default 1024 px × 24 frames), one every `--interval-s`: latency
          landing → motion correction start → CTF result, and orchestration overhead per movie.
- burst:  the same movies all at once: sustained movies/hour with the built-in engines.
- tiny-burst / tiny-stream: 128 px × 2 frame movies (near-no-op compute) all at once, then at
          `--tiny-rate` movies/s, through a copy of spa_live with the batching of `--tiny-max-per-task`
          and `--tiny-parallel`: how many movies per second one scheduler keeps up with.

Reproduce: .venv/bin/python -m benchmarks.bench_live   (PostgreSQL on 127.0.0.1:5432, user postgres)
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from airflow_provider_cryoem.devtools.live_session import (
    landed_s,
    percentile,
    session_conf,
    stage_runs,
    trigger,
    wait_for_session_end,
)
from airflow_provider_cryoem.devtools.local_airflow import (
    REPO,
    AirflowStack,
    fresh_postgres_database,
    wait_until,
)
from airflow_provider_cryoem.recipes.stages import STAGES as RECIPE_STAGES
from airflow_provider_cryoem.simulate import (
    END_MARKER_NAME,
    GAIN_REFERENCE_NAME,
    SessionTruth,
    SpaSimulationSettings,
    write_spa_session,
)

STAGES = ("motioncorr", "ctf", "pick", "extract")
TINY = SpaSimulationSettings(image_size_px=128, n_frames=2, particle_diameter_a=40, particles_per_micrograph=2,
                             seed=3)


@dataclass
class Outcome:
    """What one scenario measured."""

    name: str
    movies: int
    runs: int
    span_s: float  # first landing → last stage task end
    to_motioncorr_s: list[float]
    to_ctf_s: list[float]
    overhead_per_movie_s: float  # stage task time not spent in the stage runner, per movie
    compute_per_movie_s: float


def land(staged: Path, watch_dir: Path, truth: SessionTruth, index: int) -> None:
    """Put one staged movie into the watched folder as a microscope does: the movie, then its sidecar."""
    movie = truth.movies[index]
    partial = watch_dir / f".{movie.movie_name}.part"
    shutil.copyfile(staged / movie.movie_name, partial)
    os.replace(partial, watch_dir / movie.movie_name)
    shutil.copyfile(staged / movie.metadata_name, watch_dir / movie.metadata_name)  # mtime = now = landed


def run_scenario(stack: AirflowStack, results_url: str, name: str, dag_id: str, staged: Path, truth: SessionTruth,
                 watch_dir: Path, interval_s: float) -> Outcome:
    """Start a session, land every staged movie `interval_s` apart, end it, and read back the timeline."""
    watch_dir.mkdir(parents=True)
    (watch_dir / GAIN_REFERENCE_NAME).parent.mkdir(parents=True)
    shutil.copyfile(staged / GAIN_REFERENCE_NAME, watch_dir / GAIN_REFERENCE_NAME)
    before = {r["run_id"] for r in stack.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=dag_id)}
    conf = session_conf(truth.settings, name, watch_dir, watch_dir.parent / f"{name}_processing", idle_timeout_s=300)
    trigger(stack, dag_id, conf)
    wait_until(lambda: stack.query("SELECT 1 FROM task_instance WHERE dag_id = :d AND task_id = 'wait_for_movies' "
                                   "AND state = 'deferred'", d=dag_id), 120, f"{name}: the first wait")
    for index in range(len(truth.movies)):
        time.sleep(interval_s if index else 0.0)
        land(staged, watch_dir, truth, index)
    (watch_dir / END_MARKER_NAME).write_text("")
    results = create_engine(results_url)
    wait_for_session_end(stack, results, name, dag_id, timeout_s=900)
    results.dispose()
    runs = {r["run_id"] for r in stack.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=dag_id)} - before
    by_stage = {stage: [r for r in stage_runs(stack, dag_id, stage) if r.run_id in runs] for stage in STAGES}
    landed = landed_s(watch_dir, truth)
    motion_start = {r.movie: r.start_s for r in by_stage["motioncorr"]}
    ctf_end = {r.movie: r.end_s for r in by_stage["ctf"]}
    task_s, compute_s = 0.0, 0.0
    for stage_list in by_stage.values():
        per_task: dict[tuple[str, int], list] = {}
        for r in stage_list:
            per_task.setdefault((r.run_id, r.map_index), []).append(r)
        for members in per_task.values():
            task_s += members[0].end_s - members[0].start_s
            compute_s += sum(m.compute_s or 0.0 for m in members)
    n = len(truth.movies)
    last_end = max(r.end_s for stage_list in by_stage.values() for r in stage_list)
    return Outcome(name, n, len(runs), last_end - min(landed.values()),
                   [motion_start[m] - t for m, t in landed.items() if m in motion_start],
                   [ctf_end[m] - t for m, t in landed.items() if m in ctf_end],
                   (task_s - compute_s) / n, compute_s / n)


STAGE_SCOPES = {name: definition.scope for name, definition in RECIPE_STAGES.items()}


def tiny_recipe(recipes_dir: Path, max_per_task: int, parallel: int) -> str:
    """spa_live's per-movie stages under their own name with the benchmark's batching; returns its DAG id.

    The particle-batch stages are left out: the tiny scenarios measure how many movies the scheduler moves.
    """
    recipe = yaml.safe_load((REPO / "recipes" / "spa_live.yaml").read_text())
    recipe["name"] = "spa_live_tiny"
    recipe["stages"] = {name: spec for name, spec in recipe["stages"].items() if STAGE_SCOPES[name] == "movie"}
    recipe["batching"].update(max_movies_per_task=max_per_task, parallel_tasks=parallel)
    (recipes_dir / "spa_live_tiny.yaml").write_text(yaml.safe_dump(recipe))
    return recipe["name"]


def table(outcomes: list[Outcome]) -> str:
    def stats(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} / {percentile(values, 90):.1f} / {max(values):.1f}" if values else "-"

    lines = ["| scenario | movies | runs | landing → motioncorr start (s, median / p90 / max) | landing → CTF result "
             "(s, median / p90 / max) | stage compute per movie (s) | orchestration overhead per movie (s) | "
             "throughput |", "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        rate = o.movies / o.span_s
        throughput = f"{rate * 3600:.0f} movies/h" if o.compute_per_movie_s > 1 else f"{rate:.2f} movies/s"
        lines.append(f"| {o.name} | {o.movies} | {o.runs} | {stats(o.to_motioncorr_s)} | {stats(o.to_ctf_s)} | "
                     f"{o.compute_per_movie_s:.2f} | {o.overhead_per_movie_s:.2f} | {throughput} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, default=6, help="full-size movies per full-size scenario")
    parser.add_argument("--image-size-px", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--interval-s", type=float, default=20.0, help="time between movies, paced scenario")
    parser.add_argument("--tiny-movies", type=int, default=100)
    parser.add_argument("--tiny-rate", type=float, default=2.0, help="movies/s of the tiny stream")
    parser.add_argument("--tiny-max-per-task", type=int, default=8)
    parser.add_argument("--tiny-parallel", type=int, default=4)
    parser.add_argument("--parallelism", type=int, default=4, help="[core] parallelism (executor slots)")
    parser.add_argument("--skip-full", action="store_true", help="only the tiny-movie scenarios")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-live-"))
    full = SpaSimulationSettings(n_movies=args.movies, image_size_px=args.image_size_px, n_frames=args.frames, seed=5)
    tiny = TINY.model_copy(update={"n_movies": args.tiny_movies})
    print(f"simulating movies under {root} ...", file=sys.stderr, flush=True)
    staged_full = None if args.skip_full else write_spa_session(full, root / "staged_full")
    staged_tiny = write_spa_session(tiny, root / "staged_tiny")
    recipes_dir = root / "recipes"
    recipes_dir.mkdir()
    shutil.copyfile(REPO / "recipes" / "spa_live.yaml", recipes_dir / "spa_live.yaml")
    tiny_dag = tiny_recipe(recipes_dir, args.tiny_max_per_task, args.tiny_parallel)
    outcomes: list[Outcome] = []
    started = time.monotonic()
    with fresh_postgres_database("bench_meta") as metadata_url, fresh_postgres_database("bench_results") as results_url:
        results_conn = make_url(results_url).set(drivername="postgres").render_as_string(hide_password=False)
        env = {"CRYOEM_RESULTS_CONN_ID": "cryoem_results", "CRYOEM_RECIPES_DIR": str(recipes_dir),
               "AIRFLOW_CONN_CRYOEM_RESULTS": results_conn,
               "CRYOEM_DATA_ROOTS": str(root)}
        with AirflowStack(root / "airflow_home", metadata_url, extra_env=env, parallelism=args.parallelism,
                          min_file_process_interval_s=60) as stack:
            try:
                for dag_id in ("spa_live", tiny_dag):
                    stack.unpause(dag_id)
                    stack.wait_for_dag(dag_id)
                plan = [("tiny-burst", tiny_dag, root / "staged_tiny", staged_tiny, 0.0),
                        ("tiny-stream", tiny_dag, root / "staged_tiny", staged_tiny, 1.0 / args.tiny_rate)]
                if staged_full is not None:
                    plan = [("paced", "spa_live", root / "staged_full", staged_full, args.interval_s),
                            ("burst", "spa_live", root / "staged_full", staged_full, 0.0)] + plan
                for name, dag_id, folder, truth, interval_s in plan:
                    print(f"scenario {name} ...", file=sys.stderr, flush=True)
                    outcomes.append(run_scenario(stack, results_url, name.replace("-", "_"), dag_id, folder, truth,
                                                 root / name / "raw", interval_s))
            except BaseException:
                print(stack.diagnostics(), file=sys.stderr)
                raise
    print(table(outcomes))
    print(f"\nfull-size movies: {full.image_size_px} px × {full.n_frames} frames, paced one every {args.interval_s:g} s; "
          f"tiny: 128 px × 2 frames, stream at {args.tiny_rate:g}/s, batching max {args.tiny_max_per_task} per task × "
          f"{args.tiny_parallel}; parallelism {args.parallelism}; {os.cpu_count()} cores; "
          f"total {time.monotonic() - started:.0f} s")
    print(f"reproduce: .venv/bin/python -m benchmarks.bench_live {' '.join(argv if argv is not None else sys.argv[1:])}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
