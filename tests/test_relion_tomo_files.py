"""Relion 5 tomography project files: job folders, per-series STAR files, tomograms.star, the pipeline.

Relion 5 cannot run here, so the files are checked against what Relion 5.0 itself defines: every column
label and its value type as in `src/metadata_label.h`, process and node labels as in `src/pipeline_jobs.h`,
and the layout of its own tomography test data (one `data_global` table + one `data_<series>` table per
series file). Series, movie names and tilt order come from the tilt-series simulator.
"""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import starfile

from airflow_provider_cryoem.io import ImageFileError
from airflow_provider_cryoem.relion_project import (
    CtfValues,
    OpticsGroup,
    RelionProject,
    TiltAlignmentValues,
    read_pipeline,
    tomo_preprocessing,
)
from airflow_provider_cryoem.relion_project.star_text import parse_star
from airflow_provider_cryoem.simulate.tomo_files import movie_name, series_name
from airflow_provider_cryoem.simulate.tomo_settings import TomoSimulationSettings

# Relion 5.0.0 src/metadata_label.h: EMDL::addLabel(..., EMDL_<type>, "<label>", ...) for every label we write.
RELION5_LABEL_TYPES = {
    "rlnTomoName": "STRING", "rlnTomoTiltSeriesStarFile": "STRING", "rlnVoltage": "DOUBLE",
    "rlnSphericalAberration": "DOUBLE", "rlnAmplitudeContrast": "DOUBLE", "rlnMicrographOriginalPixelSize": "DOUBLE",
    "rlnTomoHand": "DOUBLE", "rlnOpticsGroupName": "STRING", "rlnTomoTiltSeriesPixelSize": "DOUBLE",
    "rlnTomoTomogramBinning": "DOUBLE", "rlnTomoSizeX": "INT", "rlnTomoSizeY": "INT", "rlnTomoSizeZ": "INT",
    "rlnTomoReconstructedTomogram": "STRING", "rlnMicrographMovieName": "STRING", "rlnTomoTiltMovieFrameCount": "INT",
    "rlnTomoNominalStageTiltAngle": "DOUBLE", "rlnTomoNominalTiltAxisAngle": "DOUBLE",
    "rlnMicrographPreExposure": "DOUBLE", "rlnTomoNominalDefocus": "DOUBLE", "rlnMicrographName": "STRING",
    "rlnAccumMotionTotal": "DOUBLE", "rlnAccumMotionEarly": "DOUBLE", "rlnAccumMotionLate": "DOUBLE",
    "rlnCtfImage": "STRING", "rlnDefocusU": "DOUBLE", "rlnDefocusV": "DOUBLE", "rlnCtfAstigmatism": "DOUBLE",
    "rlnDefocusAngle": "DOUBLE", "rlnCtfFigureOfMerit": "DOUBLE", "rlnCtfMaxResolution": "DOUBLE",
    "rlnTomoXTilt": "DOUBLE", "rlnTomoYTilt": "DOUBLE", "rlnTomoZRot": "DOUBLE", "rlnTomoXShiftAngst": "DOUBLE",
    "rlnTomoYShiftAngst": "DOUBLE",
    # written on request: the even/odd frame sums, the half tomograms, the denoised tomogram
    "rlnMicrographNameEven": "STRING", "rlnMicrographNameOdd": "STRING",
    "rlnTomoReconstructedTomogramHalf1": "STRING", "rlnTomoReconstructedTomogramHalf2": "STRING",
    "rlnTomoReconstructedTomogramDenoised": "STRING",
}
# Relion 5.0.0 src/pipeline_jobs.h: PROC_*_DIRNAME and the LABEL_*_TOMOGRAMS node labels; process labels are
# PROC_*_LABELNEW with ccpem-pipeliner's deeper layer (Relion's get_proc_type drops it).
EXPECTED_JOBS = {  # process -> (type label, output node, node label)
    "Import/job001/": ("relion.importtomo", "tilt_series.star", "TomogramGroupMetadata.star.relion.tomo.import"),
    "MotionCorr/job002/": ("relion.motioncorr.tomo.own", "corrected_tilt_series.star",
                           "TomogramGroupMetadata.star.relion.tomo.motioncorr"),
    "CtfFind/job003/": ("relion.ctffind.tomo.ctffind4", "tilt_series_ctf.star",
                        "TomogramGroupMetadata.star.relion.tomo.ctffind"),
    "ExcludeTiltImages/job004/": ("relion.excludetilts", "selected_tilt_series.star",
                                  "TomogramGroupMetadata.star.relion.tomo.excludeimages"),
    "AlignTiltSeries/job005/": ("relion.aligntiltseries.aretomo", "aligned_tilt_series.star",
                                "TomogramGroupMetadata.star.relion.tomo.aligntiltseries"),
    "Tomograms/job006/": ("relion.reconstructtomograms", "tomograms.star",
                          "TomogramGroupMetadata.star.relion.tomo.reconstruct"),
}
IMPORT_GLOBAL = ["rlnTomoName", "rlnTomoTiltSeriesStarFile", "rlnVoltage", "rlnSphericalAberration",
                 "rlnAmplitudeContrast", "rlnMicrographOriginalPixelSize", "rlnTomoHand", "rlnOpticsGroupName"]
