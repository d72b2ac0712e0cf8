"""Soak: three live sessions and a reprocessing run at once on a Celery deployment, with faults injected at
random times, for as long as the microscopes stream; then the books are checked. Not a test (it runs for many
minutes); prints a Markdown report for RELIABILITY.md and exits non-zero when a movie was lost or doubled.

The deployment is devtools/faults.py's: scheduler, triggerer, dag-processor, api-server, a `session` Celery worker
and a `compute` worker, a private Redis broker (append-only file) and a private results PostgreSQL. Three
simulated microscopes write small movies (`--size-px`, `--frames`) every `--interval-s` into three folders whose
movies have the same names; a fourth, finished folder is reprocessed by spa_reprocess meanwhile. The recipes
run their per-movie stages (`STAGES`): the particle-batch stages (Relion 2D/3D at the session's end) would add
many minutes of CPU on a small machine and are covered by their own tests. Every
`--fault-every-s` on average (uniformly 0.5-1.5x), one fault drawn at random: a worker SIGKILLed and restarted,
the broker restarted, the results PostgreSQL restarted, the scheduler and triggerer SIGKILLed and restarted.

Judged at the end, per session: every movie claimed once (live), one motion-correction and one CTF row per
movie, each once in its Relion project's corrected_micrographs.star; landing -> motion-correction start latency
p50/p95/p99; per fault, the time until the first motion correction started after it had finished.

Reproduce:  make soak   (= .venv/bin/python benchmarks/soak_live.py; PostgreSQL at CRYOEM_TEST_PG_ADMIN_URL or a
private one). Loopback only; stops by itself after the session ends or `--deadline-s`.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import starfile
from sqlalchemy import text

from airflow_provider_cryoem.devtools.faults import (
    Fault,
    FaultyDeployment,
    faulty_celery_deployment,
    recovery_s,
)
from airflow_provider_cryoem.devtools.live_session import (
    Microscope,
    copy_recipes,
    landed_s,
    percentile,
    session_conf,
    stage_runs,
    start_session,
    trigger,
    wait_for_session_end,
)
from airflow_provider_cryoem.devtools.local_airflow import (
    POSTGRES_ADMIN_URL,
    AirflowStackError,
    CeleryWorker,
    wait_until,
)
from airflow_provider_cryoem.devtools.local_postgres import postgres_server
from airflow_provider_cryoem.simulate import SpaSimulationSettings, prepare_session_folder, write_spa_session

LIVE, REPROCESS = "spa_live", "spa_reprocess"
LIVE_SESSIONS = ("scope_a", "scope_b", "scope_c")
STAGES = ("motioncorr", "ctf", "pick", "extract")
REPROCESSED = "finished_grid"
WORKERS = {"session_worker": CeleryWorker(("session",), concurrency=2),
           "compute_worker": CeleryWorker(("compute",), concurrency=4)}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movies-per-session", type=int, default=150)
    parser.add_argument("--reprocess-movies", type=int, default=100)
    parser.add_argument("--interval-s", type=float, default=2.4, help="between movies of one microscope")
    parser.add_argument("--size-px", type=int, default=256)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--fault-every-s", type=float, default=60.0)
    parser.add_argument("--parallelism", type=int, default=12, help="executor slots")
    parser.add_argument("--seed", type=int, default=1, help="of the fault schedule and the simulated movies")
    parser.add_argument("--deadline-s", type=float, default=2400.0, help="give up (and report) after this long")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    return parser.parse_args()


def _inject_at_random(deployment: FaultyDeployment, every_s: float, rng: random.Random, stop: threading.Event,
                      injected: list[Fault]) -> None:
    """Until `stop`: wait 0.5-1.5 x `every_s`, then inject one fault drawn at random."""
    names = sorted(deployment.faults())
    while not stop.wait(rng.uniform(0.5, 1.5) * every_s):
        name = rng.choice(names)
        print(f"{time.strftime('%H:%M:%S')} injecting: {name}", flush=True)
        injected.append(deployment.inject(name))


def _books(results: Any) -> dict[str, dict[str, list[str]]]:
    """Per session name: the movie file names of its claims, motion-correction rows and CTF rows."""
    queries = {
        "claims": "SELECT s.name, f.relative_path FROM session_file f JOIN session s ON s.session_id = f.session_id",
        "motion": "SELECT s.name, m.movie_full_path FROM motion_correction mc JOIN movie m ON m.movie_id = mc.movie_id "
                  "JOIN session s ON s.session_id = m.session_id",
        "ctf": "SELECT s.name, m.movie_full_path FROM ctf c JOIN movie m ON m.movie_id = c.movie_id "
               "JOIN session s ON s.session_id = m.session_id",
    }
    books: dict[str, dict[str, list[str]]] = {}
    with results.connect() as connection:
        for kind, sql in queries.items():
            for session, path in connection.execute(text(sql)):
                books.setdefault(session, {}).setdefault(kind, []).append(Path(path).name)
    return books


def _star_movies(project: Path) -> list[str]:
    star = next(project.glob("MotionCorr/job*/corrected_micrographs.star"), None)
    if star is None:
        return []
    return [Path(name).stem for name in starfile.read(star, always_dict=True)["micrographs"]["rlnMicrographName"]]


def _check(expected: list[str], found: list[str]) -> dict[str, int]:
    """Movies lost (expected, not found), doubled (found more than once) and foreign (found, not expected)."""
    counts = Counter(found)
    return {"lost": len(set(expected) - set(counts)), "doubled": sum(n - 1 for n in counts.values() if n > 1),
            "foreign": len(set(counts) - set(expected))}


def main() -> int:
    args = _arguments()
    rng = random.Random(args.seed)
    base = SpaSimulationSettings(n_movies=args.movies_per_session, image_size_px=args.size_px, n_frames=args.frames,
                                 particle_diameter_a=90, particles_per_micrograph=5)
    root = Path(tempfile.mkdtemp(prefix="cryoem-soak-"))
    started = time.monotonic()
    report: dict[str, Any] = {"arguments": {k: str(v) for k, v in vars(args).items()}}
    try:
        recipes = copy_recipes(root / "recipes", (LIVE, REPROCESS), session_queue="session", stage_queue="compute",
                               only_stages=STAGES)
        with postgres_server(POSTGRES_ADMIN_URL) as admin_url, \
                faulty_celery_deployment(root, admin_url, (LIVE, REPROCESS), recipes, WORKERS,
                                         args.parallelism) as deployment:
            stack, results = deployment.stack, deployment.results
            folders = {name: (root / name / "raw", root / name / "processing")
                       for name in (*LIVE_SESSIONS, REPROCESSED)}
            settings = {name: base.model_copy(update={"seed": args.seed * 100 + i})
                        for i, name in enumerate(LIVE_SESSIONS)}
            done = base.model_copy(update={"seed": args.seed * 100 + 99, "n_movies": args.reprocess_movies})
            truths = {REPROCESSED: write_spa_session(done, folders[REPROCESSED][0])}
            microscopes = {}
            for name in LIVE_SESSIONS:
                prepare_session_folder(settings[name], folders[name][0])
                start_session(stack, LIVE, session_conf(settings[name], name, *folders[name], idle_timeout_s=120),
                              timeout_s=180)
                microscopes[name] = Microscope(settings[name], folders[name][0], args.interval_s)
            for microscope in microscopes.values():
                microscope.start()
            reprocess_run = trigger(stack, REPROCESS, session_conf(done, REPROCESSED, *folders[REPROCESSED],
                                                                   idle_timeout_s=120))
            stop, injected = threading.Event(), []
            injector = threading.Thread(target=_inject_at_random,
                                        args=(deployment, args.fault_every_s, rng, stop, injected), daemon=True)
            injector.start()
            stream_s = args.movies_per_session * args.interval_s
            try:
                for name, microscope in microscopes.items():
                    truths[name] = microscope.finish(stream_s + 600)
            finally:
                stop.set()
                injector.join()
            try:
                for name in LIVE_SESSIONS:
                    wait_for_session_end(stack, results, name, LIVE,
                                         max(60.0, args.deadline_s - (time.monotonic() - started)))
                wait_until(lambda: stack.query("SELECT 1 FROM dag_run WHERE run_id = :r AND state IN "
                                               "('success', 'failed')", r=reprocess_run),
                           max(60.0, args.deadline_s - (time.monotonic() - started)),
                           "the reprocessing run to finish", interval_s=2.0)
            except AirflowStackError as exc:  # past the deadline: report what was done by then
                report["timed_out"] = str(exc).splitlines()[0]
            report |= _figures(deployment, folders, truths, injected, reprocess_run)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["wall_s"] = round(time.monotonic() - started)
    _print(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    books_ok = all(not (s["lost"] or s["doubled"] or s["foreign"]) for s in report["sessions"].values())
    return 0 if books_ok and "timed_out" not in report else 1


def _figures(deployment: FaultyDeployment, folders: dict[str, tuple[Path, Path]], truths: dict[str, Any],
             injected: list[Fault], reprocess_run: str) -> dict[str, Any]:
    stack, results = deployment.stack, deployment.results
    books = _books(results)
    with results.connect() as connection:
        ids = dict(connection.execute(text("SELECT name, session_id FROM session")).all())
    runs = stage_runs(stack, LIVE, "motioncorr") + stage_runs(stack, REPROCESS, "motioncorr")
    sessions = {}
    for name, truth in truths.items():
        expected = [m.movie_name for m in truth.movies]
        mine = books.get(name, {})
        processing = folders[name][1]
        project = next(processing.glob("reprocess_*"), None) if name == REPROCESSED else processing / "relion"
        checks = [_check(expected, mine.get("motion", [])), _check(expected, mine.get("ctf", [])),
                  _check([Path(m).stem for m in expected], _star_movies(project) if project else [])]
        if name != REPROCESSED:
            checks.append(_check(expected, mine.get("claims", [])))
        figures = {key: sum(check[key] for check in checks) for key in ("lost", "doubled", "foreign")}
        figures["movies"] = len(expected)
        if name != REPROCESSED:
            landed = landed_s(folders[name][0], truth)
            starts = {r.movie: r.start_s for r in runs if r.status == "ok" and r.session_id == ids.get(name)}
            latencies = [starts[m] - t for m, t in landed.items() if m in starts]
            figures |= {f"p{q}_s": round(percentile(latencies, q), 1) for q in (50, 95, 99)}
        sessions[name] = figures
    ok = sorted((r.start_s, r.end_s) for r in runs if r.status == "ok")
    faults = []
    for fault in injected:
        recovered_s = recovery_s(fault, ok)
        faults.append({"fault": fault.name, "out_s": round(fault.back_s - fault.start_s, 1),
                       "recovered_s": None if recovered_s is None else round(recovered_s, 1)})
    states = stack.query("SELECT dag_id, state, count(*) AS n FROM dag_run GROUP BY dag_id, state")
    retried = stack.query("SELECT count(*) AS n FROM task_instance WHERE try_number > 1")[0]["n"]
    return {"sessions": sessions, "faults": faults, "dag_runs": states, "task_instances_retried": retried,
            "reprocess_run": reprocess_run}


def _print(report: dict[str, Any]) -> None:
    print(f"\nsoak: {report.get('wall_s')} s wall; arguments {report['arguments']}")
    if "timed_out" in report:
        print(f"NOT FINISHED by the deadline: {report['timed_out']}")
    print("\n| session | movies | lost | doubled | foreign | latency p50 / p95 / p99 (s) |\n|---|---|---|---|---|---|")
    for name, s in report.get("sessions", {}).items():
        latency = f"{s['p50_s']} / {s['p95_s']} / {s['p99_s']}" if "p50_s" in s else "(reprocessed)"
        print(f"| {name} | {s['movies']} | {s['lost']} | {s['doubled']} | {s['foreign']} | {latency} |")
    print("\n| fault | out (s) | first new motion correction done after (s) |\n|---|---|---|")
    for fault in report.get("faults", []):
        print(f"| {fault['fault']} | {fault['out_s']} | {fault['recovered_s']} |")
    print(f"\nDAG runs: {report.get('dag_runs')}; task instances retried: {report.get('task_instances_retried')}")


if __name__ == "__main__":
    sys.exit(main())
