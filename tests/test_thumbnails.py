"""Thumbnails are real image files of the promised size, drawn from simulator data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from airflow_provider_cryoem.engines import thumbnails
from airflow_provider_cryoem.engines.ctf_model import ctf_2d
from airflow_provider_cryoem.simulate import (
    SimulatedMovie,
    SpaSimulationSettings,
    simulate_movie,
)


@pytest.fixture(scope="module")
def movie() -> SimulatedMovie:
    return simulate_movie(SpaSimulationSettings(image_size_px=512, n_frames=6, particle_diameter_a=100,
                                                particles_per_micrograph=8, seed=5), 0)


def opened(path: Path) -> Image.Image:
    with Image.open(path) as picture:
        picture.load()
        return picture


def test_micrograph_jpeg_is_binned_to_the_requested_size(tmp_path: Path, movie: SimulatedMovie) -> None:
    path = thumbnails.micrograph_jpeg(movie.clean_micrograph[:, :500], tmp_path / "mic.jpeg", max_size_px=256)
    picture = opened(path)
    assert picture.format == "JPEG" and picture.size == (250, 256)
    assert np.ptp(np.asarray(picture)) > 200  # contrast stretched to the full range


def test_picks_overlay_draws_a_green_circle_at_each_pick(tmp_path: Path, movie: SimulatedMovie) -> None:
    picks = movie.truth.particle_coordinates_px()
    picture = np.asarray(opened(thumbnails.picks_overlay(movie.clean_micrograph, picks, 100, tmp_path / "p.png")))
    assert picture.shape == (512, 512, 3)
    green = (picture[..., 1] > 200) & (picture[..., 0] < 60)
    for x, y in picks:  # circle passes 50 px right of the centre, not through the centre
        assert green[round(y), round(x) + 48: round(x) + 53].any() and not green[round(y), round(x)]


def test_spectrum_fit_image_puts_data_left_and_fit_right(tmp_path: Path) -> None:
    ctf = np.fft.fftshift(ctf_2d((256, 256), 3.0, 15000, 14000, 30, 300, 2.7, 0.1)) ** 2
    noisy = ctf + np.random.default_rng(0).normal(0, 0.3, ctf.shape)
    picture = np.asarray(opened(thumbnails.spectrum_fit_image(noisy, ctf, tmp_path / "ctf.png", size_px=256)),
                         dtype=float)
    assert picture.shape == (256, 256)
    left, right = picture[:, :128], picture[:, 128:]
    def correlation(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    assert correlation(left, noisy[:, :128]) > 0.9 and correlation(right, ctf[:, 128:]) > 0.9
    assert correlation(right, noisy[:, 128:]) < correlation(right, ctf[:, 128:]) - 0.1
    with pytest.raises(ValueError, match="same shape"):
        thumbnails.spectrum_fit_image(noisy, ctf[:100], tmp_path / "bad.png")


def test_drift_plot_draws_the_trajectory_with_frame_markers(tmp_path: Path, movie: SimulatedMovie) -> None:
    picture = np.asarray(opened(thumbnails.drift_plot(movie.truth.shifts_px, tmp_path / "drift.png", size_px=400)))
    assert picture.shape == (400, 400, 3)
    trace = np.all(picture == (31, 119, 180), axis=-1)
    first_frame = np.all(picture == (214, 39, 40), axis=-1)
    assert trace.sum() > 100 and first_frame.sum() > 4
    with pytest.raises(ValueError, match="shifts_px"):
        thumbnails.drift_plot([1.0, 2.0], tmp_path / "bad.png")


def test_class_gallery_tiles_every_class_in_a_grid(tmp_path: Path, movie: SimulatedMovie) -> None:
    stack = np.stack([movie.clean_micrograph[i * 60: i * 60 + 64, :64] for i in range(5)] + [np.zeros((64, 64))])
    picture = opened(thumbnails.class_gallery(stack, tmp_path / "classes.png", [f"{i}" for i in range(6)], tile_px=64))
    columns, rows = 3, 2
    assert picture.width == columns * 66 + 2 and picture.height > rows * 66
    with pytest.raises(ValueError, match="labels"):
        thumbnails.class_gallery(stack, tmp_path / "bad.png", ["only one"])