IMPORT_TILT = ["rlnMicrographMovieName", "rlnTomoTiltMovieFrameCount", "rlnTomoNominalStageTiltAngle",
               "rlnTomoNominalTiltAxisAngle", "rlnMicrographPreExposure", "rlnTomoNominalDefocus"]
MOTION = ["rlnMicrographName", "rlnAccumMotionTotal", "rlnAccumMotionEarly", "rlnAccumMotionLate"]
CTF = ["rlnCtfImage", "rlnDefocusU", "rlnDefocusV", "rlnCtfAstigmatism", "rlnDefocusAngle", "rlnCtfFigureOfMerit",
       "rlnCtfMaxResolution"]
ALIGN = ["rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst", "rlnTomoYShiftAngst"]

SETTINGS = TomoSimulationSettings(tilt_min_deg=-9, tilt_max_deg=9, naming="tomo5")  # 7 tilts
OPTICS = OpticsGroup(movie_pixel_size_a=SETTINGS.pixel_size_a, micrograph_pixel_size_a=SETTINGS.pixel_size_a,
                     voltage_kv=SETTINGS.voltage_kv, cs_mm=SETTINGS.cs_mm,
                     amplitude_contrast=SETTINGS.amplitude_contrast)


def tilts(settings: TomoSimulationSettings, index: int) -> list[tuple[str, float, float]]:
    """(movie path, nominal angle, pre-exposure) of series `index` in acquisition order."""
    name = series_name(settings, index)
    return [(f"/data/raw/{movie_name(settings, name, order, angle, settings.session_start)}", angle,
             (order - 1) * settings.dose_per_tilt_e_a2)
            for order, angle in enumerate(settings.acquisition_order(), start=1)]


def ctf_of(angle: float) -> CtfValues:
    return CtfValues(defocus_u_a=40000.0 + 10 * angle, defocus_v_a=39500.0, astigmatism_angle_deg=55.0,
                     figure_of_merit=0.03, max_resolution_a=8.5)


def preprocess(project: RelionProject, settings: TomoSimulationSettings, index: int) -> list[tuple[str, float, float]]:
    """Import, motion-correct and CTF every tilt of series `index`, as the per-tilt stages would."""
    name = series_name(settings, index)
    collected = tilts(settings, index)
    for movie, angle, dose in collected:
        project.add_tilt_movie(name, movie, settings.n_frames, angle, settings.tilt_axis_deg, dose, settings.defocus_um)
        micrograph = project.job("tomo_motioncorr").path / "tilts" / Path(movie).with_suffix(".mrc").name
        project.add_motion_corrected_tilt(name, movie, micrograph, 3.0 + abs(angle) / 10, 1.0, 2.0 + abs(angle) / 10)
        project.add_tilt_ctf(name, movie, ctf_of(angle), micrograph.with_suffix(".ctf"))
    return collected


def align(project: RelionProject, settings: TomoSimulationSettings, index: int,
          collected: list[tuple[str, float, float]], left_out: int = 1) -> list[str]:
    """Keep all but the last `left_out` tilts, align them and reconstruct; returns the kept movies."""
    name = series_name(settings, index)
    kept = [movie for movie, _, _ in collected][:len(collected) - left_out]
    project.select_tilts(name, kept)
    project.add_aligned_tilt_series(name, [
        TiltAlignmentValues(movie=movie, y_tilt_deg=angle + 0.3, z_rot_deg=85.4, x_shift_a=12.0, y_shift_a=-4.0)
        for movie, angle, _ in collected if movie in kept])
    project.add_tomogram(name, project.tomogram_path(name), 4.0, [64, 64, 38])
    return kept


