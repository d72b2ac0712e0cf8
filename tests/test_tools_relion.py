"""Relion 3.1 wrappers run for real (Debian `relion`) on a simulated session:
motion correction → LoG picking → extraction → 2D classification, and post-processing of half-maps.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from airflow_provider_cryoem.execution import run_local
from airflow_provider_cryoem.io import write_mrc
from airflow_provider_cryoem.simulate import (
    GAIN_REFERENCE_NAME,
    SpaSimulationSettings,
    make_structure,
    render_volume,
    write_spa_session,
)
from airflow_provider_cryoem.tools import (
    relion_autopick,
    relion_motioncorr,
    relion_postprocess,
    relion_preprocess,
    relion_refine,
)

pytestmark = pytest.mark.relion
PIXEL_SIZE_A = 2.0
DIAMETER_A = 120.0


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A Relion project folder holding one simulated movie, and its motion correction already run."""
    if shutil.which("relion_refine") is None:  # CI runs as root on Debian 12
        subprocess.run(["apt-get", "install", "-y", "-qq", "relion"], check=True, capture_output=True)
    root = tmp_path_factory.mktemp("relion project")
    settings = SpaSimulationSettings(image_size_px=384, n_frames=8, n_movies=1, pixel_size_a=PIXEL_SIZE_A,
                                     movie_format="mrc", particles_per_micrograph=12, particle_diameter_a=DIAMETER_A,
                                     seed=8)
    truth = write_spa_session(settings, root / "Movies")
    movie = truth.movies[0]
    inputs = relion_motioncorr.RelionMotionInputs(
        project_dir=str(root), movie_path=f"Movies/{movie.movie_name}", pixel_size_a=PIXEL_SIZE_A,
        dose_per_frame_e_a2=settings.dose_per_frame_e_a2, gain_reference_path=f"Movies/{GAIN_REFERENCE_NAME}",
        patches_x=1, patches_y=1, threads=2)
    spec = relion_motioncorr.command(inputs)
    run_local(spec)
    motion = relion_motioncorr.parse_result(inputs)
    return SimpleNamespace(root=root, truth=movie, motion_spec=spec, motion=motion,
                           micrograph=str(Path(motion["micrograph"]).relative_to(root)))


def test_relion_motioncorr_command_and_shifts_follow_the_simulated_drift(project):
    args = project.motion_spec.args
    assert project.motion_spec.program == "relion_run_motioncorr" and "--use_own" in args
    assert args[args.index("--gainref") + 1] == f"Movies/{GAIN_REFERENCE_NAME}"
    shifts = np.array(project.motion["shifts_px"])
    truth = np.array(project.truth.shifts_px)
    rmse_px = float(np.sqrt(np.mean(np.sum((shifts - truth) ** 2, axis=1))))
    assert rmse_px < 1.0, f"Relion shifts {shifts.tolist()} vs truth {truth.tolist()}"
    assert project.motion["total_motion_a"] > 0 and Path(project.motion["micrograph"]).is_file()
    assert project.motion["early_motion_a"] + project.motion["late_motion_a"] == \
        pytest.approx(project.motion["total_motion_a"])


@pytest.fixture(scope="module")
def picks(project):
    inputs = relion_autopick.RelionAutopickInputs(project_dir=str(project.root), micrograph_paths=[project.micrograph],
                                                  pixel_size_a=PIXEL_SIZE_A, min_diameter_a=0.8 * DIAMETER_A,
                                                  max_diameter_a=1.2 * DIAMETER_A, threads=2)
    spec = relion_autopick.command(inputs)
    run_local(spec)
    return spec, relion_autopick.parse_coordinates(relion_autopick.coordinates_path(inputs, project.micrograph))


