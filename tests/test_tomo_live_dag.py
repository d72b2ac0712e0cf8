"""tomo_live end to end with `airflow dags test`: simulated tilt series in, tomograms, rows, Relion 5 files out."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import starfile

from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.simulate import GAIN_REFERENCE_NAME, TomoSimulationSettings, write_tomo_session
from airflow_provider_cryoem.simulate.session import END_MARKER_NAME

from .conftest import AIRFLOW

SETTINGS = TomoSimulationSettings(n_series=2, image_size_px=256, n_frames=3, tilt_min_deg=-45, tilt_max_deg=45,
                                  tilt_step_deg=9, seed=4)


@pytest.fixture(scope="module")
def session(tmp_path_factory, airflow_env):
    """A finished two-series session (one tilt of the second series lost to a truncated file), one run."""
    root = tmp_path_factory.mktemp("data")
    watch_dir = root / "visit" / "raw"
    truth = write_tomo_session(SETTINGS, watch_dir)
    broken = watch_dir / truth.series[1].tilts[-1].movie_name
    broken.write_bytes(broken.read_bytes()[:2000])
    (watch_dir / END_MARKER_NAME).write_text("")
    conf = {"session_name": "tomotest", "watch_dir": str(watch_dir), "pixel_size_a": SETTINGS.pixel_size_a,
            "dose_per_frame_e_a2": SETTINGS.dose_per_frame_e_a2, "tilt_axis_deg": SETTINGS.tilt_axis_deg,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME), "thickness_nm": SETTINGS.thickness_nm,
            "tilt_range_deg": 45, "tomogram_binning": 2, "movie_glob": "*.tif"}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(root)}
    run = subprocess.run([AIRFLOW, "dags", "test", "tomo_live", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True)
    processing = root / "visit" / "processing"
    return {"truth": truth, "run": run, "processing": processing, "env": env, "conf": conf,
            "store": results_store(None, str(processing))}


def test_every_series_is_completed_once_and_reconstructed(session):
    assert session["run"].returncode == 0, session["run"].stdout[-6000:]
    summary = session["store"].session_summary("tomotest")
    assert summary.ended
    series = session["store"].tilt_series_of_session(summary.session_id)
    assert [s.name for s in series] == [s.name for s in session["truth"].series]
    assert all(s.status == "complete" for s in series)
    assert (summary.tomography.series_complete, summary.tomography.series_reconstructed) == (2, 2)


def test_the_broken_tilt_is_failed_by_name_and_left_out_of_its_series(session):
    summary = session["store"].session_summary("tomotest")
    broken = session["truth"].series[1].tilts[-1].movie_name
    assert [f.movie for f in summary.failures] == [broken]
    tilts = {t.movie: t for s in session["store"].tilt_series_of_session(summary.session_id) for t in s.tilts}
    assert tilts[broken].excluded and "failed" in tilts[broken].exclusion_reason


def test_relion5_files_list_every_tilt_and_tomogram(session):
    relion = session["processing"] / "relion"
    tilt_series = starfile.read(next(relion.glob("Import/job*/tilt_series.star")))
    assert sorted(tilt_series["rlnTomoName"]) == sorted(s.name for s in session["truth"].series)
    tomograms = starfile.read(next(relion.glob("Tomograms/job*/tomograms.star")))
    for path in tomograms["rlnTomoReconstructedTomogram"]:
        assert (relion / path).is_file()
    aligned = list(relion.glob("AlignTiltSeries/job*/aligned_tilt_series.star"))
    assert aligned and (relion / "default_pipeline.star").read_text().count("relion.reconstructtomograms") == 1


def test_series_images_exist(session):
    summary = session["store"].session_summary("tomotest")
    from sqlalchemy import select

    from airflow_provider_cryoem.results import schema

    with session["store"].engine.connect() as connection:
        rows = connection.execute(select(schema.tomogram)).mappings().all()
    assert len(rows) == 2 and summary.tomography.series_reconstructed == 2
    for row in rows:
        for column in ("central_slice_image", "projection_xz_image", "alignment_plot", "tilt_series_movie"):
            assert row[column] and Path(row[column]).is_file(), column


def test_the_demo_report_lists_each_series_tomogram_images_and_relion_jobs(session, capsys):
    """`make demo TOMO=1` ends with this report; here on the module's finished session."""
    from airflow_provider_cryoem.demo import print_tomography

    print_tomography("tomotest", session["processing"])
    report = capsys.readouterr().out
    for series in session["truth"].series:
        assert f"{series.name}: " in report
    tomograms = sorted(session["processing"].glob("relion/Tomograms/job*/tomograms/rec_*.mrc"))
    assert len(tomograms) == 2 and all(str(path) in report for path in tomograms)
    assert report.count("mean alignment residual") == 2 and report.count("_xy.jpg (central XY slice)") == 2
    assert "Import/job001, MotionCorr/job002, CtfFind/job003" in report and "tomograms.star" in report