def check_labels_and_types(table: dict) -> None:
    """Every column is a Relion 5 label, and INT labels hold whole numbers."""
    for block, frame in table.items():
        assert set(frame.columns) <= set(RELION5_LABEL_TYPES), (block, set(frame.columns) - set(RELION5_LABEL_TYPES))
        for column in frame.columns:
            if RELION5_LABEL_TYPES[column] == "INT":
                assert frame[column].dtype.kind == "i", (block, column)
            elif RELION5_LABEL_TYPES[column] == "DOUBLE":
                assert frame[column].dtype.kind in "if", (block, column)


@pytest.fixture
def project(tmp_path: Path) -> RelionProject:
    project = RelionProject(tmp_path, "relion5", OPTICS)
    project.reserve_jobs(tomo_preprocessing("aretomo"))
    return project


def test_tomography_jobs_are_numbered_like_cryoem_services_with_relion5_labels(project: RelionProject):
    pipeline = read_pipeline(project.root, "relion5")
    assert {p.name: p.type_token for p in pipeline.processes} == {
        name: label for name, (label, _, _) in EXPECTED_JOBS.items()}
    nodes = {node.name: node.type_token for node in pipeline.nodes}
    assert nodes == {name + file: node_label for name, (_, file, node_label) in EXPECTED_JOBS.items()}
    names = list(EXPECTED_JOBS)
    assert pipeline.input_edges == [(names[i] + EXPECTED_JOBS[names[i]][1], names[i + 1])
                                    for i in range(len(names) - 1)]
    for name, (label, _, _) in EXPECTED_JOBS.items():
        job_star = parse_star((project.root / name / "job.star").read_text())
        assert job_star["job"].pairs == {"rlnJobTypeLabel": label, "rlnJobIsContinue": "0", "rlnJobIsTomo": "1"}
    options = dict(parse_star((project.root / "AlignTiltSeries/job005/job.star").read_text())
                   ["joboptions_values"].rows)
    assert options["in_tiltseries"] == "ExcludeTiltImages/job004/selected_tilt_series.star"
    assert (options["do_aretomo2"], options["do_imod_fiducials"], options["do_imod_patchtrack"]) == ("Yes", "No", "No")
    assert (project.root / "Tomograms" / "Live_tomograms").resolve().name == "job006"


def test_every_job_writes_a_global_table_and_one_table_per_series(project: RelionProject):
    collected = preprocess(project, SETTINGS, 0)
    kept = align(project, SETTINGS, 0, collected)
    name = series_name(SETTINGS, 0)
    root = project.root
    for job, file, columns, tilt_columns in (
            ("Import/job001/", "tilt_series.star", IMPORT_GLOBAL, IMPORT_TILT),
            ("MotionCorr/job002/", "corrected_tilt_series.star", IMPORT_GLOBAL + ["rlnTomoTiltSeriesPixelSize"],
             IMPORT_TILT + MOTION),
            ("CtfFind/job003/", "tilt_series_ctf.star", IMPORT_GLOBAL + ["rlnTomoTiltSeriesPixelSize"],
             IMPORT_TILT + MOTION + CTF),
            ("ExcludeTiltImages/job004/", "selected_tilt_series.star",
             IMPORT_GLOBAL + ["rlnTomoTiltSeriesPixelSize"], IMPORT_TILT + MOTION + CTF),
            ("AlignTiltSeries/job005/", "aligned_tilt_series.star", IMPORT_GLOBAL + ["rlnTomoTiltSeriesPixelSize"],
             IMPORT_TILT + MOTION + CTF + ALIGN)):
        table = starfile.read(root / job / file, always_dict=True)
        assert list(table) == ["global"] and list(table["global"].columns) == columns, job
        assert table["global"].to_dict("records")[0] == {
            "rlnTomoName": name, "rlnTomoTiltSeriesStarFile": f"{job}tilt_series/{name}.star",
            "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
            "rlnMicrographOriginalPixelSize": 2.0, "rlnTomoHand": -1.0, "rlnOpticsGroupName": "opticsGroup1",
            **({"rlnTomoTiltSeriesPixelSize": 2.0} if len(columns) > len(IMPORT_GLOBAL) else {})}
        series = starfile.read(root / job / "tilt_series" / f"{name}.star", always_dict=True)
        assert list(series) == [name] and list(series[name].columns) == tilt_columns, job
        check_labels_and_types(table | series)
        expected = [movie for movie, _, _ in collected] if "Exclude" not in job and "Align" not in job else kept
        assert list(series[name]["rlnMicrographMovieName"]) == expected, job

    rows = starfile.read(root / "AlignTiltSeries/job005/tilt_series" / f"{name}.star")
    first = rows.iloc[0]
    movie, angle, dose = collected[0]
    assert first["rlnMicrographMovieName"] == movie and first["rlnTomoTiltMovieFrameCount"] == SETTINGS.n_frames
    assert (first["rlnTomoNominalStageTiltAngle"], first["rlnTomoNominalTiltAxisAngle"]) == (angle, 85.0)
    assert (first["rlnMicrographPreExposure"], first["rlnTomoNominalDefocus"]) == (dose, -SETTINGS.defocus_um)
    assert first["rlnMicrographName"] == f"MotionCorr/job002/tilts/{Path(movie).stem}.mrc"
    assert first["rlnCtfImage"] == f"MotionCorr/job002/tilts/{Path(movie).stem}.ctf:mrc"
    assert (first["rlnDefocusU"], first["rlnCtfAstigmatism"], first["rlnCtfMaxResolution"]) == (40000.0, 500.0, 8.5)
    assert (first["rlnTomoYTilt"], first["rlnTomoZRot"], first["rlnTomoXShiftAngst"]) == (angle + 0.3, 85.4, 12.0)
    assert list(rows["rlnMicrographPreExposure"]) == [d for _, _, d in collected[:len(kept)]]  # acquisition order
    # ctffind_runner.cpp's gathering of every tilt's fit, one anonymous block without the micrograph name
    fits = starfile.read(root / "CtfFind/job003/power_spectra_fits.star", always_dict=True)
    assert list(fits) == [""] and list(fits[""].columns) == CTF
    assert list(fits[""]["rlnCtfImage"]) == list(starfile.read(
        root / "CtfFind/job003/tilt_series" / f"{name}.star")["rlnCtfImage"])
    check_labels_and_types(fits)


