"""The tilt-series simulator plants what its truth says: order, names, mdoc, geometry, defocus gradient, dose, SNR."""
from __future__ import annotations

import json
import math
import re
import threading
import time

import mdocfile
import mrcfile
import numpy as np
import pytest
import tifffile
from pydantic import ValidationError
from scipy import ndimage

from airflow_provider_cryoem import cli
from airflow_provider_cryoem.engines.ctf_fit import CtfOptics, search_defocus_1d
from airflow_provider_cryoem.engines.ctf_spectrum import radial_profile
from airflow_provider_cryoem.simulate import (
    END_MARKER_NAME,
    TiltSeriesSimulation,
    TomoSessionTruth,
    TomoSimulationSettings,
    run_live_tomo_session,
    write_tomo_session,
)
from airflow_provider_cryoem.simulate.session import GROUND_TRUTH_NAME
from airflow_provider_cryoem.simulate.specimen import ICE_INELASTIC_MFP_A

# 128² frames at 4 Å/px (16 Å phantom voxels), 5 tilts: a whole session in about a second.
SMALL = dict(image_size_px=128, pixel_size_a=4.0, tilt_step_deg=30.0)
STILL = dict(tracking_error_px=0.0, drift_a_per_frame=0.0, local_motion_a=0.0, gain_variation=0.0)


def _sections(mdoc_text: str) -> int:
    return len(re.findall(r"^\[ZValue = \d+\]", mdoc_text, flags=re.MULTILINE))


def test_acquisition_order_is_the_dose_symmetric_scheme_in_groups():
    settings = TomoSimulationSettings()
    order = settings.acquisition_order()
    assert len(order) == 41 and sorted(order) == settings.tilt_angles_deg()
    assert order[:11] == [0.0, 3.0, -3.0, -6.0, 6.0, 9.0, -9.0, -12.0, 12.0, 15.0, -15.0]
    assert TomoSimulationSettings(dose_symmetric_group=1, tilt_step_deg=10, tilt_max_deg=20,
                                  tilt_min_deg=-40).acquisition_order() == [0.0, -10.0, 10.0, -20.0, 20.0, -30.0, -40.0]
    with pytest.raises(ValidationError, match="must include 0"):
        TomoSimulationSettings(tilt_min_deg=10)


def test_serialem_session_files_mdoc_and_truth_follow_collection_order(tmp_path):
    settings = TomoSimulationSettings(**SMALL, n_series=2)
    truth = write_tomo_session(settings, tmp_path)

    assert TomoSessionTruth.read(tmp_path / GROUND_TRUTH_NAME) == truth
    assert (tmp_path / truth.gain_reference_name).is_file()
    for index, series in enumerate(truth.series):
        assert series.name == f"TS_{index + 1:02d}" and series.mdoc_name == f"TS_{index + 1:02d}.mdoc"
        angles = [t.tilt_angle_deg for t in series.tilts]
        assert angles == settings.acquisition_order() == [0.0, 30.0, -30.0, -60.0, 60.0]
        assert [t.movie_name for t in series.tilts] == [
            f"{series.name}_001_0.0.tif", f"{series.name}_002_30.0.tif", f"{series.name}_003_-30.0.tif",
            f"{series.name}_004_-60.0.tif", f"{series.name}_005_60.0.tif"]
        assert [t.pre_exposure_e_a2 for t in series.tilts] == [0.0, 2.5, 5.0, 7.5, 10.0]
        frames = tifffile.imread(tmp_path / series.tilts[0].movie_name)
        assert frames.shape == (settings.n_frames, 128, 128)

        mdoc = mdocfile.read(tmp_path / series.mdoc_name)
        assert mdoc["ZValue"].tolist() == [0, 1, 2, 3, 4]
        assert np.allclose(mdoc["TiltAngle"], angles, atol=0.005)
        assert [path.name for path in mdoc["SubFramePath"]] == [t.movie_name for t in series.tilts]
        assert np.allclose(mdoc["PriorRecordDose"], [t.pre_exposure_e_a2 for t in series.tilts])
        text = (tmp_path / series.mdoc_name).read_text()
        assert "[T =     Tilt axis angle = 85.0, binning = 1  spot = 8  camera = 0]" in text
        assert "FrameDosesAndNumber = 0.625 4" in text and "TargetDefocus = -4" in text

        with mrcfile.open(tmp_path / series.phantom_name) as mrc:
            assert list(mrc.data.shape) == series.phantom_shape
            assert mrc.voxel_size.x == pytest.approx(16.0)
        kinds = [o.kind for o in series.objects]
        assert {"vesicle", "particle"} <= set(kinds) and "gold" not in kinds
        inside = [o for o in series.objects if o.inside_vesicle is not None]
        for particle in inside:
            vesicle = series.objects[particle.inside_vesicle]
            gap = vesicle.radius_a - math.dist(particle.centre_a, vesicle.centre_a) - particle.radius_a
            assert gap > 0
        assert all(abs(o.centre_a[2]) + o.radius_a <= 5 * settings.thickness_nm for o in series.objects)


