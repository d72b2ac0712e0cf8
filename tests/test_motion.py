"""The built-in motion correction, scored against the simulator's planted drift and clean micrograph."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from airflow_provider_cryoem.cli import main
from airflow_provider_cryoem.engines.dose_weighting import (
    DoseWeightSeries,
    critical_exposure_e_a2,
    dose_weights,
)
from airflow_provider_cryoem.engines.motion import (
    MotionCorrectionInputs,
    run_motion_correction,
)
from airflow_provider_cryoem.engines.motion_align import (
    _WindowCorrelation,
    align_frames,
)
from airflow_provider_cryoem.io import (
    ImageFileError,
    read_mrc,
    read_mrc_pixel_size_a,
    write_mrc,
)
from airflow_provider_cryoem.simulate import (
    SimulatedMovie,
    SpaSimulationSettings,
    simulate_movie,
)
from airflow_provider_cryoem.simulate.files import movie_bytes


def _write_movie(movie: SimulatedMovie, folder: Path, frames: np.ndarray | None = None) -> tuple[Path, Path]:
    """Movie (format from the settings) and gain reference on disk, as a microscope leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = movie.settings
    data = movie.frames if frames is None else frames
    path = folder / movie.truth.movie_name
    path.write_bytes(movie_bytes(data, settings.movie_format, settings.pixel_size_a))
    gain = write_mrc(folder / "gain.mrc", movie.gain, settings.pixel_size_a)
    return path, gain


def _inputs(movie: SimulatedMovie, path: Path, gain: Path | None, out: Path, **extra) -> MotionCorrectionInputs:
    settings = movie.settings
    return MotionCorrectionInputs(movie_path=str(path), output_path=str(out), pixel_size_a=settings.pixel_size_a,
                                  dose_per_frame_e_a2=settings.dose_per_frame_e_a2, voltage_kv=settings.voltage_kv,
                                  gain_reference_path=str(gain) if gain else None, threads=2, **extra)


def _shift_rmse_px(estimated: list[list[float]], truth: list[list[float]]) -> float:
    """RMSE after removing the constant offset (conventions.md)."""
    error = np.asarray(estimated) - np.asarray(truth)
    error -= error.mean(axis=0)
    return float(np.sqrt((error**2).sum(axis=1).mean()))


def _band_correlation(image: np.ndarray, reference: np.ndarray, pixel_size_a: float, low_a: float,
                      high_a: float) -> float:
    """Fourier correlation of two images over resolutions between `low_a` and `high_a` Å."""
    fa, fb = np.fft.rfft2(image - image.mean()), np.fft.rfft2(reference - reference.mean())
    k = np.hypot(np.fft.fftfreq(image.shape[0])[:, None], np.fft.rfftfreq(image.shape[1])[None, :]) / pixel_size_a
    band = (k >= 1 / low_a) & (k < 1 / high_a)
    return float(np.real((fa[band] * np.conj(fb[band])).sum())
                 / np.sqrt((np.abs(fa[band]) ** 2).sum() * (np.abs(fb[band]) ** 2).sum()))


@pytest.fixture(scope="module")
def moderate_dose(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulatedMovie, Path, Path]:
    settings = SpaSimulationSettings(image_size_px=1024, n_frames=20, dose_per_frame_e_a2=1.5, seed=3)
    movie = simulate_movie(settings, 0)
    return (movie, *_write_movie(movie, tmp_path_factory.mktemp("moderate")))


@pytest.fixture(scope="module")
def moderate_result(moderate_dose, tmp_path_factory: pytest.TempPathFactory):
    movie, path, gain = moderate_dose
    out = tmp_path_factory.mktemp("moderate_out") / "Micrographs" / "mic.mrc"
    return run_motion_correction(_inputs(movie, path, gain, out))


def test_global_shifts_match_planted_drift_at_moderate_dose(moderate_dose, moderate_result) -> None:
    movie = moderate_dose[0]
    assert moderate_result.shifts_px[0] == [0.0, 0.0]
    assert len(moderate_result.shifts_px) == movie.settings.n_frames
    assert _shift_rmse_px(moderate_result.shifts_px, movie.truth.shifts_px) <= 0.2


