"""The ISPyB results store against a real MariaDB with ISPyB's schema (tests/_mariadb.py).

A simulated session is written twice, once through the default store and once through the ISPyB store,
and ISPyB's rows are compared with the default store's, row by row; the same run written again (a forced
retry of every task) adds no row; 8 threads and 8 processes writing one session at once leave one row each.
"""
from __future__ import annotations

import json
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from ispyb.sqlalchemy import (
    CTF,
    AutoProcProgram,
    BFactorFit,
    CryoemInitialModel,
    Movie,
    MotionCorrection,
    ParticleClassification,
    ParticleClassificationGroup,
    ParticlePicker,
    ProcessedTomogram,
    ProcessingJob,
    RelativeIceThickness,
    TiltImageAlignment,
    Tomogram,
)
from sqlalchemy import create_engine, func, select

from airflow_provider_cryoem.devtools.session_results import (
    record_particle_results,
    record_session,
    record_tilt_series,
)
from airflow_provider_cryoem.hooks.results import ResultsHook
from airflow_provider_cryoem.results import ResultsError, ResultsStore, schema, sqlite_engine
from airflow_provider_cryoem.results.ispyb_store import (
    DataCollectionNotFoundError,
    ISPyBResultsStore,
    ispyb_engine,
    link,
)
from airflow_provider_cryoem.simulate import SpaSimulationSettings
from sqlalchemy.engine import make_url

from ._mariadb import ispyb_url, mariadb_admin_url, register_data_collection  # noqa: F401 (fixtures)
from ._pg import pg_url  # noqa: F401 (fixture)

WORKERS = 8
MOVIES = 12
MIRRORED = (ProcessingJob, AutoProcProgram, Movie, MotionCorrection, CTF, ParticlePicker, RelativeIceThickness,
            ParticleClassificationGroup, ParticleClassification, CryoemInitialModel, BFactorFit, Tomogram,
            TiltImageAlignment, ProcessedTomogram)


def ispyb_store(ispyb_url: str, bookkeeping: Path) -> ISPyBResultsStore:
    store = ISPyBResultsStore(sqlite_engine(bookkeeping), ispyb_engine(make_url(ispyb_url)))
    store.ensure_schema()
    return store


def _count(ispyb_url: str, model: type, data_collection_id: int | None = None) -> int:
    engine = create_engine(ispyb_url)
    with engine.connect() as connection:
        statement = select(func.count()).select_from(model)
        if data_collection_id is not None:
            statement = statement.where(model.dataCollectionId == data_collection_id)
        count = connection.execute(statement).scalar_one()
    engine.dispose()
    return count


def _rows(ispyb_url: str, statement) -> list:
    engine = create_engine(ispyb_url)
    with engine.connect() as connection:
        rows = connection.execute(statement).mappings().all()
    engine.dispose()
    return rows


def test_session_without_data_collection_fails_clearly(ispyb_url: str, tmp_path: Path) -> None:
    store = ispyb_store(ispyb_url, tmp_path / "book.sqlite")
    watch = tmp_path / "no_collection" / "raw"
    with pytest.raises(DataCollectionNotFoundError, match="no data collection whose imageDirectory is"):
        store.get_or_create_session("nodc", watch, tmp_path / "processing")
    with pytest.raises(DataCollectionNotFoundError, match="has no data collection 987654"):
        store.get_or_create_session("nodc", watch, tmp_path / "processing", data_collection_id=987654)
    register_data_collection(ispyb_url, str(watch))
    register_data_collection(ispyb_url, str(watch))
    with pytest.raises(DataCollectionNotFoundError, match="2 data collections"):
        store.get_or_create_session("nodc", watch, tmp_path / "processing")


def test_unreachable_ispyb_is_retryable_and_hides_the_password(tmp_path: Path) -> None:
    from airflow_provider_cryoem.devtools.local_airflow import free_port
    from airflow_provider_cryoem.results import ResultsUnavailableError

    url = make_url(f"mysql+pymysql://ispyb_writer:s3cret-pw@127.0.0.1:{free_port()}/ispyb")
    store = ISPyBResultsStore(sqlite_engine(tmp_path / "book.sqlite"), ispyb_engine(url))
    with pytest.raises(ResultsUnavailableError) as failure:
        store.ensure_schema()
    assert "ispyb_writer" in str(failure.value) and "s3cret-pw" not in str(failure.value)