def test_tomo5_names_carry_series_tilt_number_and_angle_as_cryoem_services_parses_them(tmp_path):
    settings = TomoSimulationSettings(**SMALL, n_series=2, naming="tomo5", movie_format="mrc", n_gold=1)
    truth = write_tomo_session(settings, tmp_path)
    assert [s.mdoc_name for s in truth.series] == ["Position_1.mdoc", "Position_1_2.mdoc"]
    second = truth.series[1]
    assert second.tilts[2].movie_name == "Position_1_2_003_-30.00_20240101_090330_Fractions.mrc"
    assert any(o.kind == "gold" for o in second.objects)
    for tilt in second.tilts:
        tokens = tilt.movie_name.split("_")
        angle_index = next(i for i, token in enumerate(tokens) if "." in token)  # tomo_output_files.py
        assert "_".join(tokens[:angle_index - 1]) == "Position_1_2"
        assert int(tokens[angle_index - 1]) == tilt.acquisition_order == tilt.z_value + 1
        assert float(tokens[angle_index]) == tilt.tilt_angle_deg
        with mrcfile.open(tmp_path / tilt.movie_name) as mrc:
            assert mrc.data.shape == (settings.n_frames, 128, 128)


def test_same_seed_gives_the_same_tilts():
    first = next(TiltSeriesSimulation(TomoSimulationSettings(**SMALL, seed=3), 0).tilts())
    again = next(TiltSeriesSimulation(TomoSimulationSettings(**SMALL, seed=3), 0).tilts())
    other = next(TiltSeriesSimulation(TomoSimulationSettings(**SMALL, seed=4), 0).tilts())
    assert np.array_equal(first.frames, again.frames) and first.truth == again.truth
    assert not np.array_equal(first.frames, other.frames)


def test_live_mode_writes_tilts_in_order_and_the_mdoc_grows_after_each_movie(tmp_path):
    settings = TomoSimulationSettings(**SMALL)
    seen_movies: list[str] = []
    snapshots: list[tuple[int, int]] = []   # (movies present, mdoc sections)
    done = threading.Event()
    result: dict = {}

    def collect() -> None:
        result["truth"] = run_live_tomo_session(settings, tmp_path, interval_s=0.25, chunk_delay_s=0.01, n_chunks=3)
        done.set()

    worker = threading.Thread(target=collect)
    worker.start()
    while not done.is_set():
        movies = [p.name for p in tmp_path.glob("TS_01_*.tif")]
        seen_movies += sorted(set(movies) - set(seen_movies))
        mdoc = tmp_path / "TS_01.mdoc"
        sections = _sections(mdoc.read_text()) if mdoc.exists() else 0
        snapshots.append((len(movies), sections))
        assert not (tmp_path / END_MARKER_NAME).exists()
        time.sleep(0.01)
    worker.join()

    tilts = result["truth"].series[0].tilts
    assert seen_movies == [t.movie_name for t in tilts]
    assert all(sections <= movies for movies, sections in snapshots)
    counts = [sections for _, sections in snapshots]
    assert counts == sorted(counts) and len(set(counts) - {0}) >= 3   # seen growing (polls may miss a step)
    assert _sections((tmp_path / "TS_01.mdoc").read_text()) == len(tilts)
    assert (tmp_path / END_MARKER_NAME).exists()


