"""The simulator plants what its ground truth says: motion, particles, CTF, files, gain orientation, live mode."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import mrcfile
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from airflow_provider_cryoem import cli
from airflow_provider_cryoem.engines.ctf_model import ctf_phase
from airflow_provider_cryoem.io import read_mrc, read_mrc_pixel_size_a
from airflow_provider_cryoem.simulate import (
    END_MARKER_NAME,
    SessionTruth,
    SpaSimulationSettings,
    make_structure,
    orient_gain,
    render_volume,
    run_live_session,
    simulate_movie,
    write_spa_session,
)
from airflow_provider_cryoem.simulate.density import render_gaussians
from airflow_provider_cryoem.simulate.structure import projected_atoms_xy_a

SMALL = dict(image_size_px=256, n_frames=4, particle_diameter_a=100.0, particles_per_micrograph=4)


def _gain_corrected(movie) -> np.ndarray:
    gain = orient_gain(movie.gain, movie.settings.gain_rotation, movie.settings.gain_flip)
    return movie.frames.astype(np.float32) * gain


def test_same_seed_gives_identical_movie_and_another_seed_a_different_one():
    first = simulate_movie(SpaSimulationSettings(**SMALL, seed=5), 1)
    again = simulate_movie(SpaSimulationSettings(**SMALL, seed=5), 1)
    other = simulate_movie(SpaSimulationSettings(**SMALL, seed=6), 1)
    assert np.array_equal(first.frames, again.frames)
    assert first.truth == again.truth
    assert not np.array_equal(first.frames, other.frames)
    assert first.truth.defocus_u_a != other.truth.defocus_u_a


def test_noise_free_frames_moved_back_by_planted_integer_shifts_sum_to_clean_micrograph():
    settings = SpaSimulationSettings(image_size_px=256, n_frames=6, particle_diameter_a=100.0,
                                     particles_per_micrograph=3, counting_noise=False, integer_shifts=True,
                                     local_motion_a=0.0, drift_a_per_frame=2.0)
    movie = simulate_movie(settings, 0)
    shifts = np.array(movie.truth.shifts_px)
    assert shifts[0].tolist() == [0.0, 0.0] and np.abs(shifts[-1]).max() >= 5
    frames = _gain_corrected(movie)
    aligned = sum(np.roll(frame, (-int(dy), -int(dx)), axis=(0, 1)) for frame, (dx, dy) in zip(frames, shifts))
    unaligned = frames.sum(axis=0)
    edge = int(np.abs(shifts).max()) + 1
    inner = (slice(edge, -edge),) * 2
    residual = np.abs(aligned - movie.clean_micrograph)[inner].max()
    assert residual < 1e-3 * movie.clean_micrograph.mean()
    assert np.abs(unaligned - movie.clean_micrograph)[inner].max() > 100 * residual


def test_local_motion_displaces_image_regions_as_truth_says():
    settings = SpaSimulationSettings(image_size_px=256, n_frames=3, particle_diameter_a=100.0,
                                     particles_per_micrograph=6, counting_noise=False, radiation_damage=False,
                                     drift_a_per_frame=0.0, local_motion_a=3.0, gain_variation=0.0)
    movie = simulate_movie(settings, 0)
    first, last = movie.frames[0], movie.frames[-1]
    for cy, cx in [(64, 64), (64, 192), (192, 64), (192, 192)]:
        patch = (slice(cy - 48, cy + 48), slice(cx - 48, cx + 48))
        measured = _phase_correlation_shift(first[patch], last[patch])
        truth_dx, truth_dy = movie.truth.local_motion.displacement_px(np.array(cx), np.array(cy), 2, 256)
        assert np.hypot(measured[0] - truth_dx, measured[1] - truth_dy) < 0.5


def _phase_correlation_shift(reference: np.ndarray, moved: np.ndarray) -> tuple[float, float]:
    """[dx, dy] by which `moved` is `reference` displaced (upsampled peak of the cross-correlation)."""
    window = np.outer(np.hanning(reference.shape[0]), np.hanning(reference.shape[1]))
    a = np.fft.fft2((reference - reference.mean()) * window)
    b = np.fft.fft2((moved - moved.mean()) * window)
    xc = np.fft.fftshift(np.real(np.fft.ifft2(np.conj(a) * b)))
    zoom = ndimage.zoom(xc, 10, order=3)
    py, px = np.unravel_index(np.argmax(zoom), zoom.shape)
    scale = (np.array(xc.shape) - 1) / (np.array(zoom.shape) - 1)
    centre = np.array(xc.shape) // 2
    return px * scale[1] - centre[1], py * scale[0] - centre[0]


def test_planted_particle_centres_sit_on_projected_density():
    movie = simulate_movie(SpaSimulationSettings(image_size_px=512, n_frames=2, particles_per_micrograph=10), 0)
    smooth = ndimage.uniform_filter(movie.projected_potential, 21)
    centres = np.array(movie.truth.particle_coordinates_px())
    assert len(centres) >= 5
    at_centres = smooth[np.round(centres[:, 1]).astype(int), np.round(centres[:, 0]).astype(int)]
    rng = np.random.default_rng(0)
    random_xy = rng.uniform(60, 450, (200, 2)).astype(int)
    far = [np.min(np.hypot(*(centres - xy).T)) > 80 for xy in random_xy]
    background = smooth[random_xy[far, 1], random_xy[far, 0]]
    assert at_centres.min() > background.max() + 3 * background.std()


def test_particles_do_not_overlap_keep_off_edges_and_carbon_and_junk_is_flagged():
    settings = SpaSimulationSettings(image_size_px=768, n_frames=1, particle_diameter_a=100.0,
                                     particles_per_micrograph=20, junk_fraction=0.3, carbon_edge=True, seed=2)
    truth = simulate_movie(settings, 0).truth
    particles = truth.particles
    assert 10 <= len(particles) <= 20 and 1 <= sum(p.is_junk for p in particles) < len(particles)
    for i, a in enumerate(particles):
        assert 0.6 * 100 <= a.x_px <= 767 - 0.6 * 100 and 0.6 * 100 <= a.y_px <= 767 - 0.6 * 100
        for b in particles[i + 1:]:
            assert np.hypot(a.x_px - b.x_px, a.y_px - b.y_px) >= 0.5 * (a.diameter_a + b.diameter_a) - 1e-6
        edge = truth.carbon_edge
        normal = np.deg2rad(edge.normal_deg)
        into_carbon = (a.x_px - edge.point_px[0]) * np.cos(normal) + (a.y_px - edge.point_px[1]) * np.sin(normal)
        assert into_carbon <= -0.5 * a.diameter_a
    assert 0.05 < truth.carbon_edge.carbon_area_fraction < 0.5


def _radial_power_spectrum(image: np.ndarray, pixel_size_a: float, tile: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Rotationally averaged, tile-averaged power spectrum: (frequency 1/Å, power)."""
    power = np.zeros((tile, tile))
    for y in range(0, image.shape[0] - tile + 1, tile // 2):
        for x in range(0, image.shape[1] - tile + 1, tile // 2):
            piece = image[y:y + tile, x:x + tile]
            power += np.abs(np.fft.fft2(piece - piece.mean())) ** 2
    freq = np.fft.fftfreq(tile)
    ring = np.round(np.hypot(*np.meshgrid(freq, freq)) * tile).astype(int)
    profile = np.bincount(ring.ravel(), power.ravel()) / np.bincount(ring.ravel())
    return np.arange(len(profile)) / (tile * pixel_size_a), profile


def _best_defocus_a(image: np.ndarray, settings: SpaSimulationSettings) -> float:
    """Defocus whose CTF² best correlates with the background-flattened radial power spectrum."""
    freq, profile = _radial_power_spectrum(image, settings.pixel_size_a)
    band = (freq > 1 / 40) & (freq < 1 / 5)
    flattened = np.log(profile) - ndimage.uniform_filter1d(np.log(profile), 25)
    candidates = np.arange(5000.0, 30000.0, 25.0)
    scores = [np.corrcoef(flattened[band], np.sin(ctf_phase(freq[band], d, settings.voltage_kv, settings.cs_mm,
                                                               settings.amplitude_contrast)) ** 2)[0, 1]
              for d in candidates]
    return float(candidates[int(np.argmax(scores))])


def test_thon_rings_of_summed_frames_match_planted_defocus():
    settings = SpaSimulationSettings(image_size_px=768, n_frames=24, astigmatism_max_a=0.0, seed=4)
    movie = simulate_movie(settings, 0)
    planted = movie.truth.defocus_u_a
    assert movie.truth.defocus_v_a == planted
    clean_estimate = _best_defocus_a(movie.clean_micrograph, settings)
    assert abs(clean_estimate - planted) < 0.01 * planted
    frames = _gain_corrected(movie)
    shifts = np.round(movie.truth.shifts_px).astype(int)
    summed = sum(np.roll(f, (-dy, -dx), axis=(0, 1)) for f, (dx, dy) in zip(frames, shifts))
    assert abs(_best_defocus_a(summed, settings) - planted) < 0.05 * planted


def test_mean_counts_follow_dose_and_ice_attenuation():
    settings = SpaSimulationSettings(**SMALL, dose_per_frame_e_a2=2.0, pixel_size_a=1.5)
    movie = simulate_movie(settings, 0)
    expected = 2.0 * 1.5**2 * np.exp(-settings.ice_thickness_a / 3000.0)
    assert _gain_corrected(movie).mean() == pytest.approx(expected, rel=0.03)
    assert movie.frames.dtype == np.uint8


def test_ice_varies_hole_to_hole_only_when_asked():
    plain = SpaSimulationSettings(**SMALL, dose_per_frame_e_a2=2.0, ice_thickness_a=600.0)
    spread = plain.model_copy(update={"ice_thickness_spread_a": 400.0})
    movies = [simulate_movie(spread, index) for index in range(3)]
    thickness = [movie.truth.ice_thickness_centre_a for movie in movies]
    assert all(200.0 <= t <= 1000.0 for t in thickness) and len(set(thickness)) == 3
    for movie, t in zip(movies, thickness):  # the attenuation follows each micrograph's own ice
        assert _gain_corrected(movie).mean() == pytest.approx(2.0 * np.exp(-t / 3000.0), rel=0.03)
    unchanged = simulate_movie(plain, 1)  # no spread: the same movie as before the setting existed
    assert unchanged.truth.ice_thickness_centre_a == 600.0
    assert unchanged.truth.model_dump(exclude={"ice_thickness_centre_a"}) == \
        movies[1].truth.model_dump(exclude={"ice_thickness_centre_a"})
    with pytest.raises(ValueError, match="ice_thickness_spread_a"):
        SpaSimulationSettings(ice_thickness_a=100.0, ice_thickness_spread_a=200.0)


@pytest.mark.parametrize("movie_format", ["tiff", "mrc"])
def test_written_movies_gain_metadata_and_truth_read_back(tmp_path, movie_format):
    settings = SpaSimulationSettings(**SMALL, n_movies=2, movie_format=movie_format, pixel_size_a=1.2)
    truth = write_spa_session(settings, tmp_path)
    assert SessionTruth.read(tmp_path / "ground_truth.json") == truth
    movie = simulate_movie(settings, 1)
    path = tmp_path / truth.movies[1].movie_name
    assert path.suffix == f".{movie_format}"
    if movie_format == "tiff":
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.LZW
            data = tif.asarray()
        assert data.dtype == np.uint8
    else:
        data = read_mrc(path, mmap=False)
        assert data.dtype == np.uint16 and read_mrc_pixel_size_a(path) == pytest.approx(1.2)
    assert data.shape == (4, 256, 256) and np.array_equal(data, movie.frames)
    gain_path = tmp_path / truth.gain_reference_name
    gain = read_mrc(gain_path, mmap=False)
    assert gain.dtype == np.float32 and np.allclose(gain, movie.gain)
    assert read_mrc_pixel_size_a(gain_path) == pytest.approx(1.2)
    xml = (tmp_path / truth.movies[1].metadata_name).read_text()
    assert "<AccelerationVoltage>300000</AccelerationVoltage>" in xml and "1.200000e-10" in xml


@pytest.mark.parametrize("rotation, flip", [(0, 0), (1, 0), (2, 1), (3, 2), (1, 2)])
def test_gain_written_with_rotation_and_flip_flattens_frames_only_when_oriented_by_convention(rotation, flip):
    settings = SpaSimulationSettings(image_size_px=256, n_frames=2, particles_per_micrograph=0, ice_texture_rad=0,
                                     ice_gradient_a=0, dose_per_frame_e_a2=50.0, gain_variation=0.2,
                                     gain_rotation=rotation, gain_flip=flip)
    movie = simulate_movie(settings, 0)
    raw = movie.frames.astype(np.float32).sum(axis=0)

    def column_spread(image: np.ndarray) -> float:
        return float(np.std(image.mean(axis=0)) / image.mean())

    oriented = orient_gain(movie.gain, rotation, flip)
    assert column_spread(raw * oriented) < 0.2 * column_spread(raw)
    if (rotation, flip) != (0, 0):
        assert column_spread(raw * movie.gain) > 3 * column_spread(raw * oriented)


def test_live_session_grows_each_movie_then_writes_metadata_and_end_marker_last(tmp_path):
    settings = SpaSimulationSettings(**SMALL, n_movies=2)
    writer = threading.Thread(target=run_live_session, args=(settings, tmp_path),
                              kwargs=dict(interval_s=0.3, chunk_delay_s=0.1, n_chunks=4))
    writer.start()
    sizes_seen: dict[str, set[int]] = {}
    sizes_when_metadata_present: list[tuple[str, int]] = []
    xml_count_when_end_seen: list[int] = []
    while writer.is_alive():
        for movie in tmp_path.glob("*_fractions.tiff"):
            size = movie.stat().st_size
            sizes_seen.setdefault(movie.name, set()).add(size)
            if movie.with_name(movie.name.replace("_fractions.tiff", ".xml")).exists():
                sizes_when_metadata_present.append((movie.name, size))
        if (tmp_path / END_MARKER_NAME).exists():
            xml_count_when_end_seen.append(len(list(tmp_path.glob("*.xml"))))
        time.sleep(0.02)
    writer.join()
    truth = SessionTruth.read(tmp_path / "ground_truth.json")
    final_sizes = {m.movie_name: (tmp_path / m.movie_name).stat().st_size for m in truth.movies}
    assert sorted(final_sizes) == sorted(sizes_seen) and len(final_sizes) == 2
    for name, final in final_sizes.items():
        assert min(sizes_seen[name]) < final, "each movie is seen while still growing"
        assert tifffile.imread(tmp_path / name).shape == (4, 256, 256)
    assert sizes_when_metadata_present and all(size == final_sizes[name] for name, size in sizes_when_metadata_present)
    assert all(count == 2 for count in xml_count_when_end_seen)
    newest = max(p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file() and p.name != END_MARKER_NAME)
    assert (tmp_path / END_MARKER_NAME).stat().st_mtime_ns >= newest


def test_cli_writes_session_and_prints_json_summary(tmp_path, capsys):
    code = cli.main(["simulate", str(tmp_path / "session"), "--movies", "1", "--size", "256", "--frames", "3",
                     "--particle-diameter-a", "100", "--format", "mrc", "--seed", "3", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["movies"] == 1 and summary["format"] == "mrc"
    truth = SessionTruth.read(summary["ground_truth"])
    assert truth.settings.seed == 3 and (tmp_path / "session" / truth.movies[0].movie_name).exists()


def test_cli_rejects_bad_setting_naming_the_field(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["simulate", str(tmp_path), "--junk-fraction", "1.5"])
    assert exit_info.value.code == 2
    assert "junk_fraction" in capsys.readouterr().err


def test_default_movie_simulates_within_a_few_cpu_seconds():
    start = time.process_time()  # CPU time of all threads, so a busy shared machine does not make it flaky
    movie = simulate_movie(SpaSimulationSettings(), 0)
    cpu_s = time.process_time() - start
    assert movie.frames.shape == (24, 1024, 1024) and movie.frames.dtype == np.uint8
    assert cpu_s < 8.0


def test_volume_z_projection_matches_projected_atoms():
    settings = SpaSimulationSettings(pixel_size_a=2.0)
    structure = make_structure(settings)
    volume = render_volume(structure, 96, 2.0)
    xy_px = projected_atoms_xy_a(structure, 0.0, 0.0, 0.0) / 2.0 + 48
    image = render_gaussians(xy_px[:, ::-1], np.asarray(structure.weights) / 4.0, (96, 96),
                             structure.atom_sigma_a / 2.0)
    assert np.allclose(volume.sum(axis=0), image, atol=1e-4 * image.max())


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_project") is None, reason="relion_project not installed")
@pytest.mark.parametrize("angles", [(30.0, 50.0, 70.0), (120.0, 20.0, -60.0)])
def test_planted_orientations_follow_relion_projection_convention(tmp_path, angles):
    settings = SpaSimulationSettings(pixel_size_a=2.0)
    structure = make_structure(settings)
    with mrcfile.new(tmp_path / "map.mrc") as mrc:
        mrc.set_data(render_volume(structure, 96, 2.0))
        mrc.voxel_size = 2.0
    rot, tilt, psi = angles
    subprocess.run(["relion_project", "--i", str(tmp_path / "map.mrc"), "--o", str(tmp_path / "proj.mrc"),
                    "--rot", str(rot), "--tilt", str(tilt), "--psi", str(psi), "--angpix", "2"],
                   check=True, capture_output=True)
    relion = np.squeeze(read_mrc(tmp_path / "proj.mrc", mmap=False))
    xy_px = projected_atoms_xy_a(structure, rot, tilt, psi) / 2.0 + 48
    ours = render_gaussians(xy_px[:, ::-1], np.asarray(structure.weights), (96, 96), structure.atom_sigma_a / 2.0)
    mirrored = render_gaussians(xy_px[:, ::-1][:, [1, 0]], np.asarray(structure.weights), (96, 96),
                                structure.atom_sigma_a / 2.0)
    assert np.corrcoef(relion.ravel(), ours.ravel())[0, 1] > 0.995
    assert np.corrcoef(relion.ravel(), mirrored.ravel())[0, 1] < 0.95