def test_given_data_collection_id_wins(ispyb_url: str, tmp_path: Path) -> None:
    """The session form's ispyb_data_collection_id links a folder ISPyB knows under another path."""
    chosen = register_data_collection(ispyb_url, "/elsewhere/on/the/microscope/pc")
    store = ispyb_store(ispyb_url, tmp_path / "book.sqlite")
    session = store.get_or_create_session("given", tmp_path / "raw", tmp_path / "processing",
                                          data_collection_id=chosen)
    job = store.start_processing_job(session, "spa_live", "preprocessing", False, "run-1")
    store.register_movie(session, "m1.tiff")
    assert _count(ispyb_url, ProcessingJob, chosen) == 1
    assert _rows(ispyb_url, select(Movie.movieFullPath).where(Movie.dataCollectionId == chosen)) == [
        {"movieFullPath": str(tmp_path / "raw" / "m1.tiff")}]
    assert job > 0


def _write(store: ResultsStore, data_root: Path, name: str):
    spa = record_session(store, name, data_root, SpaSimulationSettings(n_movies=MOVIES, seed=11),
                         failed_every=5, images_for=0)
    record_particle_results(store, spa, batches_2d=2, classes_2d=6, particles_per_batch=2000)
    record_tilt_series(store, spa)
    return spa