def test_objects_appear_where_the_truth_projects_them_and_frames_carry_the_tracking_shift():
    settings = TomoSimulationSettings(**SMALL, **{**STILL, "tracking_error_px": 4.0}, n_vesicles=0, n_particles=0,
                                      n_gold=2, counting_noise=False, ice_texture_rad=0.0, tilt_axis_deg=70.0)
    simulation = TiltSeriesSimulation(settings, 0)
    beads = [o for o in simulation.truth.objects if o.kind == "gold"]
    checked = 0
    for tilt in simulation.tilts():
        unshifted = tilt.truth.model_copy(update={"shift_px": [0.0, 0.0]})
        potential = tilt.projected_potential
        points = [simulation.truth.project_point_px(bead.centre_a, unshifted) for bead in beads]
        for x, y in points:
            alone = sum(math.dist((x, y), other) < 40 for other in points) == 1
            if not (alone and 18 < x < 109 and 18 < y < 109):  # the bead (radius 12.5 px) and its window inside
                continue
            rows, cols = np.mgrid[round(y) - 17:round(y) + 18, round(x) - 17:round(x) + 18]
            weight = np.clip(potential[rows, cols], 0.0, None)
            assert (weight * cols).sum() / weight.sum() == pytest.approx(x, abs=0.1)
            assert (weight * rows).sum() / weight.sum() == pytest.approx(y, abs=0.1)
            checked += 1
        # frame 0 is the clean image moved by the tilt's tracking shift (compared away from the wrapped edge)
        def moved(shift_px: list[float]) -> np.ndarray:
            spectrum = ndimage.fourier_shift(np.fft.fft2(tilt.clean), (shift_px[1], shift_px[0]))
            return np.fft.ifft2(spectrum).real[16:-16, 16:-16].ravel()

        frame = tilt.frames[0][16:-16, 16:-16].ravel()
        dx, dy = tilt.truth.shift_px
        assert np.corrcoef(frame, moved([dx, dy]))[0, 1] > 0.99
        assert np.corrcoef(frame, moved([dx, dy]))[0, 1] > np.corrcoef(frame, moved([dx + 1, dy - 1]))[0, 1] + 0.01
    assert checked >= 4


def test_defocus_gradient_across_a_tilt_has_the_sign_and_size_the_geometry_gives():
    """Fit the Thon rings of the two halves of a 60° tilt (ice only, noise-free): they differ by the height
    difference of the tilted mid-plane, and the lower half (as the projector tilts it) is further underfocused."""
    settings = TomoSimulationSettings(image_size_px=512, tilt_min_deg=0.0, tilt_max_deg=60.0, tilt_step_deg=60.0,
                                      tilt_axis_deg=90.0, thickness_nm=50.0, n_vesicles=0, n_particles=0,
                                      counting_noise=False, astigmatism_max_a=0.0, radiation_damage=False,
                                      envelope_bfactor_a2=0.0, ice_texture_rad=1.0, **STILL)
    simulation = TiltSeriesSimulation(settings, 0)
    tilt = [t for t in simulation.tilts()][1]
    assert tilt.truth.tilt_angle_deg == 60.0
    truth = simulation.truth
    # The axis runs along x (α = 90°): +y is the projector's +x'. A mid-plane point at x' > 0 tilts down
    # (z' = -x' sin θ < 0 in the projector's rotation), so the half at larger y is further from focus.
    optics = CtfOptics(settings.voltage_kv, settings.cs_mm, settings.amplitude_contrast)
    fitted, expected = [], []
    for rows in (slice(0, 256), slice(256, 512)):
        half = tilt.clean[rows] - tilt.clean[rows].mean()
        spectrum = sum(np.abs(np.fft.fftshift(np.fft.fft2(half[:, c:c + 256]))) ** 2 for c in (0, 128, 256))
        freq, profile = radial_profile(spectrum, 256, settings.pixel_size_a)
        keep = (freq > 1 / 50) & (freq < 1 / 10)
        defocus_a, _, _ = search_defocus_1d(freq[keep], profile[keep], optics, np.arange(30_000.0, 55_000.0, 25.0),
                                            np.array([0.0]))
        fitted.append(defocus_a)
        centre_row = 0.5 * (rows.start + rows.stop - 1)
        expected.append(1e4 * truth.defocus_um_at(255.5, centre_row, tilt.truth))
    geometric = 256 * settings.pixel_size_a * math.tan(math.radians(60.0))   # Å between the half centres
    assert expected[1] - expected[0] == pytest.approx(geometric, rel=1e-3)
    assert fitted[1] - fitted[0] == pytest.approx(geometric, rel=0.3)
    assert np.mean(fitted) == pytest.approx(1e4 * tilt.truth.defocus_um, abs=250)


