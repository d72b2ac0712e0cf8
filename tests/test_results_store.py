"""The results store on real PostgreSQL and on SQLite: idempotent writes, once-only claims, summaries."""
from __future__ import annotations

import random
import statistics
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import func, inspect, select

from airflow_provider_cryoem.results import (
    ResultsInputError,
    ResultsNotFoundError,
    ResultsStore,
    engine_from_url,
    schema,
    sqlite_engine,
)

from airflow_provider_cryoem.results.migrations import LATEST_VERSION

from ._pg import fresh_database, pg_url  # noqa: F401  (pg_url is a fixture)

N_WORKERS = 8


@pytest.fixture(params=["postgresql", "sqlite"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'results.sqlite'}"


@pytest.fixture
def store(backend_url: str) -> Iterator[ResultsStore]:
    store = ResultsStore(engine_from_url(backend_url))
    store.ensure_schema()
    yield store
    store.engine.dispose()


@pytest.fixture
def session_id(store: ResultsStore) -> int:
    """A session of its own for each test (the PostgreSQL database is shared by the run)."""
    name = f"session-{uuid.uuid4().hex[:8]}"
    return store.get_or_create_session(name, f"/data/{name}", f"/processing/{name}")


def motion_result(total_motion_a: float, movie: str = "m") -> dict[str, Any]:
    return {"shifts_px": [[0.0, 0.0], [0.4, 0.3]], "total_motion_a": total_motion_a,
            "early_motion_a": total_motion_a / 3, "late_motion_a": 2 * total_motion_a / 3,
            "average_motion_per_frame_a": total_motion_a / 24, "micrograph": f"/processing/{movie}.mrc",
            "drift_plot": f"/processing/{movie}.json", "n_frames": 24}


def ctf_result(defocus_u_a: float, defocus_v_a: float, fit_resolution_a: float) -> dict[str, Any]:
    return {"defocus_u_a": defocus_u_a, "defocus_v_a": defocus_v_a, "astigmatism_angle_deg": 30.0,
            "astigmatism_a": defocus_u_a - defocus_v_a, "fit_resolution_a": fit_resolution_a, "cc": 0.2,
            "diagnostic_image": "/processing/ctf.png"}


def picking_result(particle_count: int) -> dict[str, Any]:
    return {"particle_count": particle_count, "diameter_a": 150.0, "coordinates_star": "/processing/m.star",
            "summary_image": "/processing/m.jpeg"}


def count_rows(store: ResultsStore, table: Any, **where: Any) -> int:
    with store.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table).where(
            *(table.c[name] == value for name, value in where.items()))).scalar_one()


def row(store: ResultsStore, table: Any, row_id: int) -> Any:
    key = next(iter(table.primary_key.columns))
    with store.engine.connect() as connection:
        return connection.execute(select(table).where(key == row_id)).one()


def run_together(n_workers: int, work: Callable[[int], Any]) -> list[Any]:
    """Run work(0..n-1) on n threads released at the same instant, so their transactions overlap."""
    barrier = threading.Barrier(n_workers)

    def start(index: int) -> Any:
        barrier.wait()
        return work(index)

    with ThreadPoolExecutor(n_workers) as pool:
        return list(pool.map(start, range(n_workers)))


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_ensure_schema_run_by_many_processes_at_once_creates_the_schema_once(backend: str, tmp_path: Path,
                                                                           request: pytest.FixtureRequest):
    def migrate_all(url: str) -> list[int]:
        engines = [engine_from_url(url) for _ in range(N_WORKERS)]  # one engine each, as separate processes
        try:
            return run_together(N_WORKERS, lambda i: ResultsStore(engines[i]).ensure_schema())
        finally:
            for engine in engines:
                engine.dispose()

    def check(url: str) -> None:
        assert migrate_all(url) == [LATEST_VERSION] * N_WORKERS
        store = ResultsStore(engine_from_url(url))
        assert store.ensure_schema() == LATEST_VERSION
        assert count_rows(store, schema.schema_version) == LATEST_VERSION
        with store.engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) == set(schema.metadata.tables)
        store.engine.dispose()

    if backend == "postgresql":
        with fresh_database(admin_url=request.getfixturevalue("pg_admin_url")) as url:
            check(url)
    else:
        check(f"sqlite:///{tmp_path / 'fresh.sqlite'}")


