"""LoG picking scored against the simulator's planted particles (matched within 0.3 × diameter)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from scipy import ndimage

from airflow_provider_cryoem.cli import main
from airflow_provider_cryoem.engines.pick_scoring import matched_picks, precision_recall_f1
from airflow_provider_cryoem.engines.picking import PickingInputs, pick_particles, run_picking
from airflow_provider_cryoem.io import ImageFileError, read_star, write_mrc
from airflow_provider_cryoem.simulate import (
    SimulatedMovie,
    SpaSimulationSettings,
    simulate_movie,
)

DIAMETER_A = 140.0


def simulate(tmp_path: Path, name: str, **overrides: object) -> tuple[Path, SimulatedMovie]:
    """A 1024-px micrograph at 20 e⁻/Å²: the clean dose-integrated image with Poisson counting noise."""
    settings = SpaSimulationSettings(image_size_px=1024, n_frames=4, dose_per_frame_e_a2=5.0,
                                     particle_diameter_a=DIAMETER_A, particles_per_micrograph=40,
                                     **overrides)
    movie = simulate_movie(settings, 0)
    counts = np.random.default_rng(settings.seed).poisson(np.maximum(movie.clean_micrograph, 0))
    return write_mrc(tmp_path / f"{name}.mrc", counts.astype(np.float32), settings.pixel_size_a), movie


def f1_score(picks_px: list[list[float]], truth_px: list[list[float]],
             tolerance_px: float) -> tuple[float, float, float]:
    """Precision, recall, F1 with one-to-one matching within `tolerance_px`."""
    return precision_recall_f1(matched_picks(picks_px, truth_px, tolerance_px), len(picks_px), len(truth_px))


def pick(path: Path, **options: object) -> dict:
    return run_picking(PickingInputs(micrograph_path=str(path), pixel_size_a=1.0, particle_diameter_a=DIAMETER_A,
                                     **options)).model_dump()


def carbon_side_px(movie: SimulatedMovie, coordinates_px: list[list[float]]) -> np.ndarray:
    """Signed distance of each pick into the carbon (positive = on the carbon film)."""
    edge = movie.truth.carbon_edge
    normal = np.array([np.cos(np.deg2rad(edge.normal_deg)), np.sin(np.deg2rad(edge.normal_deg))])
    return (np.asarray(coordinates_px).reshape(-1, 2) - np.asarray(edge.point_px)) @ normal


@pytest.mark.parametrize("seed", [0, 3])
def test_log_picking_finds_planted_particles_with_f1_above_0_9(tmp_path: Path, seed: int) -> None:
    path, movie = simulate(tmp_path, "mic", seed=seed)
    result = pick(path)
    precision, recall, f1 = f1_score(result["coordinates_px"], movie.truth.particle_coordinates_px(),
                                     0.3 * DIAMETER_A)
    assert f1 >= 0.9, (precision, recall)
    assert result["particle_count"] == len(result["coordinates_px"]) == len(result["figures_of_merit"])
    assert result["figures_of_merit"] == sorted(result["figures_of_merit"], reverse=True)
    assert 0.7 * DIAMETER_A <= result["diameter_a"] <= 1.3 * DIAMETER_A


def test_picks_keep_clear_of_the_edge_exclusion_band(tmp_path: Path) -> None:
    path, _ = simulate(tmp_path, "mic", seed=1)
    edge_a = 250.0
    result = pick(path, edge_exclusion_a=edge_a)
    coordinates = np.asarray(result["coordinates_px"])
    assert result["particle_count"] > 0 and result["rejected"]["edge"] > 0
    assert coordinates.min() >= edge_a and coordinates.max() <= 1023 - edge_a


def test_no_picks_land_on_the_carbon_film(tmp_path: Path) -> None:
    path, movie = simulate(tmp_path, "carbon", seed=0, carbon_edge=True)
    unfiltered = pick(path, reject_carbon=False, reject_junk=False)
    assert np.any(carbon_side_px(movie, unfiltered["coordinates_px"]) > 0)  # the film does attract LoG picks
    result = pick(path)
    assert not np.any(carbon_side_px(movie, result["coordinates_px"]) > 0)
    assert f1_score(result["coordinates_px"], movie.truth.particle_coordinates_px(), 0.3 * DIAMETER_A)[2] >= 0.9


def test_aggregates_larger_than_the_particle_are_rejected_as_junk(tmp_path: Path) -> None:
    path, movie = simulate(tmp_path, "junk", seed=1, junk_fraction=0.3)
    big_junk = [[p.x_px, p.y_px] for p in movie.truth.particles if p.is_junk and p.diameter_a > 1.3 * DIAMETER_A]
    assert big_junk

    def big_junk_picked(result: dict) -> int:
        return round(f1_score(result["coordinates_px"], big_junk, 0.3 * DIAMETER_A)[1] * len(big_junk))

    assert big_junk_picked(pick(path, reject_junk=False)) > 0
    result = pick(path)
    assert big_junk_picked(result) == 0 and result["rejected"]["junk"] > 0


def test_max_particles_keeps_the_strongest(tmp_path: Path) -> None:
    path, _ = simulate(tmp_path, "mic", seed=2)
    everything, capped = pick(path), pick(path, max_particles=5)
    assert capped["particle_count"] == 5
    assert capped["figures_of_merit"] == everything["figures_of_merit"][:5]


def test_coordinate_star_and_overlay_are_written(tmp_path: Path) -> None:
    path, _ = simulate(tmp_path, "mic", seed=2)
    result = pick(path, coordinates_star_path=str(tmp_path / "STAR" / "mic.star"),
                  summary_image_path=str(tmp_path / "mic_picks.jpeg"))
    table = next(iter(read_star(result["coordinates_star"]).values()))
    assert list(table.columns) == ["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]
    np.testing.assert_allclose(table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), result["coordinates_px"])
    with Image.open(result["summary_image"]) as picture:
        assert picture.format == "JPEG" and picture.size == (1024, 1024)


def test_bad_inputs_raise_errors_naming_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ImageFileError, match="missing.mrc"):
        pick(tmp_path / "missing.mrc")
    stack = write_mrc(tmp_path / "stack.mrc", np.zeros((3, 64, 64), np.float32), 1.0)
    with pytest.raises(ImageFileError, match="stack.mrc"):
        pick(stack)
    with pytest.raises(ValidationError, match="min_diameter_a"):
        PickingInputs(micrograph_path="x.mrc", pixel_size_a=1.0, particle_diameter_a=100, min_diameter_a=150)


def test_pick_command_prints_coordinates_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, movie = simulate(tmp_path, "mic", seed=0)
    assert main(["pick", str(path), "--particle-diameter-a", str(DIAMETER_A), "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["particle_count"] == len(output["coordinates_px"]) == len(output["figures_of_merit"])
    assert f1_score(output["coordinates_px"], movie.truth.particle_coordinates_px(), 0.3 * DIAMETER_A)[2] >= 0.9
    assert main(["pick", str(tmp_path / "absent.mrc")]) == 1


def packed_discs(seed: int, size_px: int = 512, diameter_px: float = 36.0,
                 noise: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """Dark discs packed edge to edge (centres ≥ 0.95 diameter apart, random sequential placement) in white
    noise of `noise` × their contrast: the gaps between them are bright blobs as strong as the discs, the
    case of CryoPPP EMPIAR-10059 where the LoG's opposite-contrast null counts them as noise."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((0, 2))
    for candidate in rng.uniform(diameter_px / 2, size_px - diameter_px / 2, (20000, 2)):
        if len(centres) == 0 or np.hypot(*(centres - candidate).T).min() >= 0.95 * diameter_px:
            centres = np.vstack([centres, candidate])
    y, x = np.mgrid[:size_px, :size_px]
    image = np.zeros((size_px, size_px))
    for cx, cy in centres:
        image -= np.hypot(x - cx, y - cy) < 0.45 * diameter_px
    image = ndimage.gaussian_filter(image, 1.0) + rng.normal(0, noise, image.shape)
    return image.astype(np.float32), centres


def test_self_made_template_recovers_particles_packed_edge_to_edge() -> None:
    image, centres = packed_discs(0)
    f1 = {}
    for template in (True, False):
        inputs = PickingInputs(micrograph_path="(in memory)", pixel_size_a=1.0, particle_diameter_a=36.0,
                               template_matching=template)
        f1[template] = f1_score(pick_particles(image, inputs)[0].tolist(), centres.tolist(), 18.0)[2]
    assert f1[True] >= 0.85, f1
    assert f1[True] >= f1[False] + 0.1, f1