def _snr(tilt, binning: int) -> float:
    """Pixel SNR of the noise-free image against what the counts add: var(clean) / var(counts - clean)."""
    def binned(image):
        n = image.shape[0] // binning * binning
        return image[:n, :n].reshape(n // binning, binning, n // binning, binning).mean(axis=(1, 3))
    counts = tilt.frames.astype(np.float32).sum(axis=0)
    return float(binned(tilt.clean).var() / binned(counts - tilt.clean).var())


def test_tilts_are_as_noisy_as_real_ones_and_high_tilts_are_dimmer():
    """2.5 e⁻/Å² per tilt at 2 Å/px through 150 nm: ~6 counts per pixel at 0°, fewer as the path grows, and
    the specimen (objects alone, ice alone) far below the shot noise at full sampling."""
    common = dict(tilt_step_deg=60.0, **STILL)
    objects = {t.truth.tilt_angle_deg: t for t in TiltSeriesSimulation(
        TomoSimulationSettings(**common, ice_texture_rad=0.0), 0).tilts()}
    full = {t.truth.tilt_angle_deg: t for t in TiltSeriesSimulation(TomoSimulationSettings(**common), 0).tilts()}
    settings = TomoSimulationSettings(**common)
    for angle, tilt in full.items():
        path_a = 10 * settings.thickness_nm / math.cos(math.radians(angle))
        expected = settings.dose_per_tilt_e_a2 * settings.pixel_size_a**2 * math.exp(-path_a / ICE_INELASTIC_MFP_A)
        # within the few % that amplitude contrast of the objects takes away
        assert tilt.frames.astype(np.float32).sum(axis=0).mean() == pytest.approx(expected, rel=0.05)
        assert tilt.truth.transmission == pytest.approx(math.exp(-path_a / ICE_INELASTIC_MFP_A), rel=1e-4)
    assert full[60.0].clean.mean() < 0.65 * full[0.0].clean.mean()

    object_snr = _snr(objects[0.0], 1)
    assert 0.01 < object_snr < 0.15          # measured 0.078
    assert _snr(objects[0.0], 4) < 2.0       # measured ~1.0 at 8 Å/px, the tomogram's sampling
    assert 0.02 < _snr(full[0.0], 1) < 0.3   # ice counted as signal: measured ~0.15
    # the specimen's contrast is a small modulation of the beam, weakened with the beam at high tilt
    for tilt in full.values():
        assert tilt.clean.std() / tilt.clean.mean() < 0.3


def test_cli_writes_a_tilt_series_session(tmp_path, capsys):
    settings = json.dumps({"tilt_step_deg": 30.0, "pixel_size_a": 4.0})
    assert cli.main(["simulate", str(tmp_path / "a"), "--tomo", "--size", "128", "--naming", "tomo5",
                     "--settings-json", settings, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["series"] == 1 and summary["tilts"] == 5
    assert summary["mdocs"] == [str(tmp_path / "a" / "Position_1.mdoc")]
    assert cli.main(["simulate", str(tmp_path / "b"), "--tomo", "--live", "--interval-s", "0", "--size", "128",
                     "--settings-json", settings]) == 0
    assert (tmp_path / "b" / END_MARKER_NAME).exists() and _sections((tmp_path / "b" / "TS_01.mdoc").read_text()) == 5
    with pytest.raises(SystemExit):
        cli.main(["simulate", str(tmp_path / "c"), "--tomo", "--movies", "3"])
