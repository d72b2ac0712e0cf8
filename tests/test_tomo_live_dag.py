"""tomo_live end to end with `airflow dags test`: simulated tilt series in, tomograms, rows, Relion 5 files out,
then each tomogram denoised by Topaz's pretrained 3D model (real, on the CPU) and segmented by membrain-seg.

membrain-seg runs for real too (`membrain segment`, its own environment, scripts/membrain_env.sh) but with a
small random-weight checkpoint made here (devtools/membrain_checkpoint.py), since no trained one may be
downloaded: the segmentation's content is meaningless; loading, sliding window, connected components, the
files, rows and pictures are real. Tomograms are kept small (binned 4, 60 nm deep: 64 × 64 × 75 voxels, one
Topaz cube) so the CPU denoising takes seconds."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import starfile
import yaml

from airflow_provider_cryoem.devtools.membrain_checkpoint import write_random_checkpoint
from airflow_provider_cryoem.io import read_mrc, read_mrc_pixel_size_a, read_mrc_shape
from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.relion_project import read_pipeline
from airflow_provider_cryoem.simulate import GAIN_REFERENCE_NAME, TomoSimulationSettings, write_tomo_session
from airflow_provider_cryoem.simulate.session import END_MARKER_NAME

from ._doppio import display_problems, processes
from .conftest import AIRFLOW

REPO = Path(__file__).resolve().parents[1]

SETTINGS = TomoSimulationSettings(n_series=2, image_size_px=256, n_frames=3, tilt_min_deg=-45, tilt_max_deg=45,
                                  tilt_step_deg=9, thickness_nm=60, vesicle_radius_min_a=120,
                                  vesicle_radius_max_a=220, seed=4)
# Denoising and segmentation on the CPU add a minute or two per series on a quiet machine, several on a busy one.
pytestmark = pytest.mark.timeout(1800)


def _recipes_with_denoise_and_segment(folder: Path) -> Path:
    """recipes/tomo_live.yaml as it is, with its optional denoise and segment stages switched on."""
    recipe = yaml.safe_load((REPO / "recipes" / "tomo_live.yaml").read_text())
    recipe["stages"]["denoise"] = {"tool": "topaz", "after": ["tomogram"]}
    recipe["stages"]["segment"] = {"tool": "membrain", "after": ["denoise"]}
    folder.mkdir(parents=True)
    (folder / "tomo_live.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def session(tmp_path_factory, airflow_env):
    """A finished two-series session (one tilt of the second series lost to a truncated file), one run."""
    root = tmp_path_factory.mktemp("data")
    subprocess.run(["bash", str(REPO / "scripts" / "membrain_env.sh")], check=True, capture_output=True, timeout=900)
    path = f"{REPO / '.venv-membrain' / 'bin'}{os.pathsep}{os.environ['PATH']}"
    checkpoint = write_random_checkpoint(root / "models" / "random_membrain.ckpt", shutil.which("membrain", path=path))
    watch_dir = root / "visit" / "raw"
    truth = write_tomo_session(SETTINGS, watch_dir)
    broken = watch_dir / truth.series[1].tilts[-1].movie_name
    broken.write_bytes(broken.read_bytes()[:2000])
    (watch_dir / END_MARKER_NAME).write_text("")
    conf = {"session_name": "tomotest", "watch_dir": str(watch_dir), "pixel_size_a": SETTINGS.pixel_size_a,
            "dose_per_frame_e_a2": SETTINGS.dose_per_frame_e_a2, "tilt_axis_deg": SETTINGS.tilt_axis_deg,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME), "thickness_nm": SETTINGS.thickness_nm,
            "tilt_range_deg": 45, "tomogram_binning": 4, "movie_glob": "*.tif",
            "membrain_checkpoint_path": str(checkpoint)}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(root), "PATH": path,
           "CRYOEM_RECIPES_DIR": str(_recipes_with_denoise_and_segment(root / "recipes"))}
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


def test_each_series_is_denoised_and_segmented_with_rows_and_pictures(session):
    store = session["store"]
    summary = store.session_summary("tomotest")
    for series in store.tilt_series_of_session(summary.session_id):
        processed = {row["processing_type"]: row for row in store.processed_tomograms(series.tilt_series_id)}
        assert sorted(processed) == ["Denoised", "Segmented"], series.name
        denoised, segmented = processed["Denoised"], processed["Segmented"]
        assert read_mrc_shape(denoised["file_path"]) == read_mrc_shape(segmented["file_path"])
        assert denoised["file_path"].endswith(".denoised.mrc") and "/Denoise/job" in denoised["file_path"]
        assert "/Segmentation/job" in segmented["file_path"]
        for image in (denoised["central_slice_image"], segmented["central_slice_image"],
                      segmented["projection_xy_image"]):
            assert Path(image).is_file() and Path(image).stat().st_size > 1000, image
    assert not [f for f in summary.failures if f.stage.startswith(("denoise", "segment"))]


def test_denoising_changes_the_tomogram_and_keeps_its_geometry(session):
    store = session["store"]
    summary = store.session_summary("tomotest")
    series = store.tilt_series_of_session(summary.session_id)[0]
    denoised = next(row for row in store.processed_tomograms(series.tilt_series_id)
                    if row["processing_type"] == "Denoised")
    relion = session["processing"] / "relion"
    raw_path = next(relion.glob(f"Tomograms/job*/tomograms/rec_{series.name}.mrc"))
    raw, smooth = read_mrc(raw_path), read_mrc(denoised["file_path"])
    assert read_mrc_pixel_size_a(denoised["file_path"]) == pytest.approx(read_mrc_pixel_size_a(raw_path))
    # Topaz's network removes noise: neighbouring voxels agree far more after it than before
    assert _neighbour_correlation(smooth) > _neighbour_correlation(raw) + 0.2


def _neighbour_correlation(volume) -> float:
    import numpy as np

    data = np.asarray(volume, dtype=np.float64)
    return float(np.corrcoef(data[:, :, 1:].ravel(), data[:, :, :-1].ravel())[0, 1])


def test_relion5_denoise_job_lists_the_denoised_tomograms_and_segmentation_job_reads_it(session):
    relion = session["processing"] / "relion"
    denoised = starfile.read(next(relion.glob("Denoise/job*/tomograms.star")))
    assert sorted(denoised["rlnTomoName"]) == sorted(s.name for s in session["truth"].series)
    for raw, smooth in zip(denoised["rlnTomoReconstructedTomogram"], denoised["rlnTomoReconstructedTomogramDenoised"]):
        assert (relion / raw).is_file() and (relion / smooth).is_file() and raw != smooth
    pipeline = read_pipeline(relion, "relion5")
    types = [process.type_token for process in pipeline.processes]
    assert types.count("relion.denoisetomo") == 1 and types.count("membrain.segment") == 1
    denoise = next(process.name for process in pipeline.processes if process.type_token == "relion.denoisetomo")
    segment = next(process.name for process in pipeline.processes if process.type_token == "membrain.segment")
    assert (f"{denoise}tomograms.star", segment) in pipeline.input_edges
    masks = [node for process, node in pipeline.output_edges if process == segment]
    assert len(masks) == len(session["truth"].series) and all((relion / mask).is_file() for mask in masks)


# What ccpem-pipeliner 1.6.1 (doppio) cannot show in a Relion 5 tomography project, Relion's own included:
# the Import and ExcludeTiltImages jobs have no display of their own, and the pipeliner's display of their
# TomogramGroupMetadata output (Relion 5's node type for tilt-series files) looks for tomogram columns a
# tilt-series file never has; membrain-seg has no job type in 1.6.1.
PIPELINER_GAPS = {"Import": "_rlnTomoReconstructedTomogram column headers found",
                  "ExcludeTiltImages": "_rlnTomoReconstructedTomogram column headers found",
                  "Segmentation": "Job type 'membrain.segment' not found"}


def test_doppio_shows_every_tomography_job_the_pipeliner_knows(session, tmp_path, monkeypatch):
    root = tmp_path / "relion"
    shutil.copytree(session["processing"] / "relion", root, symlinks=True)
    job_folders = {f"{p.parent.name}/{p.name}/" for p in root.glob("*/job[0-9][0-9][0-9]") if not p.is_symlink()}
    assert {p.name for p in processes(root)} == job_folders
    problems = display_problems(root, monkeypatch)
    for job, reasons in problems.items():
        gap = PIPELINER_GAPS.get(job.split("/")[0])
        assert gap is not None and all(gap in reason for reason in reasons), (job, reasons)
    shown = job_folders - set(problems)
    assert {job.split("/")[0] for job in shown} == {"MotionCorr", "CtfFind", "AlignTiltSeries", "Tomograms",
                                                     "Denoise"}


def test_a_corrupt_tomogram_an_oversized_one_and_a_missing_checkpoint_are_recorded_per_series(session, tmp_path):
    """Bad input at the two stages: each is the series' failed step with the file or setting named, never the
    task's failure (the session goes on). Recorded under a series name of its own, after the module's checks."""
    from airflow_provider_cryoem.config import SessionConfig
    from airflow_provider_cryoem.pipeline.tomo_postprocess import denoise_series, segment_series
    from airflow_provider_cryoem.recipes.stages import DenoiseParams, SegmentationParams

    store = session["store"]
    summary = store.session_summary("tomotest")
    series = store.tilt_series_of_session(summary.session_id)[0]
    relion = session["processing"] / "relion"
    tomogram = next(relion.glob(f"Tomograms/job*/tomograms/rec_{series.name}.mrc"))
    corrupt = tmp_path / "rec_TS_bad.mrc"
    corrupt.write_bytes(tomogram.read_bytes()[:3000])
    item = {"session_id": summary.session_id, "session_name": "tomotest",
            "processing_job_id": summary.failures[0].processing_job_id, "watch_dir": session["conf"]["watch_dir"],
            "processing_path": str(session["processing"]), "relion_dir": str(relion), "relion_dialect": "relion5",
            "experiment": "tomography", "results_conn_id": None,
            "tilt_series": {"tilt_series_id": series.tilt_series_id, "name": "TS_bad"}}
    config = SessionConfig(session_name="tomotest", watch_dir=session["conf"]["watch_dir"])
    cases = [
        (denoise_series, DenoiseParams(), {"tomogram": {"path": str(corrupt)}}, str(corrupt)),
        (denoise_series, DenoiseParams(memory_budget_gb=0.1), {"tomogram": {"path": str(tomogram)}},
         "stages.denoise.params.memory_budget_gb"),
        (segment_series, SegmentationParams(), {"tomogram": {"path": str(tomogram)}}, "membrain_checkpoint_path"),
    ]
    for stage, params, extra, named in cases:
        outcome = stage(config, params, "topaz" if stage is denoise_series else "membrain", "local", item | extra)
        assert named in outcome["skipped"], outcome["skipped"]
        failure = next(f for f in store.session_summary("tomotest").failures if f.reason and named in f.reason)
        assert failure.stage in ("denoise TS_bad", "segment TS_bad")
