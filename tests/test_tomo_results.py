"""Tomography results on real PostgreSQL and on SQLite: tilt series, tilts, tomograms, alignments.

Series and movie names come from the tilt-series simulator's naming (SerialEM and Tomo5), tilts in its
dose-symmetric acquisition order.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import inspect, select

from airflow_provider_cryoem.cli_commands.summary import format_summary
from airflow_provider_cryoem.results import (
    ResultsInputError,
    ResultsNotFoundError,
    ResultsStore,
    engine_from_url,
    schema,
)
from airflow_provider_cryoem.results.migrations import LATEST_VERSION, MIGRATIONS
from airflow_provider_cryoem.simulate.tomo_files import movie_name, series_name
from airflow_provider_cryoem.simulate.tomo_settings import TomoSimulationSettings

from ._pg import empty_url, pg_url  # noqa: F401  (fixtures)
from .test_results_store import N_WORKERS, backend_url, count_rows, run_together, session_id, store  # noqa: F401

SETTINGS = TomoSimulationSettings(tilt_min_deg=-9, tilt_max_deg=9)  # 7 tilts: 0, 3, -3, -6, 6, 9, -9


def collect(store: ResultsStore, session_id: int, settings: TomoSimulationSettings = SETTINGS, index: int = 0,
            n_tilts: int | None = None) -> tuple[int, list[int]]:
    """Register a series and its first `n_tilts` tilts as a live run would; returns (series id, movie ids)."""
    name = series_name(settings, index)
    series_id = store.get_or_create_tilt_series(session_id, name, f"{name}.mdoc", settings.tilt_axis_deg,
                                                expected_tilts=len(settings.acquisition_order()))
    movie_ids = []
    for order, angle in enumerate(settings.acquisition_order()[:n_tilts], start=1):
        movie_id = store.register_movie(session_id, movie_name(settings, name, order, angle, settings.session_start))
        store.add_tilt(series_id, movie_id, order - 1, angle, order, (order - 1) * settings.dose_per_tilt_e_a2)
        movie_ids.append(movie_id)
    return series_id, movie_ids


def tomogram_result(volume: str, residual_px: float) -> dict[str, Any]:
    return {"volume": volume, "stack": volume.replace(".mrc", "_aligned.mrc"), "size_x_px": 64, "size_y_px": 64,
            "size_z_px": 38, "pixel_size_a": 8.0, "tilt_axis_deg": 85.3, "tilt_angle_offset_deg": 0.4,
            "mean_residual_px": residual_px, "residual_sd_px": residual_px / 3, "central_slice": "/p/slice.jpeg",
            "projection_xy": "/p/xy.jpeg", "projection_xz": "/p/xz.jpeg", "movie": "/p/movie.gif",
            "alignment_plot": "/p/shifts.json"}


def alignment(movie_id: int, angle_deg: float, excluded: bool = False) -> dict[str, Any]:
    if excluded:
        return {"movie_id": movie_id, "excluded": True, "exclusion_reason": "dark"}
    return {"movie_id": movie_id, "refined_tilt_angle_deg": angle_deg + 0.4, "tilt_axis_deg": 85.3,
            "shift_x_px": 1.5, "shift_y_px": -0.5, "residual_px": 0.8}


def test_a_tilt_series_is_created_once_and_learns_its_mdoc_later(store: ResultsStore, session_id: int):
    first = store.get_or_create_tilt_series(session_id, "Position_1_2", None, None)
    again = store.get_or_create_tilt_series(session_id, "Position_1_2", "/data/Position_1_2.mdoc", 84.1,
                                            expected_tilts=41)
    assert first == again
    series = store.tilt_series_of_session(session_id)
    assert [(s.name, s.mdoc_full_path, s.tilt_axis_nominal_deg, s.expected_tilts, s.status) for s in series] == [
        ("Position_1_2", "/data/Position_1_2.mdoc", 84.1, 41, "collecting")]
    assert store.get_or_create_tilt_series(session_id, "Position_1_2", None, None) == first
    assert store.tilt_series_of_session(session_id)[0].mdoc_full_path == "/data/Position_1_2.mdoc"


def test_tilts_are_listed_in_acquisition_order_and_a_retried_tilt_keeps_its_row(store: ResultsStore,
                                                                                session_id: int):
    series_id, movie_ids = collect(store, session_id)
    retried = store.add_tilt(series_id, movie_ids[2], 2, -3.0, 3, 5.0)
    assert count_rows(store, schema.tilt, tilt_series_id=series_id) == len(SETTINGS.acquisition_order())
    [series] = store.tilt_series_of_session(session_id)
    assert [t.tilt_angle_deg for t in series.tilts] == SETTINGS.acquisition_order()
    assert [t.pre_exposure_e_a2 for t in series.tilts][:3] == [0.0, 2.5, 5.0]
    assert series.tilts[2].tilt_id == retried and series.tilts[2].movie.startswith("TS_01_003_-3.0")
    assert not any(t.late or t.excluded for t in series.tilts)


def test_eight_runs_completing_a_series_at_once_flip_it_exactly_once(store: ResultsStore, session_id: int):
    series_id, _ = collect(store, session_id)
    flipped = run_together(N_WORKERS, lambda i: store.complete_tilt_series(series_id, f"run {i}: mdoc complete"))
    assert sorted(flipped) == [False] * (N_WORKERS - 1) + [True]
    [series] = store.tilt_series_of_session(session_id)
    assert series.status == "complete" and series.completed_at is not None
    assert series.completed_reason == f"run {flipped.index(True)}: mdoc complete"
    assert store.complete_tilt_series(series_id, "later") is False


def test_completing_an_unknown_series_is_a_clear_error(store: ResultsStore):
    with pytest.raises(ResultsNotFoundError, match="no tilt series"):
        store.complete_tilt_series(10**9, "idle")


def test_a_tilt_arriving_after_completion_is_late_and_reported(store: ResultsStore, session_id: int):
    settings = TomoSimulationSettings(naming="tomo5", tilt_min_deg=-9, tilt_max_deg=9)
    series_id, movie_ids = collect(store, session_id, settings, index=1, n_tilts=5)
    assert store.complete_tilt_series(series_id, "idle for 120 s")
    store.add_tilt(series_id, movie_ids[0], 0, 0.0, 1, 0.0)  # a retry of an early tilt stays on time
    angles = settings.acquisition_order()
    late_movie = movie_name(settings, "Position_1_2", 6, angles[5], settings.session_start)
    late_id = store.register_movie(session_id, late_movie)
    store.add_tilt(series_id, late_id, 5, angles[5], 6, 12.5)
    store.add_tilt(series_id, late_id, 5, angles[5], 6, 12.5)  # retried: still one late row
    forced = store.register_movie(session_id, movie_name(settings, "Position_1_2", 7, angles[6],
                                                         settings.session_start))
    store.record_late_tilt(series_id, forced, 6, angles[6], 7, 15.0)
    [series] = store.tilt_series_of_session(session_id)
    assert [t.late for t in series.tilts] == [False] * 5 + [True, True]
    counts = store.session_summary(session_id).tomography
    assert (counts.series_complete, counts.series_collecting, counts.tilts, counts.late_tilts) == (1, 0, 7, 2)
    assert late_movie in counts.late_tilt_movies
    assert "tilt series: 1 complete (0 with a tomogram), 0 collecting; 7 tilts (0 excluded, 2 late)" in \
        format_summary(store.session_summary(session_id))


def test_add_tilt_to_a_missing_series_or_movie_is_refused(store: ResultsStore, session_id: int):
    series_id, _ = collect(store, session_id, n_tilts=1)
    movie_id = store.register_movie(session_id, "TS_01_002_3.0.tif")
    with pytest.raises(ResultsNotFoundError, match="no tilt series"):
        store.add_tilt(10**9, movie_id, 1, 3.0, 2, 2.5)
    with pytest.raises(ResultsNotFoundError, match="movie 1000000000"):
        store.add_tilt(series_id, 10**9, 1, 3.0, 2, 2.5)
    with pytest.raises(ResultsInputError, match="name"):
        store.get_or_create_tilt_series(session_id, "TS 01", None, None)


def test_excluding_a_tilt_is_idempotent_and_reversible(store: ResultsStore, session_id: int):
    _, movie_ids = collect(store, session_id)
    store.mark_tilt_excluded(movie_ids[-1], "CTF fit worse than 20 Å")
    store.mark_tilt_excluded(movie_ids[-1], "CTF fit worse than 20 Å")
    store.mark_tilt_excluded(movie_ids[-2], "motion 40 Å")
    store.mark_tilt_excluded(movie_ids[-2], "", excluded=False)
    [series] = store.tilt_series_of_session(session_id)
    assert [(t.excluded, t.exclusion_reason) for t in series.tilts][-2:] == [
        (False, None), (True, "CTF fit worse than 20 Å")]
    assert store.session_summary(session_id).tomography.excluded_tilts == 1
    with pytest.raises(ResultsNotFoundError, match="not a tilt"):
        store.mark_tilt_excluded(store.register_movie(session_id, "gain.mrc"), "not a tilt")


def test_a_retried_tomogram_replaces_its_alignments(store: ResultsStore, session_id: int):
    series_id, movie_ids = collect(store, session_id)
    angles = SETTINGS.acquisition_order()
    job = store.start_processing_job(session_id, "tomo_live", "tomogram", False, "run-1")
    first = store.record_tomogram(job, series_id, tomogram_result("/p/TS_01.mrc", 1.2),
                                  [alignment(m, a) for m, a in zip(movie_ids, angles)])
    retry = store.record_tomogram(job, series_id, tomogram_result("/p/TS_01.mrc", 0.9),
                                  [alignment(m, a, excluded=(a == -9.0)) for m, a in zip(movie_ids[:-1], angles)]
                                  + [alignment(movie_ids[-1], angles[-1], excluded=True)])
    assert retry == first
    assert count_rows(store, schema.tomogram, tilt_series_id=series_id) == 1
    assert count_rows(store, schema.tilt_image_alignment, tomogram_id=first) == len(movie_ids)
    with store.engine.connect() as connection:
        row = connection.execute(select(schema.tomogram).where(schema.tomogram.c.tomogram_id == first)).one()
        aligned = connection.execute(select(schema.tilt_image_alignment).where(
            schema.tilt_image_alignment.c.tomogram_id == first)).all()
    assert (row.residual_error_mean_px, row.volume_file, row.size_z_px, row.alignment_plot) == (
        0.9, "/p/TS_01.mrc", 38, "/p/shifts.json")
    dark = [a for a in aligned if a.excluded]
    assert len(dark) == 1 and dark[0].refined_tilt_angle_deg is None and dark[0].exclusion_reason == "dark"
    reprocess = store.start_processing_job(session_id, "tomo_reprocess", "tomogram", True, "run-2")
    store.record_tomogram(reprocess, series_id, tomogram_result("/p2/TS_01.mrc", 0.7),
                          [alignment(m, a) for m, a in zip(movie_ids, angles)])
    counts = store.session_summary(session_id).tomography
    assert (counts.series_reconstructed, counts.excluded_tilts) == (1, 0)  # the newest alignment counts


def test_a_tomogram_with_bad_alignments_writes_nothing(store: ResultsStore, session_id: int):
    series_id, movie_ids = collect(store, session_id)
    other_series, other_movies = collect(store, session_id, index=1, n_tilts=1)
    job = store.start_processing_job(session_id, "tomo_live", "tomogram", False, "run-1")
    with pytest.raises(ResultsInputError, match="not tilts of tilt series"):
        store.record_tomogram(job, series_id, tomogram_result("/p/TS_01.mrc", 1.0),
                              [alignment(movie_ids[0], 0.0), alignment(other_movies[0], 0.0)])
    with pytest.raises(ResultsInputError, match="shift_x_px"):
        store.record_tomogram(job, series_id, tomogram_result("/p/TS_01.mrc", 1.0),
                              [{"movie_id": movie_ids[0], "refined_tilt_angle_deg": 0.1}])
    with pytest.raises(ResultsInputError, match="volume"):
        store.record_tomogram(job, series_id, {"pixel_size_a": 8.0}, [])
    assert count_rows(store, schema.tomogram, processing_job_id=job) == 0
    assert other_series != series_id



def test_a_version_2_database_migrates_to_tomography_keeping_its_rows(empty_url: str):
    store = ResultsStore(engine_from_url(empty_url))
    now = datetime.now(timezone.utc)
    with store.engine.begin() as connection:  # a database as migrations 1 and 2 left it
        schema.schema_version.create(connection)
        for migration in MIGRATIONS[:2]:
            migration.apply(connection)
            connection.execute(schema.schema_version.insert().values(
                version=migration.version, description=migration.description, applied_at=now))
    with store.engine.connect() as connection:
        assert {"tilt_series", "tilt", "tomogram", "tilt_image_alignment"}.isdisjoint(
            inspect(connection).get_table_names())
    session = store.get_or_create_session("demo", "/data/raw", "/data/processing")
    movie = store.register_movie(session, "TS_01_001_0.0.tif")
    job = store.start_processing_job(session, "tomo_live", "motion_correction", False, "run-1")
    store.record_motion_correction(job, movie, {"total_motion_a": 3.0, "early_motion_a": 1.0, "late_motion_a": 2.0,
                                                "average_motion_per_frame_a": 0.3, "micrograph": "/p/m.mrc",
                                                "n_frames": 10})

    assert store.ensure_schema() == LATEST_VERSION >= 3
    assert store.get_or_create_session("demo", "/data/raw", "/data/processing") == session
    assert count_rows(store, schema.motion_correction, movie_id=movie) == 1
    series = store.get_or_create_tilt_series(session, "TS_01", "/data/raw/TS_01.mdoc", 85.0)
    store.add_tilt(series, movie, 0, 0.0, 1, 0.0)
    assert [t.movie for t in store.tilt_series_of_session(session)[0].tilts] == ["TS_01_001_0.0.tif"]
    assert store.ensure_schema() == LATEST_VERSION
    store.engine.dispose()