def test_a_database_without_tables_reports_schema_version_zero(tmp_path: Path):
    assert ResultsStore(sqlite_engine(tmp_path / "empty.sqlite")).schema_version() == 0


@pytest.mark.parametrize(("record", "table", "first", "second", "column", "expected"), [
    ("record_motion_correction", schema.motion_correction, motion_result(3.0), motion_result(7.5),
     "total_motion_a", 7.5),
    ("record_ctf", schema.ctf, ctf_result(15000, 14000, 4.0), ctf_result(21000, 20000, 3.5),
     "defocus_u_a", 21000),
    ("record_picking", schema.particle_picker, picking_result(120), picking_result(95), "number_of_particles", 95),
    ("record_ice_thickness", schema.relative_ice_thickness,
     dict(minimum=0.9, q1=1.0, median=1.05, q3=1.1, maximum=1.3),
     dict(minimum=0.8, q1=1.0, median=1.07, q3=1.1, maximum=1.4), "median", 1.07),
])
def test_recording_the_same_movie_result_twice_keeps_one_row_with_the_new_values(
        store: ResultsStore, session_id: int, record: str, table: Any, first: dict, second: dict,
        column: str, expected: float):
    job_id = store.start_processing_job(session_id, "spa_live", "stage", reprocess=False, run_id="run-1")
    movie_id = store.register_movie(session_id, "/data/movie_0001.tif")
    first_id = getattr(store, record)(job_id, movie_id, first)
    second_id = getattr(store, record)(job_id, movie_id, second)
    assert first_id == second_id
    assert count_rows(store, table, processing_job_id=job_id) == 1
    assert getattr(row(store, table, first_id), column) == pytest.approx(expected)


def test_a_retried_job_start_and_movie_registration_reuse_their_rows(store: ResultsStore, session_id: int):
    first = store.start_processing_job(session_id, "spa_live", "ctf", reprocess=False, run_id="run-1")
    store.finish_processing_job(first, "failed", message="ctffind crashed")
    retried = store.start_processing_job(session_id, "spa_live", "ctf", reprocess=False, run_id="run-1")
    assert retried == first
    job = row(store, schema.processing_job, first)
    assert (job.processing_status, job.processing_message, job.processing_end_time) == ("running", None, None)
    assert store.register_movie(session_id, "/data/a.tif") == store.register_movie(session_id, "/data/a.tif")
    assert count_rows(store, schema.movie, session_id=session_id) == 1


def test_claim_files_gives_each_file_to_exactly_one_of_many_concurrent_claimants(
        store: ResultsStore, session_id: int):
    files = [(f"Images-Disc1/movie_{i:04d}.tif", 1000 + i) for i in range(300)]
    lists = [random.Random(seed).sample(files, 180) for seed in range(N_WORKERS)]  # heavily overlapping

    claims = run_together(N_WORKERS, lambda i: store.claim_files(session_id, lists[i], claimed_by=f"run-{i}"))

    claimed = [path for paths in claims for path in paths]
    assert len(claimed) == len(set(claimed))  # nobody got a file someone else got
    assert set(claimed) == {path for one in lists for path, _ in one}  # and every offered file went to someone
    for i, paths in enumerate(claims):
        assert set(paths) <= {path for path, _ in lists[i]}
    assert count_rows(store, schema.session_file, session_id=session_id) == len(set(claimed))


def test_a_retried_claim_gets_back_its_own_files_but_never_another_runs(store: ResultsStore, session_id: int):
    assert store.claim_files(session_id, [("b.tif", 2), ("a.tif", 1)], claimed_by="run-1") == ["b.tif", "a.tif"]
    assert store.claim_files(session_id, [("a.tif", 1), ("c.tif", 3)], claimed_by="run-2") == ["c.tif"]
    assert store.claim_files(session_id, [("a.tif", 1), ("c.tif", 3)], claimed_by="run-1") == ["a.tif"]