def test_tomograms_star_lists_each_series_with_its_bin1_size_and_own_copy_of_the_tilts(project: RelionProject):
    tomo5 = SETTINGS
    serialem = TomoSimulationSettings(tilt_min_deg=-6, tilt_max_deg=6)
    align(project, tomo5, 1, preprocess(project, tomo5, 1))
    align(project, serialem, 0, preprocess(project, serialem, 0), left_out=0)
    table = starfile.read(project.root / "Tomograms/job006/tomograms.star", always_dict=True)
    check_labels_and_types(table)
    rows = table["global"].set_index("rlnTomoName")
    assert list(rows.index) == ["Position_1_2", "TS_01"]
    assert list(table["global"].columns)[-6:] == ["rlnTomoTiltSeriesPixelSize", "rlnTomoTomogramBinning",
                                                  "rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ",
                                                  "rlnTomoReconstructedTomogram"]
    ts = rows.loc["TS_01"]
    assert (ts["rlnTomoTomogramBinning"], ts["rlnTomoSizeX"], ts["rlnTomoSizeZ"]) == (4.0, 256, 152)
    assert ts["rlnTomoReconstructedTomogram"] == "Tomograms/job006/tomograms/rec_TS_01.mrc"
    assert ts["rlnTomoTiltSeriesStarFile"] == "Tomograms/job006/tilt_series/TS_01.star"
    copied = starfile.read(project.root / ts["rlnTomoTiltSeriesStarFile"])
    aligned = starfile.read(project.root / "AlignTiltSeries/job005/tilt_series/TS_01.star")
    assert copied.equals(aligned) and len(copied) == len(serialem.acquisition_order())


def test_a_retried_tilt_replaces_its_row_instead_of_adding_one(project: RelionProject):
    name = series_name(SETTINGS, 0)
    collected = preprocess(project, SETTINGS, 0)
    movie, angle, _ = collected[2]
    micrograph = project.job("tomo_motioncorr").path / "tilts" / Path(movie).with_suffix(".mrc").name
    project.add_tilt_movie(name, movie, SETTINGS.n_frames, angle, SETTINGS.tilt_axis_deg, 99.0, SETTINGS.defocus_um)
    project.add_motion_corrected_tilt(name, movie, micrograph, 42.0, 1.0, 41.0)
    project.add_tilt_ctf(name, movie, ctf_of(angle), micrograph.with_suffix(".ctf"))
    for job, global_file in (("Import/job001", "tilt_series.star"), ("MotionCorr/job002", "corrected_tilt_series.star"),
                             ("CtfFind/job003", "tilt_series_ctf.star")):
        rows = starfile.read(project.root / job / "tilt_series" / f"{name}.star")
        assert len(rows) == len(collected) and rows["rlnMicrographMovieName"].is_unique, job
        assert rows.set_index("rlnMicrographMovieName").loc[movie, "rlnMicrographPreExposure"] == 99.0, job
        assert len(starfile.read(project.root / job / global_file)) == 1, job
    ctf_rows = starfile.read(project.root / "CtfFind/job003/tilt_series" / f"{name}.star")
    assert ctf_rows.set_index("rlnMicrographMovieName").loc[movie, "rlnAccumMotionTotal"] == 42.0
    assert len(starfile.read(project.root / "CtfFind/job003/power_spectra_fits.star")) == len(collected)