def test_outputs_are_micrographs_with_pixel_size_and_a_drift_plot(moderate_result) -> None:
    for name in (moderate_result.micrograph, moderate_result.micrograph_no_dw):
        assert read_mrc(name, mmap=False).shape == (1024, 1024)
        assert read_mrc_pixel_size_a(name) == pytest.approx(1.0)
    assert moderate_result.micrograph_no_dw.endswith("mic_noDW.mrc")
    plot = Path(moderate_result.drift_plot)
    assert plot.parent == Path(moderate_result.micrograph).parent and plot.name.endswith("_drift_plot.png")
    with Image.open(plot) as image:
        assert image.format == "PNG" and min(image.size) >= 200


def test_motion_statistics_follow_the_shifts(moderate_dose, moderate_result) -> None:
    settings = moderate_dose[0].settings
    steps_a = np.hypot(*np.diff(np.asarray(moderate_result.shifts_px), axis=0).T) * settings.pixel_size_a
    cutoff_frame = round(4.0 / settings.dose_per_frame_e_a2)  # frames before 4 e/Å² count as early
    assert moderate_result.total_motion_a == pytest.approx(steps_a.sum())
    assert moderate_result.early_motion_a == pytest.approx(steps_a[: cutoff_frame - 1].sum())
    assert moderate_result.late_motion_a == pytest.approx(steps_a[cutoff_frame - 1:].sum())
    assert moderate_result.average_motion_per_frame_a == pytest.approx(steps_a.sum() / settings.n_frames)
    # The simulated drift is fastest in the first frames.
    assert moderate_result.early_motion_a / (cutoff_frame - 1) > moderate_result.late_motion_a / len(steps_a[2:])


def test_dose_weighted_sum_keeps_more_high_resolution_signal(moderate_dose, moderate_result) -> None:
    clean = moderate_dose[0].clean_micrograph
    weighted = read_mrc(moderate_result.micrograph, mmap=False)
    plain = read_mrc(moderate_result.micrograph_no_dw, mmap=False)
    assert _band_correlation(weighted, clean, 1.0, 4.0, 2.5) > _band_correlation(plain, clean, 1.0, 4.0, 2.5)


def test_noise_free_integer_shifts_are_recovered_exactly(tmp_path: Path) -> None:
    settings = SpaSimulationSettings(image_size_px=512, n_frames=8, counting_noise=False, integer_shifts=True,
                                     local_motion_a=0.0, radiation_damage=False, drift_a_per_frame=2.0,
                                     movie_format="mrc", seed=5)
    movie = simulate_movie(settings, 0)
    path, gain = _write_movie(movie, tmp_path)
    result = run_motion_correction(_inputs(movie, path, gain, tmp_path / "mic.mrc", patches_x=1, patches_y=1,
                                           smooth_trajectory=False))
    error = np.asarray(result.shifts_px) - np.asarray(movie.truth.shifts_px)
    assert np.abs(error).max() < 0.05


def test_local_correction_sharpens_a_warped_specimen(tmp_path: Path) -> None:
    settings = SpaSimulationSettings(image_size_px=1024, n_frames=16, dose_per_frame_e_a2=3.0, local_motion_a=4.0,
                                     seed=7)
    movie = simulate_movie(settings, 0)
    path, gain = _write_movie(movie, tmp_path)
    local = run_motion_correction(_inputs(movie, path, gain, tmp_path / "local.mrc"))
    rigid = run_motion_correction(_inputs(movie, path, gain, tmp_path / "rigid.mrc", patches_x=1, patches_y=1))
    assert local.local_motion.applied and local.local_motion.patches_used >= 20
    assert local.local_motion.max_local_motion_px > 1.0
    clean = movie.clean_micrograph
    assert (_band_correlation(read_mrc(local.micrograph_no_dw, mmap=False), clean, 1.0, 8.0, 3.0)
            > _band_correlation(read_mrc(rigid.micrograph_no_dw, mmap=False), clean, 1.0, 8.0, 3.0))


def test_local_correction_is_not_applied_to_noise(tmp_path: Path) -> None:
    settings = SpaSimulationSettings(image_size_px=512, n_frames=16, dose_per_frame_e_a2=0.5, local_motion_a=0.0,
                                     seed=8)
    movie = simulate_movie(settings, 0)
    path, gain = _write_movie(movie, tmp_path)
    result = run_motion_correction(_inputs(movie, path, gain, tmp_path / "mic.mrc", patches_x=3, patches_y=3))
    assert not result.local_motion.applied
    assert result.local_motion.note