def test_claim_files_refuses_an_absolute_path(store: ResultsStore, session_id: int):
    with pytest.raises(ResultsInputError, match="/data/a.tif"):
        store.claim_files(session_id, [("/data/a.tif", 1)], claimed_by="run-1")


def test_concurrent_writers_never_duplicate_movies_or_results(store: ResultsStore, session_id: int):
    job_id = store.start_processing_job(session_id, "spa_live", "motion_correction", reprocess=False,
                                        run_id="run-1")
    paths = [f"/data/movie_{i:03d}.tif" for i in range(20)]

    def work(worker: int) -> dict[str, int]:
        ids = {}
        for path in random.Random(worker).sample(paths, len(paths)):
            ids[path] = store.register_movie(session_id, path)
            store.record_motion_correction(job_id, ids[path], motion_result(1.0 + worker))
        return ids

    results = run_together(N_WORKERS, work)
    assert all(ids == results[0] for ids in results)  # every worker saw the same id for each path
    with store.engine.connect() as connection:
        numbers = connection.execute(select(schema.movie.c.movie_number)
                                     .where(schema.movie.c.session_id == session_id)).scalars().all()
    assert sorted(numbers) == list(range(1, len(paths) + 1))
    assert count_rows(store, schema.motion_correction, processing_job_id=job_id) == len(paths)


def test_a_reprocess_run_writes_new_rows_beside_the_live_results(store: ResultsStore, session_id: int):
    movie_id = store.register_movie(session_id, "/data/a.tif")
    live = store.start_processing_job(session_id, "spa_live", "motion_correction", reprocess=False,
                                      run_id="live-run")
    live_row = store.record_motion_correction(live, movie_id, motion_result(3.0))
    again = store.start_processing_job(session_id, "spa_reprocess", "motion_correction", reprocess=True,
                                       run_id="reprocess-run")
    again_row = store.record_motion_correction(again, movie_id, motion_result(9.0))

    assert again != live and again_row != live_row
    assert row(store, schema.motion_correction, live_row).total_motion_a == 3.0
    assert row(store, schema.processing_job, again).reprocess is True
    summary = store.session_summary(_name(store, session_id))
    assert (summary.processing_jobs, summary.reprocess_jobs) == (2, 1)
    assert summary.stages["motion_correction"].succeeded == 1  # one movie, newest job's row counted
    assert summary.median_total_motion_a == 9.0


def _name(store: ResultsStore, session_id: int) -> str:
    return row(store, schema.session, session_id).name


def test_session_summary_counts_stages_lists_failures_and_takes_medians(store: ResultsStore, session_id: int):
    motion_job = store.start_processing_job(session_id, "spa_live", "motion_correction", False, run_id="r")
    ctf_job = store.start_processing_job(session_id, "spa_live", "ctf", False, run_id="r")
    pick_job = store.start_processing_job(session_id, "spa_live", "particle_picking", False, run_id="r")
    class_job = store.start_processing_job(session_id, "spa_live", "class2d", False, run_id="r")
    motions, defoci, fits, counts = [1.0, 2.5, 10.0], [(21000, 19000), (15000, 15000), (30000, 26000)], \
        [3.1, 4.5, 6.0], [10, 40, 25]
    for i in range(3):
        movie_id = store.register_movie(session_id, f"/data/ok_{i}.tif")
        store.record_motion_correction(motion_job, movie_id, motion_result(motions[i]))
        store.record_ctf(ctf_job, movie_id, ctf_result(*defoci[i], fit_resolution_a=fits[i]))
        store.record_picking(pick_job, movie_id, picking_result(counts[i]))
    broken = store.register_movie(session_id, "/data/broken.tif")
    store.record_failure(motion_job, broken, "motion_correction", "truncated TIFF: 12 of 24 frames")
    store.finish_processing_job(class_job, "failed", message="relion_refine exited with 1")

    summary = store.session_summary(_name(store, session_id))

    assert summary.movies_registered == 4
    assert summary.stages["motion_correction"].model_dump() == {"succeeded": 3, "failed": 1}
    assert summary.stages["ctf"].succeeded == summary.stages["particle_picking"].succeeded == 3
    assert summary.median_total_motion_a == pytest.approx(statistics.median(motions))
    assert summary.median_defocus_a == pytest.approx(statistics.median([(u + v) / 2 for u, v in defoci]))
    assert summary.median_fit_resolution_a == pytest.approx(4.5)
    assert summary.median_particles_per_micrograph == pytest.approx(25)
    assert [(f.stage, f.movie, f.reason) for f in summary.failures] == [
        ("motion_correction", "/data/broken.tif", "truncated TIFF: 12 of 24 frames"),
        ("class2d", None, "relion_refine exited with 1")]
    assert row(store, schema.movie, broken).status == "failed"