def test_a_retried_alignment_replaces_the_series_tilts(project: RelionProject):
    name = series_name(SETTINGS, 0)
    collected = preprocess(project, SETTINGS, 0)
    align(project, SETTINGS, 0, collected, left_out=0)
    kept = align(project, SETTINGS, 0, collected, left_out=3)
    for job in ("ExcludeTiltImages/job004", "AlignTiltSeries/job005", "Tomograms/job006"):
        rows = starfile.read(project.root / job / "tilt_series" / f"{name}.star")
        assert list(rows["rlnMicrographMovieName"]) == kept, job
    assert len(starfile.read(project.root / "Tomograms/job006/tomograms.star")) == 1


def _concurrent_tilts(root: str, index: int) -> None:
    project = RelionProject(root, "relion5", OPTICS)
    preprocess(project, SETTINGS, index)
    preprocess(project, SETTINGS, index)  # every tilt retried


def test_concurrent_writers_add_every_tilt_once(project: RelionProject):
    n_workers = 4
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_concurrent_tilts, args=(str(project.root), index)) for index in range(n_workers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * n_workers
    table = starfile.read(project.root / "CtfFind/job003/tilt_series_ctf.star")
    assert sorted(table["rlnTomoName"]) == sorted(series_name(SETTINGS, index) for index in range(n_workers))
    for index in range(n_workers):
        rows = starfile.read(project.root / "CtfFind/job003/tilt_series" / f"{series_name(SETTINGS, index)}.star")
        assert len(rows) == len(SETTINGS.acquisition_order()) and rows["rlnMicrographMovieName"].is_unique


def test_imod_alignment_is_its_own_job_reading_the_ctf_when_no_tilts_were_excluded(tmp_path: Path):
    project = RelionProject(tmp_path, "relion5", OPTICS)
    project.reserve_jobs(("tomo_import", "tomo_motioncorr", "tomo_ctffind", "aligntiltseries_imod_patchtrack"))
    name = series_name(SETTINGS, 0)
    collected = preprocess(project, SETTINGS, 0)
    project.add_aligned_tilt_series(name, [TiltAlignmentValues(movie=m, y_tilt_deg=a, z_rot_deg=85.0, x_shift_a=0.0,
                                                               y_shift_a=0.0) for m, a, _ in collected],
                                    aligner="imod_patchtrack")
    processes = {p.name: p.type_token for p in read_pipeline(tmp_path, "relion5").processes}
    assert processes["AlignTiltSeries/job004/"] == "relion.aligntiltseries.imod_patchtrack"
    assert ("CtfFind/job003/tilt_series_ctf.star", "AlignTiltSeries/job004/") in read_pipeline(
        tmp_path, "relion5").input_edges
    assert len(starfile.read(tmp_path / "AlignTiltSeries/job004/tilt_series" / f"{name}.star")) == len(collected)


def test_bad_tomography_input_gets_errors_naming_the_problem(tmp_path: Path, project: RelionProject):
    name = series_name(SETTINGS, 0)
    movie, angle, dose = tilts(SETTINGS, 0)[0]
    with pytest.raises(ValueError, match="Relion 3.1 has no tomography"):
        RelionProject(tmp_path / "old", "relion3", OPTICS).add_tilt_movie(name, movie, 4, angle, 85.0, dose, 4.0)
    with pytest.raises(ValueError, match="cannot name a STAR block"):
        project.add_tilt_movie("TS 01", movie, 4, angle, 85.0, dose, 4.0)
    with pytest.raises(ImageFileError, match="record the earlier stage first"):
        project.add_tilt_ctf(name, movie, ctf_of(angle), project.root / "x.ctf")
    project.add_tilt_movie(name, movie, 4, angle, 85.0, dose, 4.0)
    with pytest.raises(ImageFileError, match="has no row for"):
        project.add_tilt_ctf(name, movie, ctf_of(angle), project.root / "x.ctf")  # motion correction missing
    with pytest.raises(ImageFileError, match="has no rows for"):
        project.select_tilts(name, [movie])
    with pytest.raises(ValueError, match="unknown tilt-series aligner"):
        project.add_aligned_tilt_series(name, [], aligner="etomo")
    with pytest.raises(ImageFileError, match="align the series first"):
        project.add_tomogram(name, project.tomogram_path(name), 4.0, [64, 64, 38])
