"""The spa_live DAG end to end with `airflow dags test`: simulated movies in, results and Relion project out."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path, PurePath

import pytest
import starfile

from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.simulate import (
    END_MARKER_NAME,
    GAIN_REFERENCE_NAME,
    SpaSimulationSettings,
    write_spa_session,
)

from .conftest import AIRFLOW, REPO

SETTINGS = SpaSimulationSettings(n_movies=3, image_size_px=512, n_frames=10, particle_diameter_a=90,
                                 particles_per_micrograph=12, seed=11)


@pytest.fixture(scope="module")
def session(tmp_path_factory, airflow_env):
    """A finished simulated session with one corrupt movie, processed by one spa_live run."""
    root = tmp_path_factory.mktemp("data")
    watch_dir = root / "session" / "raw"
    truth = write_spa_session(SETTINGS, watch_dir)
    corrupt = watch_dir / "corrupt_fractions.tiff"
    good = (watch_dir / truth.movies[0].movie_name).read_bytes()
    corrupt.write_bytes(good[: len(good) // 3])
    (watch_dir / END_MARKER_NAME).write_text("")
    conf = {"session_name": "dagtest", "watch_dir": str(watch_dir), "pixel_size_a": SETTINGS.pixel_size_a,
            "particle_diameter_a": SETTINGS.particle_diameter_a, "gain_reference_path":
            str(watch_dir / GAIN_REFERENCE_NAME), "dose_per_frame_e_a2": SETTINGS.dose_per_frame_e_a2}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(root)}
    run = subprocess.run([AIRFLOW, "dags", "test", "spa_live", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True)
    return {"truth": truth, "watch_dir": watch_dir, "processing": root / "session" / "processing", "run": run,
            "env": env, "conf": conf}


def test_run_succeeds_and_ends_the_session_on_its_marker(session):
    assert session["run"].returncode == 0, session["run"].stdout[-4000:]
    summary = results_store(None, str(session["processing"])).session_summary("dagtest")
    assert summary.ended and "marker" in summary.end_reason


def test_every_good_movie_goes_through_every_stage_once(session):
    summary = results_store(None, str(session["processing"])).session_summary("dagtest")
    n_good = len(session["truth"].movies)
    assert summary.files_claimed == n_good + 1
    assert summary.stages["motion_correction"].succeeded == n_good
    assert summary.stages["ctf"].succeeded == n_good
    assert summary.stages["particle_picking"].succeeded == n_good


def test_corrupt_movie_is_recorded_as_failed_with_its_reason(session):
    summary = results_store(None, str(session["processing"])).session_summary("dagtest")
    (failure,) = summary.failures
    assert failure.movie.endswith("corrupt_fractions.tiff") and failure.stage == "motion_correction"
    assert "corrupt_fractions.tiff" in failure.reason


def test_relion_project_lists_every_good_micrograph_and_their_particles(session):
    relion = session["processing"] / "relion"
    n_good = len(session["truth"].movies)
    mics = starfile.read(relion / "CtfFind/job003/micrographs_ctf.star", always_dict=True)["micrographs"]
    assert len(mics) == n_good
    # Mean defocus of each micrograph against its own movie's planted value, within 1 %.
    # Measured (seed 11): -0.87 %, +0.33 %, -0.34 %.
    truth = {PurePath(m.movie_name).stem: m.defocus_mean_a for m in session["truth"].movies}
    fitted = {PurePath(name).stem: (u + v) / 2
              for name, u, v in zip(mics["rlnMicrographName"], mics["rlnDefocusU"], mics["rlnDefocusV"])}
    assert fitted.keys() == truth.keys()
    for name, defocus_a in fitted.items():
        assert defocus_a == pytest.approx(truth[name], rel=0.01), name
    particles = starfile.read(relion / "Extract/job005/particles.star", always_dict=True)["particles"]
    assert len(particles) >= 0.7 * SETTINGS.particles_per_micrograph * n_good
    pipeline = (relion / "default_pipeline.star").read_text()
    assert pipeline.count("Succeeded") >= 5 and " Running " not in pipeline


def test_invalid_conf_fails_the_run_naming_the_field(session):
    conf = {**session["conf"], "session_name": "bad", "voltage_kv": 1000}
    run = subprocess.run([AIRFLOW, "dags", "test", "spa_live", "--conf", json.dumps(conf)], env=session["env"],
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "voltage_kv" in run.stdout + run.stderr


def test_reprocess_run_of_a_date_processes_its_dated_sessions_into_a_new_job(tmp_path, airflow_env):
    """A scheduled/backfilled spa_reprocess run for 2026-11-20 takes every 20261120_* session folder."""
    sessions_root = tmp_path / "sessions"
    small = SETTINGS.model_copy(update={"n_movies": 2})
    write_spa_session(small, sessions_root / "20261120_apoferritin")
    write_spa_session(small, sessions_root / "20261121_other_day")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    recipe = (REPO / "recipes" / "spa_reprocess.yaml").read_text()
    (recipes / "spa_reprocess.yaml").write_text(recipe.replace("sessions_root: /data/sessions",
                                                              f"sessions_root: {sessions_root}"))
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(tmp_path), "CRYOEM_RECIPES_DIR": str(recipes)}
    conf = {"session_name": "reprocessed", "particle_diameter_a": small.particle_diameter_a}
    for attempt in (1, 2):
        run = subprocess.run([AIRFLOW, "dags", "test", "spa_reprocess", "2026-11-20", "--conf", json.dumps(conf)],
                             env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-4000:]
    processing = sessions_root / "20261120_apoferritin" / "processing"
    summary = results_store(None, str(processing)).session_summary("reprocessed")
    assert summary.reprocess_jobs == 2
    assert summary.stages["motion_correction"].succeeded == 2
    assert len(list(processing.glob("reprocess_*/MotionCorr/job002/Movies/*_fractions.mrc"))) == 4
    assert not (sessions_root / "20261121_other_day" / "processing").exists()


def test_result_rows_point_at_images_that_exist(session):
    from sqlalchemy import select

    from airflow_provider_cryoem.results import schema

    store = results_store(None, str(session["processing"]))
    with store.engine.connect() as connection:
        motion = connection.execute(select(schema.motion_correction.c.micrograph_snapshot_full_path,
                                           schema.motion_correction.c.drift_plot_full_path)).all()
        picks = connection.execute(select(schema.particle_picker.c.summary_image_full_path)).scalars().all()
    paths = [p for row in motion for p in row] + list(picks)
    assert len(paths) == 3 * len(session["truth"].movies)
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in paths)


@pytest.mark.relion
def test_particles_are_batched_and_classified_in_2d_at_session_end(session):
    """The session's particles fill one (partial) batch, flushed at the end and classified by Relion."""
    import shutil

    if shutil.which("relion_refine") is None:
        pytest.skip("needs the Debian relion package")
    summary = results_store(None, str(session["processing"])).session_summary("dagtest")
    assert summary.stages["class2d"].succeeded == 1
    relion = session["processing"] / "relion"
    (batch,) = relion.glob("Select/job*/particles_split1.star")
    extracted = starfile.read(relion / "Extract/job005/particles.star", always_dict=True)["particles"]
    assert len(starfile.read(batch, always_dict=True)["particles"]) == len(extracted)
    assert list(relion.glob("Class2D/job*/class_gallery.png"))
    assert (relion / "Select").exists() and "Class2D" in (relion / "default_pipeline.star").read_text()