def test_a_later_success_clears_that_stages_failure_but_not_another_ones(store: ResultsStore, session_id: int):
    job = store.start_processing_job(session_id, "spa_live", "motion_correction", False, run_id="r")
    movie_id = store.register_movie(session_id, "/data/flaky.tif")
    store.record_failure(job, movie_id, "motion_correction", "file disappeared")
    store.record_failure(job, movie_id, "ctf", "no Thon rings")
    store.clear_failure(job, movie_id, "motion_correction")
    assert (row(store, schema.movie, movie_id).status, row(store, schema.movie, movie_id).failure_reason) == (
        "failed", "ctf: no Thon rings")
    store.clear_failure(job, movie_id, "ctf")
    store.clear_failure(job, movie_id, "ctf")  # nothing left to clear: no change
    assert (row(store, schema.movie, movie_id).status, row(store, schema.movie, movie_id).failure_reason) == (
        "registered", None)
    assert store.session_summary(_name(store, session_id)).failures == []


def test_session_summary_of_an_unknown_session_is_a_clear_error(store: ResultsStore):
    with pytest.raises(ResultsNotFoundError, match="no-such-session"):
        store.session_summary("no-such-session")


def test_classification_rerecorded_replaces_its_classes_and_selection_marks_them(store: ResultsStore,
                                                                                  session_id: int):
    job_id = store.start_processing_job(session_id, "spa_live", "class2d", False, run_id="r")
    group = {"type": "2D", "batch_number": 1, "particles_per_batch": 50000, "classes_per_batch": 3,
             "binned_pixel_size_a": 3.5}
    classes = [{"class_number": n, "particles_per_class": p, "class_distribution": p / 50000,
                "estimated_resolution_a": 8.0 + n, "image": f"/processing/class_{n}.jpeg"}
               for n, p in [(1, 30000), (2, 15000), (3, 5000)]]
    first = store.record_classification_group(job_id, group, classes)
    second = store.record_classification_group(job_id, group, classes[:2])  # a retry that found 2 classes
    store.record_class_selection(second, [2])

    assert first == second
    with store.engine.connect() as connection:
        rows = connection.execute(select(schema.particle_classification.c.class_number,
                                         schema.particle_classification.c.selected)
                                  .where(schema.particle_classification.c.particle_classification_group_id == first)
                                  .order_by(schema.particle_classification.c.class_number)).all()
    assert [tuple(r) for r in rows] == [(1, False), (2, True)]
    assert store.session_summary(_name(store, session_id)).stages["class2d"].succeeded == 1


