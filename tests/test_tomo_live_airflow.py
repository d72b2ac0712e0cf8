"""tomo_live under a real Airflow 3 stack (api-server, scheduler + LocalExecutor, dag-processor, triggerer).

The simulated microscope collects three small tilt series one after another, a tilt every TILT_INTERVAL_S,
each series' mdoc growing by one section per tilt as SerialEM writes it. The scheduler and the triggerer are
killed (SIGKILL, process groups: the tasks they run die with them) once the first tilts are taken, and
restarted. Every series must still be taken by one run and reconstructed once from all its tilts, with its
rows, images and Relion 5 files, and the session must end by itself on its end marker. PostgreSQL comes from
`pg_admin_url` (tests/_pg.py), as for the SPA live test (tests/test_live_airflow.py).
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import starfile
from sqlalchemy import inspect, text

from airflow_provider_cryoem.devtools.live_session import (
    Microscope,
    crash_scheduler_and_triggerer,
    live_stack,
    session_conf,
    session_row,
    start_session,
    task_returns,
    timeline,
    wait_for_session_end,
)
from airflow_provider_cryoem.devtools.local_airflow import wait_until
from airflow_provider_cryoem.simulate import TomoSimulationSettings, prepare_session_folder

pytestmark = pytest.mark.integration

DAG_ID = "tomo_live"
SESSION = "tomo_live_it"
# Three series of 11 tilts (-30..30 degrees in 6 degree steps, dose-symmetric) on a 128 px detector, 3 frames
# a tilt: the session takes ~50 s to collect and each series reconstructs in seconds on one core.
SETTINGS = TomoSimulationSettings(n_series=3, image_size_px=128, n_frames=3, tilt_min_deg=-30, tilt_max_deg=30,
                                  tilt_step_deg=6, thickness_nm=80, seed=7)
TILT_INTERVAL_S = 1.5
CRASH_AFTER_CLAIMS = 4
IMAGE_COLUMNS = ("central_slice_image", "alignment_plot", "tilt_series_movie")


def _rows(results: Any, sql: str) -> list[dict[str, Any]]:
    with results.connect() as connection:
        return [dict(r._mapping) for r in connection.execute(text(sql))]


def _claimed(results: Any) -> int:
    if not inspect(results).has_table("session_file"):  # the first task creates the schema
        return 0
    return len(_rows(results, "SELECT 1 FROM session_file"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str) -> dict[str, Any]:
    """One live tomography session, start to end marker, with a scheduler + triggerer crash once tilts are taken."""
    root = tmp_path_factory.mktemp("tomo_live")
    watch_dir, processing_dir = root / "session" / "raw", root / "session" / "processing"
    started = time.monotonic()
    with live_stack(root, pg_admin_url, DAG_ID) as (stack, results):
        prepare_session_folder(SETTINGS.as_spa_settings(), watch_dir)
        triggered_s = start_session(stack, DAG_ID, session_conf(SETTINGS, SESSION, watch_dir, processing_dir,
                                                                idle_timeout_s=60, tomogram_binning=2))
        microscope = Microscope(SETTINGS, watch_dir, TILT_INTERVAL_S)
        microscope.start()
        wait_until(lambda: _claimed(results) >= CRASH_AFTER_CLAIMS, 120, f"{CRASH_AFTER_CLAIMS} tilts taken by a run",
                   on_timeout=stack.diagnostics)
        crash_s = crash_scheduler_and_triggerer(stack)  # the first tilts' motion correction dies with it
        truth = microscope.finish(180)
        wait_for_session_end(stack, results, SESSION, DAG_ID, 240)
        data = {
            "truth": truth, "crash_s": crash_s, "relion": processing_dir / "relion",
            "landed_s": {t.movie_name: (watch_dir / t.movie_name).stat().st_mtime
                         for series in truth.series for t in series.tilts},
            "runs": stack.query("SELECT run_id, state FROM dag_run WHERE dag_id = :d ORDER BY start_date", d=DAG_ID),
            "taken": task_returns(stack, DAG_ID, "tilt_series"),
            "tomogram_tasks": task_returns(stack, DAG_ID, "tomogram"),
            "series": _rows(results, "SELECT tilt_series_id, name, status, completed_reason FROM tilt_series"),
            "tilts": _rows(results, "SELECT t.tilt_series_id, t.excluded, t.late, m.movie_full_path "
                                    "FROM tilt t JOIN movie m ON m.movie_id = t.movie_id"),
            "tomograms": _rows(results, "SELECT * FROM tomogram"),
            "session": session_row(results, SESSION),
        }
        print(f"\ntimeline (s after the trigger; crash at {crash_s - triggered_s:.1f} s):")
        print(timeline(stack, DAG_ID, triggered_s, data["landed_s"]))
        taken_by = {item["tilt_series"]["name"]: row["run_id"] for row in data["taken"] for item in row["value"]}
        for series in sorted(data["series"], key=lambda s: s["name"]):
            print(f"{series['name']}: taken by {taken_by.get(series['name'])}: {series['completed_reason']}")
    data["wall_s"] = time.monotonic() - started
    print(f"\nlive tomography session under real Airflow: {data['wall_s']:.0f} s wall, {len(data['runs'])} runs")
    return data


def _series_names(live: dict[str, Any]) -> list[str]:
    return sorted(s.name for s in live["truth"].series)


def test_every_series_is_taken_by_exactly_one_run(live):
    taken = [item["tilt_series"]["name"] for row in live["taken"] for item in row["value"]]
    assert sorted(taken) == _series_names(live)
    assert {row["run_id"] for row in live["taken"]} <= {r["run_id"] for r in live["runs"]}


def test_every_series_is_complete_with_each_tilt_once(live):
    series = {s["tilt_series_id"]: s for s in live["series"]}
    assert sorted(s["name"] for s in series.values()) == _series_names(live)
    assert all(s["status"] == "complete" for s in series.values()), [s["completed_reason"] for s in series.values()]
    tilts_of = {s.name: sorted(t.movie_name for t in s.tilts) for s in live["truth"].series}
    recorded = Counter(series[t["tilt_series_id"]]["name"] for t in live["tilts"])
    assert recorded == {name: len(movies) for name, movies in tilts_of.items()}
    for tilt in live["tilts"]:
        name = series[tilt["tilt_series_id"]]["name"]
        assert Path(tilt["movie_full_path"]).name in tilts_of[name]
        assert not tilt["late"] and not tilt["excluded"], tilt


def test_every_series_is_reconstructed_exactly_once(live):
    names = {s["tilt_series_id"]: s["name"] for s in live["series"]}
    assert sorted(names[t["tilt_series_id"]] for t in live["tomograms"]) == _series_names(live)
    # One successful tomogram task per series (a task killed by the crash is retried in place, never mapped
    # again by another run), each with its tomogram rather than a skip.
    tasks = live["tomogram_tasks"]
    assert sorted(row["rendered_map_index"] for row in tasks) == _series_names(live)
    assert all("tomogram" in row["value"] and "skipped" not in row["value"] for row in tasks), tasks


def test_tomograms_and_their_images_exist(live):
    for row in live["tomograms"]:
        assert Path(row["volume_file"]).is_file() and Path(row["stack_file"]).is_file()
        for column in IMAGE_COLUMNS:
            assert row[column] and Path(row[column]).is_file(), column


def test_relion5_files_list_every_series_once(live):
    relion = live["relion"]
    (tomograms_star,) = relion.glob("Tomograms/job*/tomograms.star")
    tomograms = starfile.read(tomograms_star)
    assert sorted(tomograms["rlnTomoName"]) == _series_names(live)
    for path in tomograms["rlnTomoReconstructedTomogram"]:
        assert (relion / path).is_file()
    (aligned_star,) = relion.glob("AlignTiltSeries/job*/aligned_tilt_series.star")
    aligned = starfile.read(aligned_star)
    assert sorted(aligned["rlnTomoName"]) == _series_names(live)
    n_tilts = {s.name: len(s.tilts) for s in live["truth"].series}
    for name, series_star in zip(aligned["rlnTomoName"], aligned["rlnTomoTiltSeriesStarFile"]):
        tilts = starfile.read(relion / series_star)
        assert 3 <= len(tilts) <= n_tilts[name] and tilts["rlnMicrographMovieName"].is_unique
        assert {"rlnTomoYTilt", "rlnTomoXShiftAngst", "rlnTomoYShiftAngst"} <= set(tilts.columns)
    assert (relion / "default_pipeline.star").read_text().count("relion.reconstructtomograms") == 1


def test_session_ends_by_itself_on_its_end_marker(live):
    assert live["session"]["end_time"] is not None
    assert "marker" in live["session"]["end_reason"]
    assert {r["state"] for r in live["runs"]} == {"success"}


def test_scheduler_and_triggerer_crash_happened_mid_session(live):
    landed = sorted(live["landed_s"].values())
    assert landed[0] < live["crash_s"] < landed[-1], "the crash must fall between the first and last tilt"