def test_relion_log_picking_finds_the_simulated_particles(project, picks):
    spec, result = picks
    assert "--LoG" in spec.args and spec.args[spec.args.index("--LoG_diam_max") + 1] == "144"
    particles = np.array([[p.x_px, p.y_px] for p in project.truth.particles if not p.is_junk])
    picked = np.array(result["coordinates_px"])
    distance_px = np.linalg.norm(particles[:, None, :] - picked[None, :, :], axis=2)
    found = (distance_px.min(axis=1) < 0.3 * DIAMETER_A / PIXEL_SIZE_A).mean()
    assert found >= 0.5, f"only {found:.0%} of {len(particles)} particles picked"
    assert result["figures_of_merit"] == sorted(result["figures_of_merit"], reverse=True)


@pytest.fixture(scope="module")
def particles(project, picks):
    inputs = relion_preprocess.RelionExtractInputs(project_dir=str(project.root), micrograph_paths=[project.micrograph],
                                                   coordinates_dir="AutoPick/job004", pixel_size_a=PIXEL_SIZE_A,
                                                   box_px=72, downscaled_box_px=36)
    spec = relion_preprocess.command(inputs)
    run_local(spec)
    return spec, relion_preprocess.parse_result(inputs)


def test_relion_extraction_writes_downscaled_inverted_particles(particles, picks):
    spec, result = particles
    assert {"--extract", "--invert_contrast", "--norm"} <= set(spec.args)
    assert spec.args[spec.args.index("--bg_radius") + 1] == "14"  # round(0.375 × 36)
    assert 0 < result["particle_count"] <= picks[1]["particle_count"]
    assert (result["box_px"], result["image_pixel_size_a"]) == (36, pytest.approx(4.0))
    assert all((Path(particles[0].cwd) / stack).is_file() for stack in result["stacks"])


def test_relion_class2d_model_star_gives_class_distribution_and_accuracies(project, particles):
    inputs = relion_refine.Class2DInputs(project_dir=str(project.root), particles_star="Extract/job005/particles.star",
                                         job_dir="Class2D/job006", mask_diameter_a=1.1 * DIAMETER_A, classes=2,
                                         iterations=2, threads=2, random_seed=1)
    spec = relion_refine.class2d_command(inputs)
    assert spec.program == "relion_refine" and spec.args[spec.args.index("--K") + 1] == "2"
    run_local(spec)
    model = relion_refine.parse_model_star(relion_refine.last_model_star(project.root, "Class2D/job006"))
    assert model["iteration"] == 2 and len(model["classes"]) == 2
    assert sum(c["class_distribution"] for c in model["classes"]) == pytest.approx(1.0, abs=1e-3)
    assert all(c["rotation_accuracy_deg"] > 0 and c["estimated_resolution_a"] >= 2 * 4.0 for c in model["classes"])
    assert model["resolution_a"] >= 2 * 4.0  # not beyond Nyquist of the 4 Å particles


def test_relion_postprocess_reports_resolution_of_simulated_half_maps(tmp_path):
    settings = SpaSimulationSettings(pixel_size_a=PIXEL_SIZE_A, particle_diameter_a=DIAMETER_A)
    volume = render_volume(make_structure(settings), 64, PIXEL_SIZE_A)
    rng = np.random.default_rng(0)
    job = tmp_path / "Refine3D" / "job010"
    job.mkdir(parents=True)
    for half in (1, 2):
        noisy = volume + rng.normal(0, 0.5 * volume.std(), volume.shape)
        write_mrc(job / f"run_half{half}_class001_unfil.mrc", noisy.astype(np.float32), PIXEL_SIZE_A)
    z, y, x = np.mgrid[:64, :64, :64] - 32
    write_mrc(job / "mask.mrc", (np.sqrt(x * x + y * y + z * z) < 28).astype(np.float32), PIXEL_SIZE_A)
    inputs = relion_postprocess.PostProcessInputs(project_dir=str(tmp_path), pixel_size_a=PIXEL_SIZE_A,
                                                  half_map_path="Refine3D/job010/run_half1_class001_unfil.mrc",
                                                  mask_path="Refine3D/job010/mask.mrc")
    result = relion_postprocess.parse_stdout(run_local(relion_postprocess.command(inputs)).output)
    assert 2 * PIXEL_SIZE_A <= result["final_resolution_a"] < 20
    assert result["bfactor_a2"] < 0