def test_refinement_initial_model_and_bfactor_points_are_idempotent(store: ResultsStore, session_id: int):
    class3d = store.start_processing_job(session_id, "spa_live", "class3d", False, run_id="r")
    group_id = store.record_classification_group(class3d, {"type": "3D", "batch_number": 1,
                                                           "particles_per_batch": 200000, "classes_per_batch": 4}, [])
    model = {"resolution_a": 12.0, "number_of_particles": 200000}
    assert store.record_initial_model(group_id, model) == store.record_initial_model(group_id, model)
    refine = store.start_processing_job(session_id, "spa_live", "refinement", False, run_id="r")
    for resolution_a in (4.2, 3.9):
        store.record_refinement(refine, {"resolution_a": resolution_a, "bfactor_a2": -80.0,
                                         "number_of_particles": 150000})
    store.record_refinement(refine, {"resolution_a": 3.4, "symmetry": "D2", "number_of_particles": 150000})
    bfactor = store.start_processing_job(session_id, "spa_live", "bfactor", False, run_id="r")
    for n in (10000, 20000, 10000):
        store.record_bfactor_fit(bfactor, {"number_of_particles": n, "resolution_a": 60000 / n})

    assert count_rows(store, schema.refinement, processing_job_id=refine) == 2
    assert count_rows(store, schema.bfactor_fit, processing_job_id=bfactor) == 2
    summary = store.session_summary(_name(store, session_id))
    assert summary.best_resolution_a == pytest.approx(3.4)
    assert (summary.stages["refinement"].succeeded, summary.stages["bfactor"].succeeded) == (2, 2)


class CtfEngineResult(BaseModel):
    """Stands in for the CTF engine's pydantic result: extra fields are ignored by the store."""
    defocus_u_a: float
    defocus_v_a: float
    astigmatism_angle_deg: float
    astigmatism_a: float
    fit_resolution_a: float
    cc: float
    diagnostic_image: Path
    spectrum_1d: list[float]


def test_a_pydantic_result_is_stored_field_by_field(store: ResultsStore, session_id: int):
    job_id = store.start_processing_job(session_id, "spa_live", "ctf", False, run_id="r")
    movie_id = store.register_movie(session_id, "/data/a.tif")
    result = CtfEngineResult(defocus_u_a=18000, defocus_v_a=17000, astigmatism_angle_deg=12,
                             astigmatism_a=1000, fit_resolution_a=3.8, cc=0.3,
                             diagnostic_image=Path("/processing/a_ctf.png"), spectrum_1d=[0.1, 0.2])
    stored = row(store, schema.ctf, store.record_ctf(job_id, movie_id, result))
    assert (stored.defocus_v_a, stored.estimated_resolution_a, stored.fft_theoretical_full_path) == \
        (17000, 3.8, "/processing/a_ctf.png")


@pytest.mark.parametrize(("change", "field"), [
    ({"total_motion_a": None}, "total_motion_a"),
    ({"early_motion_a": float("nan")}, "early_motion_a"),
    ({"n_frames": "twenty"}, "n_frames"),
    ({"n_frames": 23.5}, "n_frames"),
    ({"micrograph": 42}, "micrograph"),
])
def test_a_bad_result_names_stage_and_field_and_writes_nothing(store: ResultsStore, session_id: int,
                                                               change: dict, field: str):
    job_id = store.start_processing_job(session_id, "spa_live", "motion_correction", False, run_id="r")
    movie_id = store.register_movie(session_id, "/data/a.tif")
    with pytest.raises(ResultsInputError, match=f"motion correction result, field '{field}'"):
        store.record_motion_correction(job_id, movie_id, {**motion_result(2.0), **change})
    assert count_rows(store, schema.motion_correction, processing_job_id=job_id) == 0


def test_a_result_for_a_movie_that_does_not_exist_is_refused(store: ResultsStore, session_id: int):
    job_id = store.start_processing_job(session_id, "spa_live", "motion_correction", False, run_id="r")
    with pytest.raises(ResultsNotFoundError, match="movie 987654"):
        store.record_motion_correction(job_id, 987654, motion_result(2.0))
    assert count_rows(store, schema.motion_correction, processing_job_id=job_id) == 0


def test_finishing_a_job_with_an_unknown_status_is_refused(store: ResultsStore, session_id: int):
    job_id = store.start_processing_job(session_id, "spa_live", "ctf", False, run_id="r")
    with pytest.raises(ResultsInputError, match="status"):
        store.finish_processing_job(job_id, "done")
