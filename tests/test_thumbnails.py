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


def test_class_gallery_tiles_every_class_in_a_grid(tmp_path: Path, movie: SimulatedMovie) -> None:
    stack = np.stack([movie.clean_micrograph[i * 60: i * 60 + 64, :64] for i in range(5)] + [np.zeros((64, 64))])
    picture = opened(thumbnails.class_gallery(stack, tmp_path / "classes.png", [f"{i}" for i in range(6)], tile_px=64))
    columns, rows = 3, 2
    assert picture.width == columns * 66 + 2 and picture.height > rows * 66
    with pytest.raises(ValueError, match="labels"):
        thumbnails.class_gallery(stack, tmp_path / "bad.png", ["only one"])


def _centred_ctf_squared(box_px: int, pixel_size_a: float) -> tuple[np.ndarray, np.ndarray]:
    """CTF² of a 15000/14000 Å astigmatic CTF on a centred grid, and each pixel's frequency (1/Å)."""
    ctf = np.fft.fftshift(ctf_2d((box_px, box_px), pixel_size_a, 15000, 14000, 30, 300, 2.7, 0.1)) ** 2
    axis = (np.arange(box_px) - box_px // 2) / (box_px * pixel_size_a)
    return ctf, np.hypot(*np.meshgrid(axis, axis))


def test_ctf_spectrum_panel_draws_the_fit_only_inside_the_fitted_band(tmp_path: Path) -> None:
    ctf, freq = _centred_ctf_squared(256, 1.5)
    data = np.where(freq > 0.2, np.random.default_rng(1).normal(0, 1, ctf.shape), ctf).astype(np.float32)
    band = (1 / 40, 1 / 6)
    panel = np.asarray(thumbnails.ctf_spectrum_panel(data, ctf, freq, band, display_max_freq=0.3, size_px=256),
                       dtype=float).mean(axis=2)
    # The panel shows ±0.3/Å over 256 px: panel pixel (row, column) sits at frequency ((column, row) - 128) · 0.3/128.
    rows, columns = np.indices(panel.shape)
    panel_freq = np.hypot(rows - 128, columns - 128) * 0.3 / 128
    right = columns > 132
    model = np.interp(panel_freq, freq[128, 128:], ctf[128, 128:])  # along +x; the astigmatism is mild
    inside = right & (panel_freq > band[0] * 1.1) & (panel_freq < band[1] * 0.9)
    beyond = right & (panel_freq > 0.22) & (panel_freq < 0.28)
    assert np.corrcoef(panel[inside], model[inside])[0, 1] > 0.6
    assert abs(np.corrcoef(panel[beyond], model[beyond])[0, 1]) < 0.2  # past the fit: the (noise) data
    picture = thumbnails.side_by_side(tmp_path / "ctf.png", [thumbnails.ctf_spectrum_panel(
        data, ctf, freq, band, 0.3, size_px=200)], caption="defocus 1.5 µm")
    assert opened(picture).size == (200, 200 + 25)