def test_dose_weights_sum_to_one_and_favour_early_frames_at_high_resolution() -> None:
    k = np.array([0.0, 0.05, 0.2, 0.4])
    weights = dose_weights(k, n_frames=30, dose_per_frame_e_a2=1.5)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(weights[:, 0], 1 / 30)            # no damage at k = 0
    assert np.all(np.diff(weights[:, 3]) < 0)                     # later frames weigh less at 2.5 Å
    assert weights[0, 3] / weights[-1, 3] > weights[0, 1] / weights[-1, 1]
    # Grant & Grigorieff 2015: Ne(k) = 0.245 k^-1.665 + 2.81 at 300 kV, 0.8 × that at 200 kV.
    assert critical_exposure_e_a2(np.array([0.25]))[0] == pytest.approx(0.245 * 0.25**-1.665 + 2.81)
    assert critical_exposure_e_a2(np.array([0.25]), 200.0)[0] == pytest.approx(
        0.8 * critical_exposure_e_a2(np.array([0.25]))[0])


def test_super_resolution_movies_are_binned_by_two(tmp_path: Path) -> None:
    settings = SpaSimulationSettings(image_size_px=512, n_frames=6, pixel_size_a=0.5, particle_diameter_a=100,
                                     seed=9)
    movie = simulate_movie(settings, 0)
    path, gain = _write_movie(movie, tmp_path)
    result = run_motion_correction(_inputs(movie, path, gain, tmp_path / "mic.mrc", bin_factor=2))
    assert result.pixel_size_a == pytest.approx(1.0)
    assert read_mrc(result.micrograph, mmap=False).shape == (256, 256)
    assert read_mrc_pixel_size_a(result.micrograph) == pytest.approx(1.0)
    assert len(result.shifts_px) == 6


@pytest.fixture(scope="module")
def small_movie() -> SimulatedMovie:
    settings = SpaSimulationSettings(image_size_px=128, n_frames=6, particles_per_micrograph=0, seed=10)
    return simulate_movie(settings, 0)


def test_single_frame_movie_gives_zero_shifts(small_movie: SimulatedMovie, tmp_path: Path) -> None:
    path, gain = _write_movie(small_movie, tmp_path, small_movie.frames[:1])
    result = run_motion_correction(_inputs(small_movie, path, gain, tmp_path / "mic.mrc"))
    assert result.n_frames == 1 and result.shifts_px == [[0.0, 0.0]] and result.total_motion_a == 0.0
    assert not result.local_motion.applied


def test_image_smaller_than_patches_skips_local_alignment_with_a_note(small_movie: SimulatedMovie,
                                                                      tmp_path: Path) -> None:
    path, gain = _write_movie(small_movie, tmp_path)
    result = run_motion_correction(_inputs(small_movie, path, gain, tmp_path / "mic.mrc"))
    assert not result.local_motion.applied
    assert "local alignment skipped" in result.local_motion.note and result.notes


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_frame_with_nan_is_named_in_the_error(small_movie: SimulatedMovie, tmp_path: Path) -> None:
    frames = small_movie.frames.astype(np.float32)
    frames[3, 10, 10] = np.nan
    path = write_mrc(tmp_path / "nan_movie.mrc", frames, 1.0, is_stack=True)
    with pytest.raises(ImageFileError, match="frame 3 .*NaN") as info:
        run_motion_correction(_inputs(small_movie, path, None, tmp_path / "mic.mrc"))
    assert info.value.path == str(path)


def test_blank_frame_is_named_in_the_error(small_movie: SimulatedMovie, tmp_path: Path) -> None:
    frames = small_movie.frames.copy()
    frames[2] = 0
    path, gain = _write_movie(small_movie, tmp_path, frames)
    with pytest.raises(ImageFileError, match="frame 2 is blank") as info:
        run_motion_correction(_inputs(small_movie, path, gain, tmp_path / "mic.mrc"))
    assert info.value.path == str(path)


def test_gain_of_the_wrong_shape_is_named_in_the_error(small_movie: SimulatedMovie, tmp_path: Path) -> None:
    path, _ = _write_movie(small_movie, tmp_path)
    gain = write_mrc(tmp_path / "wrong_gain.mrc", np.ones((64, 128), dtype=np.float32), 1.0)
    with pytest.raises(ImageFileError, match="does not match the movie frames") as info:
        run_motion_correction(_inputs(small_movie, path, gain, tmp_path / "mic.mrc"))
    assert info.value.path == str(gain)


