"""The realistic simulator preset plants what real grids show, at the contrast real data has, and says so in
its truth: weak particles, amorphous ice with its 3.7 Å ring, ice gradients, a carbon rim, contaminants,
touching particles and conformations."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from airflow_provider_cryoem import cli
from airflow_provider_cryoem.simulate import SpaSimulationSettings, make_structure, simulate_movie
from airflow_provider_cryoem.simulate.protein import PROTEIN_VOLUME_A3_PER_DA, protein_phase_rad_per_a
from airflow_provider_cryoem.simulate.session import GROUND_TRUTH_NAME
from airflow_provider_cryoem.simulate.truth import SessionTruth

# Small and quick: 256 px, 4 frames of the realistic preset's dose per frame.
QUICK = dict(image_size_px=256, n_frames=4, counting_noise=False, drift_a_per_frame=0.0, local_motion_a=0.0)


def _core_depression_per_frame_snr(preset: str) -> float:
    """Per-pixel SNR of particle centres in one frame: (ring - core)² of the clean frame over its Poisson variance."""
    settings = SpaSimulationSettings.preset(preset, **{**QUICK, "image_size_px": 384}, carbon_edge=False,
                                            carbon_particle_fraction=0.0, junk_fraction=0.0,
                                            ice_contaminants_per_um2=0.0, particles_per_micrograph=6,
                                            defocus_min_a=15000.0, defocus_max_a=15000.0)
    movie = simulate_movie(settings, 0)
    frame = movie.clean_micrograph / settings.n_frames
    diameter_px = settings.particle_diameter_px
    yy, xx = np.mgrid[0:frame.shape[0], 0:frame.shape[1]]
    depressions = []
    for x, y in movie.truth.particle_coordinates_px():
        r = np.hypot(xx - x, yy - y)
        depressions.append(frame[(r > 0.6 * diameter_px) & (r < 0.9 * diameter_px)].mean()
                           - frame[r < 0.25 * diameter_px].mean())
    return float(np.median(depressions) ** 2 / frame.mean())


def test_realistic_particles_are_as_faint_per_frame_as_real_ones_and_far_fainter_than_easy():
    # fei-extended.mrc's reference particles: centres 1.5 % darker than their surroundings, i.e. a per-frame
    # SNR of ~1.4e-4 at 1 e/Å² (benchmarks/bench_simulator_realism.py); the easy preset is far above that.
    realistic = _core_depression_per_frame_snr("realistic")
    easy = _core_depression_per_frame_snr("easy")
    assert 5e-5 < realistic < 2e-3
    assert easy > 4 * realistic


def test_realistic_ice_gradient_in_truth_darkens_the_thick_side():
    settings = SpaSimulationSettings.realistic(**QUICK, particles_per_micrograph=0, carbon_edge=False,
                                               carbon_particle_fraction=0.0, ice_contaminants_per_um2=0.0,
                                               ice_gradient_a=1500.0, ice_variation_a=0.0)
    movie = simulate_movie(settings, 0)
    angle = np.deg2rad(movie.truth.ice_gradient_direction_deg)
    yy, xx = np.mgrid[0:256, 0:256] - 127.5
    along = np.cos(angle) * xx + np.sin(angle) * yy
    image = movie.clean_micrograph
    thick, thin = image[along > 40].mean(), image[along < -40].mean()
    # exp(-Δt/λ): 1500 Å over the image, ~80 px apart on average, λ = 3000 Å -> ~15 % darker
    assert thick < 0.9 * thin


def test_carbon_rim_is_darker_and_busier_than_the_ice_and_some_particles_sit_on_it():
    settings = SpaSimulationSettings.realistic(**{**QUICK, "image_size_px": 640}, particles_per_micrograph=20,
                                               carbon_particle_fraction=0.3, ice_contaminants_per_um2=0.0,
                                               seed=3)
    movie = simulate_movie(settings, 0)
    edge = movie.truth.carbon_edge
    assert edge is not None and edge.hole_radius_px == pytest.approx(6000.0)
    yy, xx = np.mgrid[0:640, 0:640]
    into = edge.distance_into_carbon_px(xx, yy)
    image = movie.clean_micrograph
    detail = image - ndimage.gaussian_filter(image, 3)
    carbon, ice = into > 20, into < -20
    assert carbon.mean() > 0.1 and ice.mean() > 0.3
    assert image[carbon].mean() < 0.92 * image[ice].mean()
    assert detail[carbon].std() > 1.2 * detail[ice].std()
    on_carbon = [p for p in movie.truth.particles if p.on_carbon]
    assert on_carbon and all(edge.distance_into_carbon_px(p.x_px, p.y_px) > 0 for p in on_carbon)
    assert all(edge.distance_into_carbon_px(p.x_px, p.y_px) < 0 for p in movie.truth.particles if not p.on_carbon)


def test_amorphous_ice_power_spectrum_has_its_ring_near_3_7_a_not_white_noise():
    settings = SpaSimulationSettings.realistic(**QUICK, particles_per_micrograph=0, carbon_edge=False,
                                               carbon_particle_fraction=0.0, ice_contaminants_per_um2=0.0,
                                               defocus_min_a=10000.0, defocus_max_a=10000.0, astigmatism_max_a=0.0)
    image = simulate_movie(settings, 0).clean_micrograph
    power = np.abs(np.fft.fft2(image - image.mean())) ** 2
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(256), np.fft.fftfreq(256)))  # 1/Å at 1 Å/px
    ring = power[(freq > 1 / 4.0) & (freq < 1 / 3.4)].mean()
    below = power[(freq > 1 / 8.0) & (freq < 1 / 5.0)].mean()
    above = power[(freq > 1 / 2.6) & (freq < 1 / 2.2)].mean()
    assert ring > 2 * below and ring > 5 * above


def test_contaminants_are_planted_dark_and_keep_particles_off_them():
    settings = SpaSimulationSettings.realistic(**{**QUICK, "image_size_px": 512}, pixel_size_a=2.0,
                                               carbon_edge=False, carbon_particle_fraction=0.0,
                                               ice_contaminants_per_um2=200.0, particles_per_micrograph=12, seed=2)
    movie = simulate_movie(settings, 0)
    crystals = movie.truth.contaminants
    assert crystals
    image = movie.clean_micrograph
    yy, xx = np.mgrid[0:512, 0:512]
    outside = np.all([np.hypot(xx - c.x_px, yy - c.y_px) > c.radius_px + 5 for c in crystals], axis=0)
    for crystal in crystals:
        inner = int(0.5 * crystal.radius_px)
        x, y = int(round(crystal.x_px)), int(round(crystal.y_px))
        core = image[max(y - inner, 0):y + inner + 1, max(x - inner, 0):x + inner + 1]
        # Bragg extinction over ≥1000 Å of crystal: at most exp(-1) of the beam gets through
        assert core.mean() < 0.5 * image[outside].mean()
        for particle in movie.truth.particles:
            assert np.hypot(particle.x_px - crystal.x_px, particle.y_px - crystal.y_px) >= crystal.radius_px


def test_realistic_particles_touch_and_come_in_conformations_of_a_protein_of_the_asked_mass():
    settings = SpaSimulationSettings.realistic(**{**QUICK, "image_size_px": 512}, particles_per_micrograph=25,
                                               carbon_edge=False, carbon_particle_fraction=0.0, junk_fraction=0.0,
                                               ice_contaminants_per_um2=0.0, n_conformations=3, seed=4)
    structure = make_structure(settings)
    total_phase_rad_a2 = protein_phase_rad_per_a(300.0) * settings.particle_mass_kda * 1e3 * PROTEIN_VOLUME_A3_PER_DA
    assert sum(structure.weights) == pytest.approx(total_phase_rad_a2, rel=1e-3)
    extent = np.ptp(np.asarray(structure.atoms_xyz_a), axis=0)
    assert extent.max() == pytest.approx(130.0, rel=0.15) and extent.max() > 1.5 * np.sort(extent)[1]
    assert len(structure.conformations_xyz_a) == 2
    moved = np.linalg.norm(np.asarray(structure.conformations_xyz_a[1]) - np.asarray(structure.atoms_xyz_a), axis=1)
    assert 0.1 < np.mean(moved > 1.0) < 0.5   # one domain of four swings
    particles = simulate_movie(settings, 0).truth.particles
    assert {p.conformation for p in particles} == {0, 1, 2}
    xy = np.array([[p.x_px, p.y_px] for p in particles])
    distance = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    assert distance.min() < settings.particle_diameter_px          # some touch (closer than one diameter)
    assert distance.min() >= 0.7 * settings.particle_diameter_px - 1e-3


def test_realistic_preset_is_deterministic_by_seed():
    first = simulate_movie(SpaSimulationSettings.realistic(**QUICK, seed=7), 2)
    again = simulate_movie(SpaSimulationSettings.realistic(**QUICK, seed=7), 2)
    other = simulate_movie(SpaSimulationSettings.realistic(**QUICK, seed=8), 2)
    assert np.array_equal(first.frames, again.frames) and first.truth == again.truth
    assert not np.array_equal(first.frames, other.frames)


def test_cli_simulate_realistic_preset_writes_its_settings_into_the_truth(tmp_path, capsys):
    assert cli.main(["simulate", str(tmp_path), "--preset", "realistic", "--movies", "1", "--size", "256",
                     "--frames", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["movies"] == 1
    truth = SessionTruth.read(tmp_path / GROUND_TRUTH_NAME)
    assert truth.settings.detector == "counting" and truth.settings.particle_mass_kda == 150.0
    assert truth.settings.n_frames == 3 and truth.settings.ice_spectrum == "amorphous"


def test_unknown_preset_and_particles_on_missing_carbon_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown simulation preset 'hard'"):
        SpaSimulationSettings.preset("hard")
    with pytest.raises(ValueError, match="carbon_particle_fraction needs carbon_edge"):
        SpaSimulationSettings.realistic(carbon_edge=False)
