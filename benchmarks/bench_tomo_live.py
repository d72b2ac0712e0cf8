"""tomo_live under a real local Airflow 3 stack (PostgreSQL metadata and results, LocalExecutor): how long
after the last tilt of a series lands its tomogram is written. Not a test; prints figures, asserts no time.

The session is simulated beforehand (write_tomo_session), then replayed into the watched folder as SerialEM
writes it (run_live_tomo_session's way, without simulating on the fly, so the 2 cores are left to the
pipeline): one tilt every `--tilt-interval-s`, each movie growing in 4 pieces under its final name, then the
series' mdoc rewritten with that tilt's section; `--series-gap-s` between series (the stage moving to the
next position). After the last tilt the benchmark waits for every series' tomogram, then writes
END_OF_SESSION (so every series completes by its own mdoc, none by the session's end).

Per series: last tilt landed (its movie's mtime, the last byte) → its CTF done (ctf task end) → the CTF of
every tilt of the series done (runs overlap, so an earlier tilt can finish after the last one) → series
complete (tilt_series.completed_at in the results database) → tomogram written (the MRC's mtime) → tomogram
task done (its row, images and Relion files recorded; task_instance end). Per tilt: landing → CTF done.

Why not `airflow dags test`: a live tomo_live run takes the tilts that have landed and starts the next run
(TriggerDagRunOperator); `dags test` executes one run and nothing picks up the next, so a live session needs
the scheduler. tests/test_tomo_live_dag.py runs `dags test` on a finished session instead.

Reproduce: .venv/bin/python -m benchmarks.bench_tomo_live [--series 2] [--image-size-px 1024] [--staged DIR]
           (PostgreSQL on 127.0.0.1:5432, user postgres)
Every Airflow component imports the code and the DAG file afresh while the session runs, so run it from a
tree nobody edits meanwhile (e.g. `git archive HEAD | tar -x -C SNAP`, then from SNAP with PYTHONPATH=SNAP):
a DAG file that fails to import for a moment leaves the tasks started then stuck in up_for_reschedule.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from airflow_provider_cryoem.devtools.live_session import percentile, stage_runs, trigger, wait_for_session_end
from airflow_provider_cryoem.devtools.local_airflow import REPO, AirflowStack, fresh_postgres_database, wait_until
from airflow_provider_cryoem.simulate import (
    END_MARKER_NAME,
    GAIN_REFERENCE_NAME,
    GROUND_TRUTH_NAME,
    TomoSimulationSettings,
    write_tomo_session,
)
from airflow_provider_cryoem.simulate.files import write_atomically
from airflow_provider_cryoem.simulate.tomo_files import mdoc_text
from airflow_provider_cryoem.simulate.tomo_truth import TomoSessionTruth

DAG_ID = "tomo_live"


class Microscope(threading.Thread):
    """Replays a staged session into the watched folder, tilt by tilt; records when each movie landed."""

    def __init__(self, staged: Path, watch_dir: Path, truth: TomoSessionTruth, tilt_interval_s: float,
                 series_gap_s: float, chunk_delay_s: float = 0.05, n_chunks: int = 4) -> None:
        super().__init__(daemon=True, name="microscope")
        self.staged, self.watch_dir, self.truth = staged, watch_dir, truth
        self.tilt_interval_s, self.series_gap_s = tilt_interval_s, series_gap_s
        self.chunk_delay_s, self.n_chunks = chunk_delay_s, n_chunks
        self.landed: dict[str, float] = {}  # movie name → when its last byte was written (time.time())
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            next_start = time.monotonic()
            for index, series in enumerate(self.truth.series):
                if index:
                    next_start += self.series_gap_s
                for k, tilt in enumerate(series.tilts):
                    time.sleep(max(0.0, next_start - time.monotonic()))
                    next_start = time.monotonic() + self.tilt_interval_s
                    content = np.frombuffer((self.staged / tilt.movie_name).read_bytes(), dtype=np.uint8)
                    target = self.watch_dir / tilt.movie_name
                    with open(target, "wb") as handle:
                        for piece in np.array_split(content, self.n_chunks):
                            handle.write(piece.tobytes())
                            handle.flush()
                            time.sleep(self.chunk_delay_s)
                    self.landed[tilt.movie_name] = target.stat().st_mtime
                    write_atomically(self.watch_dir / series.mdoc_name,
                                     mdoc_text(self.truth.settings, series, series.tilts[:k + 1]).encode())
        except BaseException as exc:  # reported by the main thread
            self.error = exc


@dataclass
class SeriesTimes:
    name: str
    tilts: int
    last_landed: float
    last_ctf_done: float | None
    all_ctf_done: float | None  # the series' last tilt to finish CTF, whichever landed last
    completed: float | None
    completed_reason: str
    tomogram_written: float | None
    tomogram_task_start: float | None
    tomogram_task_end: float | None
    tomogram_shape: str


def series_times(stack: AirflowStack, results_url: str, truth: TomoSessionTruth, landed: dict[str, float],
                 ctf_done: dict[str, float]) -> list[SeriesTimes]:
    results = create_engine(results_url)
    with results.connect() as connection:
        rows = {r["name"]: dict(r) for r in connection.execute(text(
            "SELECT ts.name, ts.completed_at, ts.completed_reason, t.volume_file, t.size_x_px, t.size_y_px, "
            "t.size_z_px FROM tilt_series ts LEFT JOIN tomogram t ON t.tilt_series_id = ts.tilt_series_id"
        )).mappings()}
    results.dispose()
    tasks = {r["rendered_map_index"]: r for r in stack.query(
        "SELECT rendered_map_index, start_date, end_date FROM task_instance WHERE dag_id = :d AND "
        "task_id = 'tomogram' AND state = 'success'", d=DAG_ID)}
    found = []
    for series in truth.series:
        last = series.tilts[-1].movie_name
        row = rows.get(series.name, {})
        task = tasks.get(series.name)
        volume = Path(row["volume_file"]) if row.get("volume_file") else None
        found.append(SeriesTimes(
            series.name, len(series.tilts), landed[last], ctf_done.get(last),
            max(ctf_done[t.movie_name] for t in series.tilts) if all(t.movie_name in ctf_done for t in series.tilts)
            else None,
            row["completed_at"].timestamp() if row.get("completed_at") else None, row.get("completed_reason") or "-",
            volume.stat().st_mtime if volume is not None and volume.exists() else None,
            task["start_date"].timestamp() if task else None, task["end_date"].timestamp() if task else None,
            f"{row['size_x_px']}×{row['size_y_px']}×{row['size_z_px']}" if row.get("size_x_px") else "-"))
    return found


def tomograms_recorded(results_url: str, n_series: int) -> bool:
    results = create_engine(results_url)
    try:
        with results.connect() as connection:
            return connection.execute(text("SELECT count(*) FROM tomogram")).scalar_one() >= n_series
    except Exception:  # the schema may not exist before the first run opened the session
        return False
    finally:
        results.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--image-size-px", type=int, default=1024)
    parser.add_argument("--pixel-size-a", type=float, default=6.0,
                        help="6 Å/px at 1024 px: the field of view of a 4096 px, 1.5 Å/px series binned by 4")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--tilt-step-deg", type=float, default=3.0, help="±60° in 3° steps = 41 tilts")
    parser.add_argument("--tilt-interval-s", type=float, default=6.0)
    parser.add_argument("--series-gap-s", type=float, default=20.0)
    parser.add_argument("--tomogram-binning", type=int, default=2)
    parser.add_argument("--parallelism", type=int, default=4, help="[core] parallelism (executor slots)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the session folder (printed) afterwards")
    parser.add_argument("--staged", type=Path, help="simulate the session into this folder, or reuse the one "
                        "simulated there before (its ground_truth.json; the size options are then ignored)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="bench-tomo-live-"))
    settings = TomoSimulationSettings(n_series=args.series, image_size_px=args.image_size_px,
                                      pixel_size_a=args.pixel_size_a, n_frames=args.frames,
                                      tilt_step_deg=args.tilt_step_deg, n_vesicles=4, n_particles=20, seed=args.seed)
    staged = args.staged or root / "staged"
    if (staged / GROUND_TRUTH_NAME).is_file():
        truth = TomoSessionTruth.read(staged / GROUND_TRUTH_NAME)
        settings = truth.settings
        print(f"reusing the session simulated in {staged}", file=sys.stderr, flush=True)
    else:
        print(f"simulating {args.series} series into {staged} ...", file=sys.stderr, flush=True)
        truth = write_tomo_session(settings, staged)
    simulated_s = time.monotonic() - started
    watch_dir = root / "visit" / "raw"
    (watch_dir / GAIN_REFERENCE_NAME).parent.mkdir(parents=True)
    shutil.copyfile(staged / GAIN_REFERENCE_NAME, watch_dir / GAIN_REFERENCE_NAME)
    recipes_dir = root / "recipes"
    recipes_dir.mkdir()
    shutil.copyfile(REPO / "recipes" / "tomo_live.yaml", recipes_dir / "tomo_live.yaml")
    conf = {"session_name": "tomobench", "watch_dir": str(watch_dir),
            "processing_dir": str(root / "visit" / "processing"), "pixel_size_a": settings.pixel_size_a,
            "dose_per_frame_e_a2": settings.dose_per_frame_e_a2,
            "voltage_kv": settings.voltage_kv, "cs_mm": settings.cs_mm, "tilt_axis_deg": settings.tilt_axis_deg,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME), "thickness_nm": settings.thickness_nm,
            "tilt_range_deg": settings.tilt_max_deg, "tomogram_binning": args.tomogram_binning,
            "movie_glob": "*.tif", "idle_timeout_s": 900}
    microscope = Microscope(staged, watch_dir, truth, args.tilt_interval_s, args.series_gap_s)
    with fresh_postgres_database("bench_tomo_meta") as metadata_url, \
            fresh_postgres_database("bench_tomo_results") as results_url:
        results_conn = make_url(results_url).set(drivername="postgres").render_as_string(hide_password=False)
        env = {"CRYOEM_RESULTS_CONN_ID": "cryoem_results", "CRYOEM_RECIPES_DIR": str(recipes_dir),
               "AIRFLOW_CONN_CRYOEM_RESULTS": results_conn, "CRYOEM_DATA_ROOTS": str(root)}
        with AirflowStack(root / "airflow_home", metadata_url, extra_env=env, parallelism=args.parallelism,
                          min_file_process_interval_s=60) as stack:
            try:
                stack.unpause(DAG_ID)
                stack.wait_for_dag(DAG_ID)
                trigger(stack, DAG_ID, conf)
                wait_until(lambda: stack.query("SELECT 1 FROM task_instance WHERE dag_id = :d AND task_id = "
                                               "'wait_for_movies' AND state = 'deferred'", d=DAG_ID), 120,
                           "the first wait")
                session_start = time.time()
                microscope.start()
                microscope.join()
                if microscope.error is not None:
                    raise microscope.error
                wait_until(lambda: tomograms_recorded(results_url, len(truth.series)), 1800,
                           "every series' tomogram", interval_s=1.0, on_timeout=stack.diagnostics)
                (watch_dir / END_MARKER_NAME).write_text("")
                results = create_engine(results_url)
                wait_for_session_end(stack, results, conf["session_name"], DAG_ID, timeout_s=900)
                results.dispose()
                ctf_done = {r.movie: r.end_s for r in stage_runs(stack, DAG_ID, "ctf")}
                motion = stage_runs(stack, DAG_ID, "motioncorr")
                runs = stack.query("SELECT count(*) AS n FROM dag_run WHERE dag_id = :d", d=DAG_ID)[0]["n"]
                times = series_times(stack, results_url, truth, microscope.landed, ctf_done)
            except BaseException:
                print(stack.diagnostics(), file=sys.stderr)
                raise

    def s(value: float | None, since: float | None) -> str:
        return f"{value - since:.1f}" if value is not None and since is not None else "-"

    print("| series | tilts | completed because | last tilt landed → its CTF done (s) | → all its tilts' CTF done (s) "
          "| → series complete (s) | → tomogram MRC written (s) | → tomogram recorded (s) | tomogram task (s) | "
          "tomogram (x×y×z) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in times:
        print(f"| {t.name} | {t.tilts} | {t.completed_reason} | {s(t.last_ctf_done, t.last_landed)} | "
              f"{s(t.all_ctf_done, t.last_landed)} | {s(t.completed, t.last_landed)} | "
              f"{s(t.tomogram_written, t.last_landed)} | {s(t.tomogram_task_end, t.last_landed)} | "
              f"{s(t.tomogram_task_end, t.tomogram_task_start)} | {t.tomogram_shape} |")
    per_tilt = [ctf_done[m] - landed for m, landed in microscope.landed.items() if m in ctf_done]
    compute = [r.compute_s for r in motion if r.compute_s is not None]
    print(f"\nper tilt, landed → CTF done (s): median {statistics.median(per_tilt):.1f}, p90 "
          f"{percentile(per_tilt, 90):.1f}, max {max(per_tilt):.1f} over {len(per_tilt)} tilts; motion correction "
          f"compute per tilt median {statistics.median(compute):.2f} s; {runs} DAG runs")
    print(f"{len(truth.series)} series × {len(truth.series[0].tilts)} tilts of {settings.image_size_px}² px × "
          f"{settings.n_frames} frames at {settings.pixel_size_a:g} Å/px, one tilt every {args.tilt_interval_s:g} s, "
          f"{args.series_gap_s:g} s between series; tomogram binning {args.tomogram_binning}; parallelism "
          f"{args.parallelism}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the end; "
          f"simulation {simulated_s:.0f} s, session {time.time() - session_start:.0f} s, "
          f"total {time.monotonic() - started:.0f} s")
    given = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"reproduce: .venv/bin/python -m benchmarks.bench_tomo_live {given}".rstrip())
    print(f"code: {Path(sys.modules['airflow_provider_cryoem'].__file__).parent}")
    if args.keep:
        print(f"kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
