"""Tomography engines against known truth: projection geometry, tilt-series alignment, reconstruction, images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from airflow_provider_cryoem.engines import tomo_images
from airflow_provider_cryoem.engines.ctf_model import ctf_2d
from airflow_provider_cryoem.engines.tomo_align import (
    TiltAlignmentInputs,
    TiltAlignmentResult,
    TiltAlignmentSettings,
    align_tilt_series,
    align_tilt_stack,
)
from airflow_provider_cryoem.engines.tomo_projection import (
    filtered_backprojection,
    project_volume,
    to_axis_frame,
    transform_image,
)
from airflow_provider_cryoem.engines.tomo_reconstruct import (
    TomogramInputs,
    TomogramSettings,
    phase_flip,
    reconstruct_stack,
    reconstruct_tomogram,
)
from airflow_provider_cryoem.engines.tomo_scoring import (
    fourier_shell_correlation,
    register_translation,
    resolution_cycles,
    shift_rmse_px,
)
from airflow_provider_cryoem.io import read_mrc, read_mrc_pixel_size_a, write_mrc
from airflow_provider_cryoem.simulate.tilt_series import TiltSeriesSimulation
from airflow_provider_cryoem.simulate.tomo_image import canvas_from_projection
from airflow_provider_cryoem.simulate.tomo_settings import TomoSimulationSettings


def gaussian_blob(shape: tuple[int, int, int], centre_rel: tuple[float, float, float], sigma_px: float
                  ) -> np.ndarray:
    """A Gaussian at `centre_rel` = (x, y, z) from the volume centre."""
    z, y, x = np.indices(shape, dtype=np.float64)
    cz, cy, cx = ((n - 1) / 2 for n in shape)
    dx, dy, dz = centre_rel
    r2 = (x - cx - dx) ** 2 + (y - cy - dy) ** 2 + (z - cz - dz) ** 2
    return np.exp(-r2 / (2 * sigma_px**2)).astype(np.float32)


def centroid_px(image: np.ndarray) -> tuple[float, float]:
    """(x, y) centre of mass relative to the image centre."""
    y, x = np.indices(image.shape)
    mass = image.sum()
    return ((image * x).sum() / mass - (image.shape[1] - 1) / 2, (image * y).sum() / mass - (image.shape[0] - 1) / 2)


@pytest.mark.parametrize("tilt_deg", [-60.0, -21.0, 0.0, 33.0, 60.0])
def test_projection_places_a_point_by_the_right_handed_tilt_and_conserves_mass(tilt_deg: float) -> None:
    volume = gaussian_blob((48, 96, 96), (20.0, -15.0, 9.0), 2.0)
    projection = project_volume(volume, [tilt_deg])[0]
    theta = np.deg2rad(tilt_deg)
    x, y = centroid_px(projection)
    assert x == pytest.approx(20.0 * np.cos(theta) + 9.0 * np.sin(theta), abs=0.02)
    assert y == pytest.approx(-15.0, abs=0.02)
    assert projection.sum() == pytest.approx(volume.sum(), rel=1e-3)


def test_tilt_axis_rotates_the_projection_counter_clockwise_and_alignment_undoes_it() -> None:
    volume = gaussian_blob((48, 96, 96), (20.0, -15.0, 9.0), 2.0)
    tilt_axis_deg, shift_px = 30.0, (3.0, -2.0)
    ideal = project_volume(volume, [-45.0])[0]
    recorded = transform_image(project_volume(volume, [-45.0], tilt_axis_deg)[0], 0.0, shift_px, fill=0.0)
    alpha = np.deg2rad(tilt_axis_deg)
    u, v = centroid_px(ideal)
    x, y = centroid_px(recorded)
    assert (x, y) == pytest.approx((np.cos(alpha) * u - np.sin(alpha) * v + 3.0,
                                    np.sin(alpha) * u + np.cos(alpha) * v - 2.0), abs=0.05)
    restored = to_axis_frame(recorded - recorded.mean(), tilt_axis_deg, shift_px)
    assert centroid_px(np.clip(restored, 0, None)) == pytest.approx((u, v), abs=0.1)


def test_weighted_back_projection_puts_the_blob_back_where_it_was() -> None:
    volume = gaussian_blob((32, 64, 64), (10.0, -6.0, 5.0), 2.0)
    tilts_deg = np.arange(-60.0, 61.0, 3.0)
    for kind in ("ramp", "sirt"):
        tomogram = filtered_backprojection(project_volume(volume, tilts_deg), tilts_deg, 32, kind=kind)
        assert np.unravel_index(tomogram.argmax(), tomogram.shape) == np.unravel_index(volume.argmax(),
                                                                                       volume.shape)


# --- a tilt series of the simulator's specimen with known shifts and axis --------------------------------
# The specimen (vesicles and macromolecules in a 100 nm slab, simulate/tomo_phantom.py) and the planted
# tracking shifts come from the simulator; the images are its projected phase plus white noise at a stated
# SNR rather than its full image formation (CTF, dose, counting), which keeps this module to seconds.

SERIES_SIZE_PX = 256
PIXEL_A = 20.0
TRUE_AXIS_DEG = 85.0
SNR = 0.7
BLANK, DARK = 3, 36  # tilt indices (in ascending-angle order) replaced by a blank and a dark image


@dataclass
class KnownSeries:
    stack: np.ndarray          # recorded tilts, ascending angle
    angles_deg: np.ndarray
    shifts_px: np.ndarray      # planted (dx, dy)
    phantom: np.ndarray        # (nz, ny, nx), axis frame, same pixel size


@pytest.fixture(scope="module")
def series() -> KnownSeries:
    settings = TomoSimulationSettings(image_size_px=SERIES_SIZE_PX, pixel_size_a=PIXEL_A, phantom_binning=1,
                                      n_vesicles=6, n_particles=40, thickness_nm=100, tracking_error_px=3.0,
                                      tilt_axis_deg=TRUE_AXIS_DEG, seed=3)
    simulation = TiltSeriesSimulation(settings, 0)
    angles = np.array(settings.tilt_angles_deg())
    shifts = np.array([simulation.truth.tilt(float(angle)).shift_px for angle in angles])
    margin, canvas = simulation.margin_px, SERIES_SIZE_PX + 2 * simulation.margin_px
    phase = [transform_image(canvas_from_projection(projection, settings, canvas), 0.0, shift, fill=0.0)
             [margin:margin + SERIES_SIZE_PX, margin:margin + SERIES_SIZE_PX]
             for projection, shift in zip(project_volume(simulation.phantom.volume, angles), shifts)]
    signal = 1.0 - np.stack(phase)  # protein dark on a bright background, as recorded
    rng = np.random.default_rng(1)
    stack = signal + rng.normal(0.0, np.sqrt(signal.var(axis=(1, 2)).mean() / SNR), signal.shape)
    stack[BLANK] = 1.0 + rng.normal(0.0, 1e-3, signal.shape[1:])
    stack[DARK] *= 0.05
    return KnownSeries(stack.astype(np.float32), angles, shifts, simulation.phantom.volume)


@pytest.fixture(scope="module")
def aligned(series: KnownSeries) -> tuple[TiltAlignmentResult, np.ndarray]:
    settings = TiltAlignmentSettings(pixel_size_a=PIXEL_A, tilt_axis_deg=TRUE_AXIS_DEG - 5.0, thickness_nm=100)
    return align_tilt_stack(series.stack, series.angles_deg, settings)


def test_alignment_recovers_shifts_and_tilt_axis_from_5_degrees_off(series: KnownSeries, aligned) -> None:
    result, stack = aligned
    used = [tilt.stack_index is not None for tilt in result.tilts]
    estimated = np.array([tilt.shift_px for tilt in result.tilts])[used]
    assert shift_rmse_px(estimated, series.shifts_px[used], series.angles_deg[used], TRUE_AXIS_DEG) < 1.0
    assert result.tilt_axis_deg == pytest.approx(TRUE_AXIS_DEG, abs=1.5)
    assert result.nominal_tilt_axis_deg == TRUE_AXIS_DEG - 5.0
    assert stack.shape == (series.angles_deg.size - 2, SERIES_SIZE_PX, SERIES_SIZE_PX)
    assert result.aligned_tilt_angles_deg == sorted(result.aligned_tilt_angles_deg)
    assert all(tilt.residual_px is not None and tilt.residual_px < 1.0 for tilt, ok in zip(result.tilts, used) if ok)


def test_blank_and_dark_tilts_are_excluded_with_the_reason(aligned) -> None:
    result, _ = aligned
    excluded = {index: tilt.exclusion_reason for index, tilt in enumerate(result.tilts) if tilt.excluded}
    assert set(excluded) == {BLANK, DARK}
    assert excluded[BLANK].startswith("blank: standard deviation")
    assert excluded[DARK].startswith("dark: mean")
    assert result.tilts[BLANK].stack_index is None and result.tilts[BLANK].residual_px is None


@pytest.mark.parametrize("weighting", ["ramp", "sirt"])
def test_tomogram_fsc_against_the_phantom_stays_above_half_to_0_15_cycles_per_px(series: KnownSeries, aligned,
                                                                                 weighting: str) -> None:
    result, stack = aligned
    tomogram = reconstruct_stack(stack, result.aligned_tilt_angles_deg,
                                 TomogramSettings(pixel_size_a=PIXEL_A, thickness_nm=100, weighting=weighting))
    nz, ny, nx = tomogram.shape
    assert nz == 50
    z0, y0, x0 = ((np.array(series.phantom.shape) - tomogram.shape) // 2).tolist()
    truth = -series.phantom[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx]  # dark protein, as in the images
    frequency, fsc = fourier_shell_correlation(register_translation(tomogram, truth), truth)
    # Measured 0.18 cycles/px (≈ 110 Å at 20 Å/px) for both weightings, missing wedge included.
    assert resolution_cycles(frequency, fsc) > 0.15


def test_file_round_trip_bins_reports_input_pixels_and_excludes_an_unreadable_tilt(series: KnownSeries,
                                                                                   tmp_path: Path) -> None:
    paths = []
    for index, image in enumerate(series.stack):
        path = tmp_path / f"tilt_{index:02d}.mrc"
        write_mrc(path, image, PIXEL_A)
        paths.append(str(path))
    paths[10] = str(tmp_path / "missing.mrc")
    result = align_tilt_series(TiltAlignmentInputs(
        micrograph_paths=paths, tilt_angles_deg=series.angles_deg.tolist(), pixel_size_a=PIXEL_A,
        tilt_axis_deg=TRUE_AXIS_DEG, binning=2, thickness_nm=100, aligned_stack_path=str(tmp_path / "ts.mrcs")))
    assert "missing.mrc" in result.tilts[10].exclusion_reason
    assert result.tilts[5].micrograph_path == paths[5]
    used = [tilt.stack_index is not None for tilt in result.tilts]
    estimated = np.array([tilt.shift_px for tilt in result.tilts])[used]
    assert shift_rmse_px(estimated, series.shifts_px[used], series.angles_deg[used], TRUE_AXIS_DEG) < 1.0
    assert read_mrc(result.aligned_stack_path).shape == (sum(used), SERIES_SIZE_PX // 2, SERIES_SIZE_PX // 2)
    assert read_mrc_pixel_size_a(result.aligned_stack_path) == pytest.approx(2 * PIXEL_A)

    tomogram = reconstruct_tomogram(TomogramInputs(
        aligned_stack_path=result.aligned_stack_path, tilt_angles_deg=result.aligned_tilt_angles_deg,
        pixel_size_a=result.aligned_pixel_size_a, binning=2, thickness_nm=100,
        defocus_a=[40000.0] * sum(used), tomogram_path=str(tmp_path / "ts_rec.mrc")))
    assert tomogram.shape == (12, SERIES_SIZE_PX // 4, SERIES_SIZE_PX // 4) and tomogram.ctf_phase_flipped
    assert read_mrc(tomogram.tomogram_path).shape == tomogram.shape
    assert read_mrc_pixel_size_a(tomogram.tomogram_path) == pytest.approx(4 * PIXEL_A)


def test_phase_flipping_turns_every_ctf_lobe_the_way_of_the_first() -> None:
    rng = np.random.default_rng(0)
    settings = TomogramSettings(pixel_size_a=4.0)
    phase = gaussian_filter(rng.normal(size=(128, 128)), 1.0).astype(np.float32)
    ctf = ctf_2d(phase.shape, 4.0, 30000.0, 30000.0, 0.0, 300.0, 2.7, 0.1, rfft=True)
    recorded = np.fft.irfft2(np.fft.rfft2(phase) * ctf, s=phase.shape)
    flipped = phase_flip(recorded, 30000.0, settings)
    # The CTF is negative at low frequency (dark protein); after flipping the whole transfer is |CTF| ≤ 0.
    transfer = np.fft.rfft2(flipped) / np.fft.rfft2(phase)
    assert np.all(transfer.real < 1e-3) and np.abs(transfer.imag).max() < 1e-3
    before = np.corrcoef(recorded.ravel(), -phase.ravel())[0, 1]
    assert np.corrcoef(flipped.ravel(), -phase.ravel())[0, 1] > before + 0.3  # measured 0.47 → 0.91


def test_series_images_are_written_and_show_the_data(series: KnownSeries, aligned, tmp_path: Path) -> None:
    result, stack = aligned
    montage = tomo_images.tilt_series_montage(series.stack, series.angles_deg, tmp_path / "montage.png", tile_px=64)
    movie = tomo_images.tilt_series_movie(series.stack, series.angles_deg, tmp_path / "movie.gif", size_px=128)
    plot = tomo_images.alignment_plot(series.angles_deg, [t.shift_px for t in result.tilts],
                                      [t.residual_px for t in result.tilts], tmp_path / "alignment.png",
                                      excluded=[t.excluded for t in result.tilts])
    tomogram = reconstruct_stack(stack, result.aligned_tilt_angles_deg,
                                 TomogramSettings(pixel_size_a=PIXEL_A, thickness_nm=100, binning=2))
    views = tomo_images.tomogram_views(tomogram, tmp_path / "xy.jpeg", tmp_path / "xz.png", tmp_path / "yz.png")
    with Image.open(montage) as picture:
        assert picture.width >= 7 * 64 and np.ptp(np.asarray(picture)) > 200
    with Image.open(movie) as picture:
        assert picture.format == "GIF" and picture.n_frames == series.angles_deg.size and picture.size == (128, 128)
    with Image.open(plot) as picture:
        colours = {tuple(c) for c in np.asarray(picture.convert("RGB")).reshape(-1, 3)[::7]}
        assert {(31, 119, 180), (255, 127, 14), (44, 160, 44)} <= colours  # dx, dy and residual drawn
    sizes = []
    for path in views:
        with Image.open(path) as picture:
            sizes.append(picture.size)
            assert np.asarray(picture).std() > 20
    assert sizes == [(128, 128), (128, 25), (128, 25)]