@pytest.fixture(scope="module")
def two_stores(ispyb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One simulated session through the default store and through the ISPyB store, then again (retries)."""
    tmp = tmp_path_factory.mktemp("ispyb_session")
    data_root = tmp / "data"
    name = "bi12345-6"
    collection = register_data_collection(ispyb_url, str(data_root / name / "raw"))
    default = ResultsStore(sqlite_engine(tmp / "default.sqlite"))
    default.ensure_schema()
    _write(default, data_root, name)
    mirrored = ispyb_store(ispyb_url, tmp / "bookkeeping.sqlite")
    session = _write(mirrored, data_root, name)
    counts = {model.__tablename__: _count(ispyb_url, model) for model in MIRRORED}
    _write(mirrored, data_root, name)  # every task of the run retried: each write happens a second time
    yield {"default": default, "collection": collection, "counts": counts, "session": session,
           "watch_dir": data_root / name / "raw"}


def test_retries_add_no_rows(two_stores: dict, ispyb_url: str) -> None:
    after = {model.__tablename__: _count(ispyb_url, model) for model in MIRRORED}
    assert after == two_stores["counts"]
    assert _count(ispyb_url, Movie, two_stores["collection"]) == MOVIES
    assert two_stores["counts"]["CTF"] == MOVIES - MOVIES // 5  # every 5th movie failed CTF
    assert two_stores["counts"]["TiltImageAlignment"] == MOVIES
    assert two_stores["counts"]["ProcessedTomogram"] == 2


def test_per_movie_rows_match_the_default_store(two_stores: dict, ispyb_url: str) -> None:
    default: ResultsStore = two_stores["default"]
    collection, watch_dir = two_stores["collection"], two_stores["watch_dir"]

    def own(table, *columns):
        movie = schema.movie
        return {str(watch_dir / row.movie_full_path): row for row in default.read(lambda c: c.execute(
            select(movie.c.movie_full_path, movie.c.movie_number, *columns)
            .join(table, table.c.movie_id == movie.c.movie_id)).all())}

    motion = own(schema.motion_correction, *schema.motion_correction.c)
    ispyb_motion = _rows(ispyb_url, select(Movie.movieFullPath, Movie.movieNumber, MotionCorrection.__table__)
                         .join(MotionCorrection, MotionCorrection.movieId == Movie.movieId)
                         .where(Movie.dataCollectionId == collection))
    assert {row["movieFullPath"] for row in ispyb_motion} == set(motion)
    for row in ispyb_motion:
        mine = motion[row["movieFullPath"]]
        assert (row["movieNumber"], row["imageNumber"], row["firstFrame"], row["lastFrame"]) == (
            mine.movie_number, mine.movie_number, mine.first_frame, mine.last_frame)
        assert row["totalMotion"] == pytest.approx(mine.total_motion_a, rel=1e-5)
        assert row["averageMotionPerFrame"] == pytest.approx(mine.average_motion_per_frame_a, rel=1e-5)
        assert row["micrographFullPath"] == mine.micrograph_full_path
        assert row["dataCollectionId"] == collection

    ctf = own(schema.ctf, *schema.ctf.c)
    ispyb_ctf = _rows(ispyb_url, select(Movie.movieFullPath, CTF.__table__)
                      .join(MotionCorrection, MotionCorrection.motionCorrectionId == CTF.motionCorrectionId)
                      .join(Movie, Movie.movieId == MotionCorrection.movieId)
                      .where(Movie.dataCollectionId == collection))
    assert {row["movieFullPath"] for row in ispyb_ctf} == set(ctf)
    for row in ispyb_ctf:
        mine = ctf[row["movieFullPath"]]
        assert row["estimatedDefocus"] == pytest.approx((mine.defocus_u_a + mine.defocus_v_a) / 2, rel=1e-5)
        assert row["astigmatism"] == pytest.approx(mine.astigmatism_a, rel=1e-5)
        assert row["astigmatismAngle"] == pytest.approx(mine.astigmatism_angle_deg, rel=1e-5)
        assert row["estimatedResolution"] == pytest.approx(mine.estimated_resolution_a, rel=1e-5)

    picks = own(schema.particle_picker, schema.particle_picker.c.number_of_particles,
                schema.particle_picker.c.particle_diameter_a)
    ispyb_picks = _rows(ispyb_url, select(Movie.movieFullPath, ParticlePicker.__table__)
                        .join(MotionCorrection,
                              MotionCorrection.motionCorrectionId == ParticlePicker.firstMotionCorrectionId)
                        .join(Movie, Movie.movieId == MotionCorrection.movieId)
                        .where(Movie.dataCollectionId == collection))
    assert {row["movieFullPath"]: row["numberOfParticles"] for row in ispyb_picks} == {
        path: row.number_of_particles for path, row in picks.items()}
    for row in ispyb_picks:
        diameter_a = picks[row["movieFullPath"]].particle_diameter_a
        assert row["particleDiameter"] == pytest.approx(diameter_a / 10, rel=1e-5)  # ISPyB: nm

    ice = own(schema.relative_ice_thickness, schema.relative_ice_thickness.c.median)
    ispyb_ice = _rows(ispyb_url, select(Movie.movieFullPath, RelativeIceThickness.median)
                      .join(MotionCorrection,
                            MotionCorrection.motionCorrectionId == RelativeIceThickness.motionCorrectionId)
                      .join(Movie, Movie.movieId == MotionCorrection.movieId)
                      .where(Movie.dataCollectionId == collection))
    assert {row["movieFullPath"]: pytest.approx(row["median"], rel=1e-5) for row in ispyb_ice} == {
        path: row.median for path, row in ice.items()}


def test_batch_and_tomogram_rows_match_the_default_store(two_stores: dict, ispyb_url: str) -> None:
    default: ResultsStore = two_stores["default"]
    collection = two_stores["collection"]
    group, klass, job = schema.particle_classification_group, schema.particle_classification, schema.processing_job
    mine = sorted(default.read(lambda c: c.execute(
        select(job.c.stage, group.c.type, group.c.batch_number, klass.c.class_number, klass.c.particles_per_class,
               klass.c.selected, klass.c.estimated_resolution_a)
        .join(group, group.c.processing_job_id == job.c.processing_job_id)
        .join(klass, klass.c.particle_classification_group_id == group.c.particle_classification_group_id)).all()))
    theirs = _rows(ispyb_url, select(ProcessingJob.displayName, ParticleClassificationGroup.type,
                                     ParticleClassificationGroup.batchNumber, ParticleClassification.classNumber,
                                     ParticleClassification.particlesPerClass, ParticleClassification.selected,
                                     ParticleClassification.estimatedResolution)
                   .join(AutoProcProgram, AutoProcProgram.processingJobId == ProcessingJob.processingJobId)
                   .join(ParticleClassificationGroup, ParticleClassificationGroup.programId
                         == AutoProcProgram.autoProcProgramId)
                   .join(ParticleClassification, ParticleClassification.particleClassificationGroupId
                         == ParticleClassificationGroup.particleClassificationGroupId)
                   .where(ProcessingJob.dataCollectionId == collection, ProcessingJob.displayName != "refine3d"))
    assert sorted((r["displayName"], r["type"], r["batchNumber"], r["classNumber"], r["particlesPerClass"],
                   bool(r["selected"]), r["estimatedResolution"]) for r in theirs) == [
        (*row[:6], None if row[6] is None else pytest.approx(row[6], rel=1e-5)) for row in mine]
    assert sum(bool(r["selected"]) for r in theirs) == sum(row.selected for row in mine) > 0

    refinement = default.read(lambda c: c.execute(select(schema.refinement)).mappings().one())
    fits = sorted(default.read(lambda c: c.execute(select(schema.bfactor_fit.c.number_of_particles,
                                                          schema.bfactor_fit.c.resolution_a)).all()))
    ispyb_fits = _rows(ispyb_url, select(BFactorFit.numberOfParticles, BFactorFit.resolution,
                                         ParticleClassification.estimatedResolution)
                       .join(ParticleClassification, ParticleClassification.particleClassificationId
                             == BFactorFit.particleClassificationId))
    assert sorted((r["numberOfParticles"], pytest.approx(r["resolution"], rel=1e-5)) for r in ispyb_fits) == fits
    assert [r["estimatedResolution"] for r in ispyb_fits] == [
        pytest.approx(refinement["estimated_resolution_a"], rel=1e-5)] * len(fits)  # all hang from the refinement
    assert _count(ispyb_url, CryoemInitialModel) == 1

    tomogram = default.read(lambda c: c.execute(select(schema.tomogram)).mappings().one())
    ispyb_tomogram = _rows(ispyb_url, select(Tomogram.__table__).where(Tomogram.dataCollectionId == collection))
    assert len(ispyb_tomogram) == 1
    assert ispyb_tomogram[0]["volumeFile"] == tomogram["volume_file"]
    assert ispyb_tomogram[0]["residualErrorMean"] == pytest.approx(
        tomogram["residual_error_mean_px"] * tomogram["pixel_size_a"] / 10)  # px -> nm
    assert sorted(r["processingType"] for r in _rows(ispyb_url, select(ProcessedTomogram.processingType))) == [
        "Denoised", "Segmented"]


def test_jobs_carry_status_and_times(two_stores: dict, ispyb_url: str) -> None:
    rows = _rows(ispyb_url, select(ProcessingJob.displayName, ProcessingJob.recipe, AutoProcProgram.processingStatus,
                                   AutoProcProgram.processingEndTime)
                 .join(AutoProcProgram, AutoProcProgram.processingJobId == ProcessingJob.processingJobId)
                 .where(ProcessingJob.dataCollectionId == two_stores["collection"]))
    by_stage = {row["displayName"]: row for row in rows}
    assert set(by_stage) == {"preprocessing", "class2d", "class3d", "refine3d", "bfactor", "tomogram"}
    assert by_stage["class2d"]["processingStatus"] == 1 and by_stage["class2d"]["processingEndTime"] is not None
    assert by_stage["preprocessing"]["processingStatus"] is None  # still running: the live session goes on


def _one_worker(ispyb_url: str, bookkeeping_url: str, watch_dir: str, worker: int) -> int:
    """One worker's whole share: open the session, start the job, and record every movie (all workers
    record the same movies: the retries and races of a live run, at once)."""
    store = ISPyBResultsStore(create_engine(bookkeeping_url, pool_pre_ping=True),
                              ispyb_engine(make_url(ispyb_url)))
    store.ensure_schema()  # as the hook does in every worker: all of them at once
    session = store.get_or_create_session("race", watch_dir, watch_dir + "/../processing")
    job = store.start_processing_job(session, "spa_live", "preprocessing", False, "race-run")
    for index in range(MOVIES):
        movie = store.register_movie(session, f"movie_{index:03d}.tiff")
        store.record_motion_correction(job, movie, {
            "n_frames": 40, "total_motion_a": 10.0 + worker, "early_motion_a": 5.0, "late_motion_a": 5.0,
            "average_motion_per_frame_a": 0.25, "micrograph": f"{watch_dir}/mc/movie_{index:03d}.mrc"})
        store.record_ctf(job, movie, {"defocus_u_a": 15000.0, "defocus_v_a": 14000.0, "astigmatism_angle_deg": 30.0,
                                      "astigmatism_a": 1000.0, "fit_resolution_a": 4.0 + worker})
    return worker


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_concurrent_writers_leave_one_row_each(kind: str, ispyb_url: str, pg_url: str, tmp_path: Path) -> None:
    watch_dir = str(tmp_path / kind / "raw")
    collection = register_data_collection(ispyb_url, watch_dir)
    args = [(ispyb_url, pg_url, watch_dir, worker) for worker in range(WORKERS)]
    if kind == "threads":
        with ThreadPoolExecutor(WORKERS) as pool:
            done = list(pool.map(lambda a: _one_worker(*a), args))
    else:
        with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
            done = pool.starmap(_one_worker, args)
    assert sorted(done) == list(range(WORKERS))
    assert _count(ispyb_url, ProcessingJob, collection) == 1
    assert _count(ispyb_url, Movie, collection) == MOVIES
    assert _count(ispyb_url, MotionCorrection, collection) == MOVIES
    ctf = _rows(ispyb_url, select(CTF.estimatedResolution).join(
        MotionCorrection, MotionCorrection.motionCorrectionId == CTF.motionCorrectionId)
        .where(MotionCorrection.dataCollectionId == collection))
    assert len(ctf) == MOVIES  # one per movie, holding one of the workers' values
    assert {row["estimatedResolution"] for row in ctf} <= {4.0 + worker for worker in range(WORKERS)}
    links = _rows(ispyb_url, select(func.count()).select_from(link).where(link.c.ispyb_id.is_(None)))
    assert links[0]["count_1"] == 0  # no key left claimed without its row


def test_hook_selects_ispyb_by_connection(ispyb_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = make_url(ispyb_url)
    connection = {"conn_type": "mysql", "host": url.host, "port": url.port, "login": url.username,
                  "schema": url.database, "extra": {"ispyb": True}}
    monkeypatch.setenv("AIRFLOW_CONN_CRYOEM_ISPYB", json.dumps(connection))
    monkeypatch.setenv("AIRFLOW_CONN_CRYOEM_PLAIN_MYSQL", json.dumps({**connection, "extra": {}}))
    store = ResultsHook("cryoem_ispyb", tmp_path / "processing").get_store()
    assert isinstance(store, ISPyBResultsStore)
    assert "cryoem_ispyb" in store.ispyb_label and (tmp_path / "processing" / "results.sqlite").exists()
    reader = ResultsHook("cryoem_ispyb", tmp_path / "processing").get_reader()
    assert type(reader) is ResultsStore and reader.schema_version() == store.schema_version()
    with pytest.raises(ResultsError, match="only as ISPyB"):
        ResultsHook("cryoem_plain_mysql", tmp_path / "processing").get_store()


def test_hook_keeps_bookkeeping_in_the_named_postgres(ispyb_url: str, pg_url: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With `bookkeeping_conn_id` the claims and the dashboard's reads go to PostgreSQL, not a SQLite file."""
    url = make_url(ispyb_url)
    monkeypatch.setenv("AIRFLOW_CONN_CRYOEM_BOOKKEEPING",
                       make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False))
    monkeypatch.setenv("AIRFLOW_CONN_CRYOEM_ISPYB_PG", json.dumps({
        "conn_type": "mysql", "host": url.host, "port": url.port, "login": url.username, "schema": url.database,
        "extra": {"ispyb": True, "bookkeeping_conn_id": "cryoem_bookkeeping"}}))
    store = ResultsHook("cryoem_ispyb_pg", tmp_path / "processing").get_store()
    assert isinstance(store, ISPyBResultsStore) and store.engine.dialect.name == "postgresql"
    assert ResultsHook("cryoem_ispyb_pg").get_reader().engine.dialect.name == "postgresql"
    assert not (tmp_path / "processing" / "results.sqlite").exists()