def test_console_prints_the_result_as_json(small_movie: SimulatedMovie, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path, gain = _write_movie(small_movie, tmp_path)
    out = tmp_path / "cli" / "mic.mrc"
    code = main(["motioncorr", str(path), "--out", str(out), "--pixel-size-a", "1.0", "--dose-per-frame-e-a2", "1.0",
                 "--gain-reference-path", str(gain), "--threads", "2", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("shifts_px", "total_motion_a", "early_motion_a", "late_motion_a", "average_motion_per_frame_a",
                "micrograph", "micrograph_no_dw", "drift_plot", "n_frames", "pixel_size_a", "local_motion",
                "timings_s"):
        assert key in data
    assert data["micrograph"] == str(out) and out.exists() and len(data["shifts_px"]) == 6


def test_console_reports_a_bad_movie_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.mrc"
    broken.write_bytes(b"not an mrc file at all")
    code = main(["motioncorr", str(broken), "--out", str(tmp_path / "mic.mrc"), "--pixel-size-a", "1.0"])
    assert code == 1
    assert str(broken) in capsys.readouterr().err


def test_dose_weight_series_reproduces_the_explicit_weights() -> None:
    k = np.array([0.0, 0.02, 0.1, 0.25, 0.45])
    explicit = dose_weights(k, n_frames=40, dose_per_frame_e_a2=1.2, voltage_kv=200.0)
    series = DoseWeightSeries(k, n_frames=40, dose_per_frame_e_a2=1.2, voltage_kv=200.0)
    from_series = series.first * series.ratio ** np.arange(40)[:, None]
    np.testing.assert_allclose(from_series, explicit, rtol=1e-4, atol=1e-7)


def _shifted_stacks(shifts_px: np.ndarray, size: int, noise: float, seed: int) -> np.ndarray:
    """rfft2 of frames (stacks, frames, size, size) showing one random blob image moved by `shifts_px` [x, y]."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.standard_normal((size, size)), 2.0)
    spectrum = np.fft.rfft2(image)
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    ramps = np.exp(-2j * np.pi * (ky * shifts_px[..., 1, None, None] + kx * shifts_px[..., 0, None, None]))
    frames = np.fft.irfft2(spectrum * ramps, s=(size, size))
    frames += noise * rng.standard_normal(frames.shape)
    return np.fft.rfft2(frames).astype(np.complex64)


def test_windowed_correlation_equals_the_inverse_fft_map() -> None:
    shifts = np.random.default_rng(1).uniform(-3, 3, (2, 5, 2))
    spectra = _shifted_stacks(shifts, 32, 0.1, seed=2)
    held = np.random.default_rng(3).uniform(-2, 2, (2, 5, 2))
    ky = np.fft.fftfreq(32)[:, None]
    kx = np.fft.rfftfreq(32)[None, :]
    aligned = spectra * np.exp(2j * np.pi * (ky * held[..., 1, None, None] + kx * held[..., 0, None, None]))
    cross = np.conj(aligned) * (aligned.sum(axis=1, keepdims=True) - aligned)
    full_map = np.fft.irfft2(cross, s=(32, 32)) * 32 * 32
    correlation = _WindowCorrelation(spectra.copy(), (32, 32), 2.5)
    correlation.move_to(held)
    windows = correlation()
    offsets = np.arange(-3, 4)
    expected = full_map[..., (offsets % 32)[:, None], (offsets % 32)[None, :]]
    np.testing.assert_allclose(windows, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_aligned_stacks_recover_sub_pixel_shifts_each_as_if_alone() -> None:
    shifts = np.random.default_rng(4).uniform(-4, 4, (3, 8, 2))
    shifts -= shifts[:, :1]
    spectra = _shifted_stacks(shifts, 64, 0.05, seed=5)
    no_filter = np.ones((64, 33), dtype=np.float32)
    together = align_frames(spectra.copy(), (64, 64), no_filter, 16.0, 10, 0.01, 2)
    np.testing.assert_allclose(together.shifts_px, shifts, atol=0.05)
    alone = align_frames(spectra[1:2].copy(), (64, 64), no_filter, 16.0, 10, 0.01, 2)
    np.testing.assert_allclose(together.shifts_px[1:2], alone.shifts_px, atol=1e-9)
