"""Extraction of the simulator's planted particles: centring, normalisation, contrast, stack header and STAR."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from airflow_provider_cryoem.cli import main
from airflow_provider_cryoem.engines.extract import ExtractionInputs, run_extraction
from airflow_provider_cryoem.engines.picking import fourier_crop
from airflow_provider_cryoem.io import (
    ImageFileError,
    read_mrc,
    read_mrc_pixel_size_a,
    read_star,
    write_mrc,
    write_star,
)
from airflow_provider_cryoem.simulate import (
    SimulatedMovie,
    SpaSimulationSettings,
    simulate_movie,
)

BOX_PX, SMALL_BOX_PX = 120, 64


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimulatedMovie]:
    """A 512-px micrograph with ten 100 Å particles at 40 e⁻/Å², Poisson noise on the clean image."""
    settings = SpaSimulationSettings(image_size_px=512, n_frames=4, dose_per_frame_e_a2=10.0, particle_diameter_a=100,
                                     particles_per_micrograph=10, seed=3)
    movie = simulate_movie(settings, 0)
    counts = np.random.default_rng(0).poisson(np.maximum(movie.clean_micrograph, 0)).astype(np.float32)
    return write_mrc(tmp_path_factory.mktemp("extract") / "mic.mrc", counts, 1.0), movie


def extract(tmp_path: Path, micrograph: Path, movie: SimulatedMovie, **options: object) -> dict:
    values = dict(micrograph_path=str(micrograph), coordinates_px=movie.truth.particle_coordinates_px(),
                  pixel_size_a=1.0, box_px=BOX_PX, downscaled_box_px=SMALL_BOX_PX,
                  defocus_u_a=movie.truth.defocus_u_a, defocus_v_a=movie.truth.defocus_v_a,
                  defocus_angle_deg=movie.truth.astigmatism_angle_deg,
                  output_stack_path=str(tmp_path / "Movies" / "mic.mrcs"),
                  output_star_path=str(tmp_path / "Movies" / "mic_extract.star"))
    return run_extraction(ExtractionInputs(**{**values, **options})).model_dump()


def radius_px(box: int) -> np.ndarray:
    y, x = np.indices((box, box)) - box // 2
    return np.hypot(x, y)


@pytest.mark.parametrize("phase_flip", [False, True])
def test_planted_particles_come_out_centred_and_white(tmp_path: Path, session: tuple[Path, SimulatedMovie],
                                                     phase_flip: bool) -> None:
    micrograph, movie = session
    stack = read_mrc(extract(tmp_path, micrograph, movie, phase_flip=phase_flip)["stack"])
    average = stack.mean(axis=0)
    radius = radius_px(SMALL_BOX_PX)
    particle_radius = 50 * SMALL_BOX_PX / BOX_PX
    assert average[radius < particle_radius].mean() > average[radius > 0.375 * SMALL_BOX_PX].mean() + 0.1
    weight = np.maximum(average - np.median(average), 0)
    y, x = np.indices(average.shape) - SMALL_BOX_PX // 2
    centre_of_mass = np.array([(weight * x).sum(), (weight * y).sum()]) / weight.sum()
    assert np.hypot(*centre_of_mass) < 2.0


def test_background_is_normalised_to_mean_zero_std_one(tmp_path: Path, session: tuple[Path, SimulatedMovie]) -> None:
    micrograph, movie = session
    stack = read_mrc(extract(tmp_path, micrograph, movie)["stack"])
    background = stack[:, radius_px(SMALL_BOX_PX) > round(0.375 * SMALL_BOX_PX)]
    np.testing.assert_allclose(background.mean(axis=1), 0, atol=1e-3)
    np.testing.assert_allclose(background.std(axis=1), 1, atol=1e-3)


def test_stack_header_and_star_carry_the_downscaled_pixel_size(tmp_path: Path,
                                                               session: tuple[Path, SimulatedMovie]) -> None:
    micrograph, movie = session
    result = extract(tmp_path, micrograph, movie, relion_project_dir=str(tmp_path))
    expected_a = BOX_PX / SMALL_BOX_PX
    assert result["image_pixel_size_a"] == pytest.approx(expected_a)
    assert read_mrc_pixel_size_a(result["stack"]) == pytest.approx(expected_a, rel=1e-4)
    assert read_mrc(result["stack"]).shape == (result["particle_count"], SMALL_BOX_PX, SMALL_BOX_PX)
    blocks = read_star(result["star"])
    optics = blocks["optics"].iloc[0]
    assert optics["rlnImagePixelSize"] == pytest.approx(expected_a)
    assert optics["rlnImageSize"] == SMALL_BOX_PX and optics["rlnImageDimensionality"] == 2
    assert optics["rlnMicrographOriginalPixelSize"] == 1.0 and optics["rlnCtfDataAreCtfPremultiplied"] == 0


def test_star_rows_name_each_image_of_the_stack_in_order(tmp_path: Path, session: tuple[Path, SimulatedMovie]) -> None:
    micrograph, movie = session
    result = extract(tmp_path, micrograph, movie, relion_project_dir=str(tmp_path))
    particles = read_star(result["star"])["particles"]
    for column in ("rlnCoordinateX", "rlnCoordinateY", "rlnImageName", "rlnMicrographName", "rlnOpticsGroup",
                   "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfMaxResolution", "rlnCtfFigureOfMerit",
                   "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift"):
        assert column in particles.columns
    indices, paths = zip(*(name.split("@") for name in particles["rlnImageName"]))
    assert [int(i) for i in indices] == list(range(1, result["particle_count"] + 1))
    assert len(particles) == result["particle_count"]
    assert set(paths) == {"Movies/mic.mrcs"}
    assert particles["rlnDefocusU"].iloc[0] == pytest.approx(movie.truth.defocus_u_a)
    assert result["particles"][0]["rlnImageName"] == particles["rlnImageName"].iloc[0]


def test_particles_too_close_to_the_edge_are_skipped_or_mirror_padded(tmp_path: Path,
                                                                    session: tuple[Path, SimulatedMovie]) -> None:
    micrograph, movie = session
    coordinates = [[10.0, 256.0], [256.0, 256.0], [505.0, 500.0]]
    skipped = extract(tmp_path, micrograph, movie, coordinates_px=coordinates)
    assert skipped["particle_count"] == 1 and skipped["skipped_at_edge"] == 2
    assert skipped["particles"][0]["rlnCoordinateX"] == 256.0
    padded = extract(tmp_path, micrograph, movie, coordinates_px=coordinates, edge_handling="pad")
    assert padded["particle_count"] == 3 and np.all(np.isfinite(read_mrc(padded["stack"])))


def test_coordinates_are_read_from_a_star_file_with_a_merit_cut(tmp_path: Path,
                                                               session: tuple[Path, SimulatedMovie]) -> None:
    micrograph, movie = session
    truth = np.asarray(movie.truth.particle_coordinates_px())
    merits = np.linspace(0, 1, len(truth))
    star = write_star(tmp_path / "coords.star", {"": pd.DataFrame({
        "rlnCoordinateX": truth[:, 0], "rlnCoordinateY": truth[:, 1], "rlnAutopickFigureOfMerit": merits})})
    result = extract(tmp_path, micrograph, movie, coordinates_px=None, coordinates_star_path=str(star),
                     min_figure_of_merit=0.5)
    assert result["particle_count"] == int(np.sum(merits >= 0.5))


def test_fourier_crop_keeps_the_mean_and_low_frequencies() -> None:
    y, x = np.indices((128, 128))
    wave = (3.0 + np.cos(2 * np.pi * (4 * x + 2 * y) / 128)).astype(np.float32)
    small = fourier_crop(wave, (64, 64))
    ys, xs = np.indices((64, 64))
    np.testing.assert_allclose(small, 3.0 + np.cos(2 * np.pi * (4 * xs + 2 * ys) / 64), atol=1e-4)


def test_invalid_requests_are_refused_with_the_field_named(tmp_path: Path,
                                                           session: tuple[Path, SimulatedMovie]) -> None:
    micrograph, movie = session
    with pytest.raises(ValidationError, match="box_px must be even"):
        extract(tmp_path, micrograph, movie, box_px=121)
    with pytest.raises(ValidationError, match="phase_flip"):
        extract(tmp_path, micrograph, movie, phase_flip=True, defocus_u_a=0.0)
    (tmp_path / "junk.star").write_text("not a star file\n")
    with pytest.raises(ImageFileError, match="junk.star"):
        extract(tmp_path, micrograph, movie, coordinates_px=None, coordinates_star_path=str(tmp_path / "junk.star"))


def test_extract_command_writes_stack_and_star(tmp_path: Path, session: tuple[Path, SimulatedMovie],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    micrograph, movie = session
    truth = np.asarray(movie.truth.particle_coordinates_px())
    star = write_star(tmp_path / "coords.star", {"": pd.DataFrame({"rlnCoordinateX": truth[:, 0],
                                                                   "rlnCoordinateY": truth[:, 1]})})
    argv = ["extract", str(micrograph), "--coordinates", str(star), "--output-dir", str(tmp_path / "out"),
            "--particle-diameter-a", "100", "--pixel-size-a", "1.0", "--json"]
    assert main(argv) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["box_px"] == 64 and output["particle_count"] + output["skipped_at_edge"] == len(truth)
    assert Path(output["stack"]).name == "mic.mrcs" and Path(output["star"]).name == "mic_extract.star"
