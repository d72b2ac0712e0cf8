"""The Relion project writer: job folders, aggregate STAR files, default_pipeline.star, concurrency.

Data come from the simulator: its clean micrographs (with Poisson noise) stand in for motion-corrected
micrographs, its planted particles for picks and its planted defocus for the CTF fit. Tests that
run real Relion 3.1 programs on the output are in test_relion_project_relion.py.
"""
from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import starfile

from airflow_provider_cryoem.config import SessionConfig
from airflow_provider_cryoem.io import ImageFileError, write_mrc
from airflow_provider_cryoem.relion_project import (
    CtfValues,
    NodeType,
    OpticsGroup,
    RelionProject,
    read_pipeline,
)
from airflow_provider_cryoem.simulate import SpaSimulationSettings, simulate_movie

DIALECTS = ("relion3", "relion5")
PIXEL_SIZE_A = 2.0
BOX_PX = 48
OPTICS = OpticsGroup(movie_pixel_size_a=PIXEL_SIZE_A, micrograph_pixel_size_a=PIXEL_SIZE_A, voltage_kv=300.0,
                     cs_mm=2.7, amplitude_contrast=0.1, particle_box_px=BOX_PX, particle_pixel_size_a=PIXEL_SIZE_A)
SIMULATION = SpaSimulationSettings(image_size_px=256, n_frames=8, pixel_size_a=PIXEL_SIZE_A, particle_diameter_a=64.0,
                                   particles_per_micrograph=24, seed=11)


@dataclass
class WrittenMicrograph:
    """What populate_project wrote for one simulated movie (paths relative to the project)."""

    micrograph: str
    ctf: CtfValues
    ctf_image: Path
    coordinates_px: list[list[float]]
    stack: str


def _particle_stack(micrograph: np.ndarray, coordinates_px: list[list[float]]) -> np.ndarray:
    """Boxes around each pick, contrast inverted and normalised (particles white, as Relion expects)."""
    half = BOX_PX // 2
    boxes = [-micrograph[round(y) - half:round(y) + half, round(x) - half:round(x) + half]
             for x, y in coordinates_px]
    stack = np.asarray(boxes, dtype=np.float32)
    return (stack - stack.mean(axis=(1, 2), keepdims=True)) / stack.std(axis=(1, 2), keepdims=True)


def populate_project(root: Path, dialect: str, n_movies: int) -> list[WrittenMicrograph]:
    """Do the SPA preprocessing bookkeeping for `n_movies` simulated movies, as the stages would."""
    project = RelionProject(root, dialect, OPTICS)  # type: ignore[arg-type]
    project.reserve_jobs()
    written = []
    for index in range(n_movies):
        movie = simulate_movie(SIMULATION, index)
        movie_path = root.parent / "raw" / f"movie_{index:03d}.tiff"
        project.add_movie(movie_path)
        mic_path = project.job("motioncorr").file_for(movie_path, ".mrc")
        noisy = np.random.default_rng(index).poisson(movie.clean_micrograph).astype(np.float32)
        write_mrc(mic_path, noisy, PIXEL_SIZE_A)
        steps_a = np.hypot(*np.diff(np.asarray(movie.truth.shifts_px) * PIXEL_SIZE_A, axis=0).T)
        project.add_motion_corrected(mic_path, steps_a.sum(), steps_a[:3].sum(), steps_a[3:].sum())
        ctf = CtfValues(defocus_u_a=movie.truth.defocus_u_a, defocus_v_a=movie.truth.defocus_v_a,
                        astigmatism_angle_deg=movie.truth.astigmatism_angle_deg, figure_of_merit=0.2,
                        max_resolution_a=6.0)
        spectrum = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(noisy)))).astype(np.float32)
        ctf_image = write_mrc(project.job("ctffind").file_for(mic_path, ".ctf"), spectrum, PIXEL_SIZE_A)
        project.add_ctf(mic_path, ctf, ctf_image)
        inside = BOX_PX // 2 + 1
        coordinates = [[p.x_px, p.y_px] for p in movie.truth.particles
                       if inside <= p.x_px < SIMULATION.image_size_px - inside
                       and inside <= p.y_px < SIMULATION.image_size_px - inside]
        project.add_picks(mic_path, coordinates)
        stack_path = write_mrc(project.job("extract").file_for(mic_path, ".mrcs"),
                               _particle_stack(noisy, coordinates), PIXEL_SIZE_A, is_stack=True)
        project.add_particles(mic_path, stack_path, coordinates, ctf)
        written.append(WrittenMicrograph(project.relative(mic_path), ctf, ctf_image, coordinates,
                                         project.relative(stack_path)))
    return written


def _processes(root: Path) -> dict:
    return starfile.read(root / "default_pipeline.star", always_dict=True)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_new_project_numbers_preprocessing_jobs_positionally_with_live_aliases(tmp_path: Path, dialect: str) -> None:
    project = RelionProject(tmp_path, dialect, OPTICS)
    jobs = project.reserve_jobs()
    assert [job.name for job in jobs] == ["Import/job001/", "MotionCorr/job002/", "CtfFind/job003/",
                                          "AutoPick/job004/", "Extract/job005/"]
    assert (tmp_path / "MotionCorr" / "Live_motioncorr").resolve() == (tmp_path / "MotionCorr" / "job002")
    assert (tmp_path / "Extract" / "Live_all_particles").resolve() == (tmp_path / "Extract" / "job005")
    blocks = _processes(tmp_path)
    assert blocks["pipeline_general"]["rlnPipeLineJobCounter"] == 6
    processes = blocks["pipeline_processes"]
    assert list(processes["rlnPipeLineProcessAlias"]) == [
        "Import/Live_import/", "MotionCorr/Live_motioncorr/", "CtfFind/Live_ctffind/", "AutoPick/Live_autopick/",
        "Extract/Live_all_particles/"]
    if dialect == "relion3":
        assert list(processes["rlnPipeLineProcessType"]) == [0, 1, 2, 4, 5]
        assert set(processes["rlnPipeLineProcessStatus"]) == {0}
        job_star = starfile.read(tmp_path / "MotionCorr/job002/job.star", always_dict=True)
        assert job_star["job"]["rlnJobType"] == 1
    else:
        assert list(processes["rlnPipeLineProcessTypeLabel"]) == [
            "relion.import.movies", "relion.motioncorr.own", "relion.ctffind.ctffind4", "relion.autopick.log",
            "relion.extract"]
        assert set(processes["rlnPipeLineProcessStatusLabel"]) == {"Running"}
        job_star = starfile.read(tmp_path / "MotionCorr/job002/job.star", always_dict=True)
        assert job_star["job"]["rlnJobTypeLabel"] == "relion.motioncorr.own"
    assert job_star["job"]["rlnJobIsContinue"] == 0
    options = dict(zip(job_star["joboptions_values"]["rlnJobOptionVariable"],
                       job_star["joboptions_values"]["rlnJobOptionValue"]))
    assert options["input_star_mics"] == "Import/job001/movies.star"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_pipeline_nodes_and_edges_chain_the_preprocessing_jobs(tmp_path: Path, dialect: str) -> None:
    RelionProject(tmp_path, dialect, OPTICS).reserve_jobs()
    blocks = _processes(tmp_path)
    nodes = blocks["pipeline_nodes"]
    coords = "AutoPick/job004/coords_suffix_autopick.star" if dialect == "relion3" else "AutoPick/job004/autopick.star"
    if dialect == "relion3":
        types = dict(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeType"]))
        assert types == {"Import/job001/movies.star": 0, "MotionCorr/job002/corrected_micrographs.star": 1,
                         "CtfFind/job003/micrographs_ctf.star": 1, coords: 2, "Extract/job005/particles.star": 3}
        assert (tmp_path / coords).read_text().strip() == "CtfFind/job003/micrographs_ctf.star"
    else:
        labels = dict(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeTypeLabel"]))
        assert labels == {
            "Import/job001/movies.star": "MicrographMovieGroupMetadata.star.relion",
            "MotionCorr/job002/corrected_micrographs.star": "MicrographGroupMetadata.star.relion.motioncorr",
            "CtfFind/job003/micrographs_ctf.star": "MicrographGroupMetadata.star.relion.ctf",
            coords: "MicrographCoordsGroup.star.relion.autopick",
            "Extract/job005/particles.star": "ParticleGroupMetadata.star.relion"}
        assert set(nodes["rlnPipeLineNodeTypeLabelDepth"]) == {1}
    inputs = set(zip(blocks["pipeline_input_edges"]["rlnPipeLineEdgeFromNode"],
                     blocks["pipeline_input_edges"]["rlnPipeLineEdgeProcess"]))
    assert inputs == {("Import/job001/movies.star", "MotionCorr/job002/"),
                      ("MotionCorr/job002/corrected_micrographs.star", "CtfFind/job003/"),
                      ("CtfFind/job003/micrographs_ctf.star", "AutoPick/job004/"),
                      ("CtfFind/job003/micrographs_ctf.star", "Extract/job005/"),
                      (coords, "Extract/job005/")}
    outputs = set(zip(blocks["pipeline_output_edges"]["rlnPipeLineEdgeProcess"],
                      blocks["pipeline_output_edges"]["rlnPipeLineEdgeToNode"]))
    assert ("Extract/job005/", "Extract/job005/particles.star") in outputs and len(outputs) == 5


@pytest.mark.parametrize("dialect", DIALECTS)
def test_aggregate_star_files_hold_one_row_per_micrograph_with_planted_values(tmp_path: Path, dialect: str) -> None:
    session = populate_project(tmp_path, dialect, n_movies=3)
    micrographs = starfile.read(tmp_path / "CtfFind/job003/micrographs_ctf.star", always_dict=True)
    assert micrographs["optics"]["rlnMicrographPixelSize"][0] == pytest.approx(OPTICS.micrograph_pixel_size_a)
    table = micrographs["micrographs"]
    assert list(table["rlnMicrographName"]) == [m.micrograph for m in session]
    assert np.allclose(table["rlnDefocusU"], [m.ctf.defocus_u_a for m in session], atol=1e-3)
    assert np.allclose(table["rlnCtfAstigmatism"], [m.ctf.defocus_u_a - m.ctf.defocus_v_a for m in session],
                       atol=2e-3)
    assert all((tmp_path / name.split(":")[0]).exists() for name in table["rlnCtfImage"])
    motion = starfile.read(tmp_path / "MotionCorr/job002/corrected_micrographs.star", always_dict=True)
    assert list(motion["micrographs"].columns) == ["rlnMicrographName", "rlnOpticsGroup", "rlnAccumMotionTotal",
                                                   "rlnAccumMotionEarly", "rlnAccumMotionLate"]
    movies_optics = starfile.read(tmp_path / "Import/job001/movies.star", always_dict=True)["optics"]
    assert ("rlnMicrographPixelSize" in movies_optics.columns) == (dialect == "relion5")
    picks = starfile.read(tmp_path / "AutoPick/job004/autopick.star", always_dict=True)["coordinate_files"]
    for m, coords_file in zip(session, picks["rlnMicrographCoordinates"]):
        coords = starfile.read(tmp_path / coords_file)
        assert np.allclose(coords[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), m.coordinates_px, atol=1e-4)
    particles = starfile.read(tmp_path / "Extract/job005/particles.star", always_dict=True)
    assert len(particles["particles"]) == sum(len(m.coordinates_px) for m in session)
    assert particles["optics"]["rlnImageSize"][0] == OPTICS.particle_box_px
    first = particles["particles"].iloc[0]
    assert first["rlnImageName"] == f"000001@{session[0].stack}"


def test_retried_micrograph_replaces_its_rows_instead_of_duplicating(tmp_path: Path) -> None:
    session = populate_project(tmp_path, "relion5", n_movies=3)
    project = RelionProject(tmp_path, "relion5", OPTICS)
    retried = session[1]
    refit = retried.ctf.model_copy(update={"defocus_u_a": retried.ctf.defocus_u_a + 500.0})
    project.add_ctf(retried.micrograph, refit, retried.ctf_image)
    project.add_particles(retried.micrograph, retried.stack, retried.coordinates_px, refit)
    (tmp_path / "CtfFind/job003/.micrographs_ctf.star.keys").unlink()  # the index is rebuilt from the file
    project.add_ctf(retried.micrograph, refit, retried.ctf_image)
    table = starfile.read(tmp_path / "CtfFind/job003/micrographs_ctf.star", always_dict=True)["micrographs"]
    assert list(table["rlnMicrographName"]) .count(retried.micrograph) == 1 and len(table) == 3
    assert table.set_index("rlnMicrographName").loc[retried.micrograph, "rlnDefocusU"] == pytest.approx(
        refit.defocus_u_a, abs=1e-3)
    particles = starfile.read(tmp_path / "Extract/job005/particles.star", always_dict=True)["particles"]
    assert len(particles) == sum(len(m.coordinates_px) for m in session)
    assert particles["rlnImageName"].is_unique


def _concurrent_writer(root: str, dialect: str, worker: int, n_micrographs: int) -> None:
    project = RelionProject(root, dialect, OPTICS)
    ctf = CtfValues(defocus_u_a=15000.0 + worker, defocus_v_a=14800.0, astigmatism_angle_deg=30.0,
                    figure_of_merit=0.2, max_resolution_a=4.5)
    for index in range(n_micrographs):
        mic = project.job("motioncorr").path / "Movies" / f"w{worker:02d}_m{index:03d}.mrc"
        for _ in range(2 if index == 0 else 1):  # the first micrograph of each worker is retried
            project.add_motion_corrected(mic, 10.0 + index, 2.0, 8.0 + index)
            project.add_ctf(mic, ctf, mic.with_suffix(".ctf"))
            project.add_picks(mic, [[10.0 + index, 20.0]])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_concurrent_writers_add_every_micrograph_exactly_once(tmp_path: Path, dialect: str) -> None:
    n_workers, n_micrographs = 8, 20
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_concurrent_writer, args=(str(tmp_path), dialect, w, n_micrographs))
               for w in range(n_workers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * n_workers
    processes = read_pipeline(tmp_path, dialect).processes
    assert sorted(p.name for p in processes) == ["AutoPick/job003/", "CtfFind/job002/", "MotionCorr/job001/"]
    for star, block in (("MotionCorr/job001/corrected_micrographs.star", "micrographs"),
                        ("CtfFind/job002/micrographs_ctf.star", "micrographs"),
                        ("AutoPick/job003/autopick.star", "coordinate_files")):
        table = starfile.read(tmp_path / star, always_dict=True)[block]
        assert len(table) == n_workers * n_micrographs, star
        assert table["rlnMicrographName"].is_unique, star


def test_existing_project_gets_new_jobs_after_its_own_and_keeps_foreign_processes(tmp_path: Path) -> None:
    foreign = ("\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 4\n\ndata_pipeline_processes\n\nloop_\n"
               "_rlnPipeLineProcessName #1\n_rlnPipeLineProcessAlias #2\n_rlnPipeLineProcessType #3\n"
               "_rlnPipeLineProcessStatus #4\nManualPick/job003/ ManualPick/mine/ 3 2\n\n"
               "data_pipeline_nodes\n\nloop_\n_rlnPipeLineNodeName #1\n_rlnPipeLineNodeType #2\n"
               "ManualPick/job003/coords_suffix_manualpick.star 2\n")
    (tmp_path / "default_pipeline.star").write_text(foreign)
    (tmp_path / "Class2D" / "job009").mkdir(parents=True)  # a folder beyond the pipeline's counter
    project = RelionProject(tmp_path, "relion3", OPTICS)
    first = project.job("motioncorr")
    assert first.name == "MotionCorr/job010/"
    (first.path / "Movies").mkdir()
    (first.path / "Movies" / "kept.mrc").write_text("earlier output")
    project.finish_job(first, success=True)
    second = project.job("motioncorr", new=True)
    assert second.name == "MotionCorr/job011/"
    assert (first.path / "Movies" / "kept.mrc").read_text() == "earlier output"
    assert project.job("motioncorr") == second  # the Live alias moved to the new job
    pipeline = read_pipeline(tmp_path, "relion3")
    by_name = {p.name: p for p in pipeline.processes}
    assert by_name["ManualPick/job003/"].alias == "ManualPick/mine/"
    assert by_name["MotionCorr/job010/"].alias == "None"
    assert by_name["MotionCorr/job011/"].alias == "MotionCorr/Live_motioncorr/"
    assert "ManualPick/job003/coords_suffix_manualpick.star" in [n.name for n in pipeline.nodes]
    assert pipeline.job_counter == 12


def test_project_in_the_other_dialect_is_refused_with_the_file_named(tmp_path: Path) -> None:
    RelionProject(tmp_path, "relion5", OPTICS).reserve_jobs(["import"])
    with pytest.raises(ImageFileError, match="default_pipeline.star.*relion5"):
        RelionProject(tmp_path, "relion3", OPTICS).job("motioncorr")


@pytest.mark.parametrize("success, marker, status", [(True, "RELION_JOB_EXIT_SUCCESS", "Succeeded"),
                                                     (False, "RELION_JOB_EXIT_FAILURE", "Failed")])
def test_finish_job_sets_status_and_exit_marker(tmp_path: Path, success: bool, marker: str, status: str) -> None:
    project = RelionProject(tmp_path, "relion5", OPTICS)
    job = project.job("class3d", new=True, command="relion_refine --i particles.star --o Class3D/job001/run")
    (job.path / "RELION_JOB_EXIT_SUCCESS").touch()  # left by an earlier attempt
    project.add_command(job, "relion_refine --continue run_it010_optimiser.star")
    project.finish_job(job, success)
    assert sorted(p.name for p in job.path.glob("RELION_JOB_EXIT_*")) == [marker]
    assert project.read_pipeline().process(job.name).status.value[1] == status
    note = (job.path / "note.txt").read_text()
    assert note.index("relion_refine --i particles.star") < note.index("relion_refine --continue")


@pytest.mark.parametrize("dialect, expected", [
    ("relion3", {"Class2D/job001/run_it025_data.star": "3", "Class2D/job001/run_it025_optimiser.star": "9",
                 "Refine3D/job002/run_half1_class001_unfil.mrc": "10", "MaskCreate/job003/mask.mrc": "7",
                 "PostProcess/job004/postprocess.mrc": "11", "PostProcess/job004/postprocess.star": "14"}),
    ("relion5", {"Class2D/job001/run_it025_data.star": "ParticleGroupMetadata.star.relion.class2d",
                 "Class2D/job001/run_it025_optimiser.star": "OptimiserData.star.relion.class2d",
                 "Refine3D/job002/run_half1_class001_unfil.mrc": "DensityMap.mrc.relion.halfmap.refine3d",
                 "MaskCreate/job003/mask.mrc": "Mask3D.mrc.relion",
                 "PostProcess/job004/postprocess.mrc": "DensityMap.mrc.relion.postprocess",
                 "PostProcess/job004/postprocess.star": "ProcessData.star.relion.postprocess"}),
])
def test_generic_jobs_register_typed_nodes_and_edges(tmp_path: Path, dialect: str, expected: dict) -> None:
    project = RelionProject(tmp_path, dialect, OPTICS)
    class2d = project.job("class2d", alias="batch_1")
    assert project.job("class2d", alias="batch_1") == class2d  # a retried task finds its job
    class2d.add_output("run_it025_data.star", NodeType.PARTICLES)
    class2d.add_output("run_it025_optimiser.star", NodeType.OPTIMISER)
    refine = project.job("refine3d", new=True)
    refine.add_input("Class2D/job001/run_it025_data.star", NodeType.PARTICLES)
    refine.add_output("run_half1_class001_unfil.mrc", NodeType.HALF_MAP)
    mask = project.job("maskcreate", new=True)
    mask.add_output("mask.mrc", NodeType.MASK)
    post = project.job("postprocess", new=True)
    post.add_input("Refine3D/job002/run_half1_class001_unfil.mrc", NodeType.HALF_MAP)
    post.add_input("MaskCreate/job003/mask.mrc", NodeType.MASK)
    post.add_output("postprocess.mrc", NodeType.POSTPROCESS_MAP)
    post.add_output("postprocess.star", NodeType.POSTPROCESS_STAR)
    pipeline = project.read_pipeline()
    assert {n.name: n.type_token for n in pipeline.nodes} == expected
    assert ("MaskCreate/job003/mask.mrc", "PostProcess/job004/") in pipeline.input_edges
    assert ("Class2D/job001/run_it025_data.star", "Refine3D/job002/") in pipeline.input_edges
    with pytest.raises(ValueError, match="no Live alias"):
        project.job("class2d")


def test_bad_inputs_get_errors_naming_the_problem(tmp_path: Path) -> None:
    project = RelionProject(tmp_path, "relion5", OPTICS)
    mic = project.job("motioncorr").path / "Movies" / "a.mrc"
    stack = write_mrc(tmp_path / "Extract" / "two.mrcs", np.zeros((2, 8, 8), np.float32), 1.0, is_stack=True)
    ctf = CtfValues(defocus_u_a=1e4, defocus_v_a=1e4, astigmatism_angle_deg=0, figure_of_merit=0.1,
                    max_resolution_a=5)
    with pytest.raises(ImageFileError, match="two.mrcs.*2 images for 3 coordinates"):
        project.add_particles(mic, stack, [[1, 1], [2, 2], [3, 3]], ctf)
    with pytest.raises(ImageFileError, match="missing.mrcs"):
        project.add_particles(mic, tmp_path / "missing.mrcs", [[1, 1]], ctf)
    with pytest.raises(ValueError, match="whitespace"):
        project.add_motion_corrected(tmp_path / "with space.mrc", 1.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="optics"):
        RelionProject(tmp_path, "relion5").add_motion_corrected(mic, 1.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="unknown Relion job kind"):
        project.job("motioncor")
    with pytest.raises(ValueError, match="dialect"):
        RelionProject(tmp_path, "relion4")  # type: ignore[arg-type]


def test_optics_from_session_uses_downscaled_box_and_its_pixel() -> None:
    config = SessionConfig(pixel_size_a=1.0, particle_diameter_a=200.0)
    optics = OpticsGroup.from_session(config)
    assert optics.particle_box_px == config.downscaled_box_px < config.extraction_box_px
    assert optics.particle_pixel_size_a * optics.particle_box_px == pytest.approx(config.extraction_box_px * 1.0)


def test_micrograph_metadata_column_is_kept_consistent_within_a_file(tmp_path: Path) -> None:
    project = RelionProject(tmp_path, "relion5", OPTICS)
    movies = project.job("motioncorr").path / "Movies"
    project.add_motion_corrected(movies / "a.mrc", 5.0, 1.0, 4.0, metadata_path=movies / "a.star")
    table = starfile.read(tmp_path / "MotionCorr/job001/corrected_micrographs.star", always_dict=True)["micrographs"]
    assert list(table.columns[:3]) == ["rlnMicrographName", "rlnMicrographMetadata", "rlnOpticsGroup"]
    assert table["rlnMicrographMetadata"][0] == "MotionCorr/job001/Movies/a.star"
    with pytest.raises(ImageFileError, match="corrected_micrographs.star.*columns"):
        project.add_motion_corrected(movies / "b.mrc", 5.0, 1.0, 4.0)


def test_outputs_mirror_the_raw_folder_layout_and_coordinates_follow_relion_naming(tmp_path: Path) -> None:
    project = RelionProject(tmp_path / "project", "relion3", OPTICS)
    raw = tmp_path / "raw"
    mic = project.job("motioncorr").file_for(raw / "GridSquare_7" / "Data" / "FoilHole_1_fractions.tiff", ".mrc",
                                             source_root=raw)
    assert project.relative(mic) == "MotionCorr/job001/Movies/GridSquare_7/Data/FoilHole_1_fractions.mrc"
    coords = project.add_picks(mic, [[30.0, 40.0]], figures_of_merit=[0.9])
    assert project.relative(coords) == "AutoPick/job002/Movies/GridSquare_7/Data/FoilHole_1_fractions_autopick.star"
    table = starfile.read(coords)
    assert table[["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]].iloc[0].tolist() == [30, 40, 0.9]
