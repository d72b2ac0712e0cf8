"""The 2D class scorer on class averages made from the simulator's particle and from planted junk.

Good averages are projections of the simulator's particle (render_volume summed along z); junk
averages are what junk classes look like: flat noise, an ice/carbon edge, an off-centre blob.
"""
from __future__ import annotations

import os
import time

from pathlib import Path

import numpy as np
import pytest

from airflow_provider_cryoem.downstream.class_selection import class3d_due
from airflow_provider_cryoem.engines.class_selection import (
    ClassSelectionSettings,
    fraction_threshold,
    score_classes,
    selection_quality,
)
from airflow_provider_cryoem.pipeline.job_claims import CLAIM_FILE, claim, claim_is_live, holding
from airflow_provider_cryoem.pipeline.map_stages import due_3d_size
from airflow_provider_cryoem.simulate import (
    SpaSimulationSettings,
    make_structure,
    render_volume,
)

BOX_PX = 64
PIXEL_SIZE_A = 4.0
DIAMETER_A = 180.0
SETTINGS = ClassSelectionSettings(min_score=0.7, particle_diameter_a=DIAMETER_A, pixel_size_a=PIXEL_SIZE_A)


def _averages(rng: np.random.Generator) -> tuple[np.ndarray, list[bool]]:
    """Three particle views and three junk averages, each with a little residual noise."""
    structure = make_structure(SpaSimulationSettings(particle_diameter_a=DIAMETER_A, seed=2))
    volume = render_volume(structure, BOX_PX, PIXEL_SIZE_A)
    views = [volume.sum(axis=axis) for axis in (0, 1, 2)]
    scale = float(np.std(views[0]))
    yy, xx = np.mgrid[:BOX_PX, :BOX_PX] - BOX_PX // 2
    edge = 2 * scale * np.tanh((xx + 0.2 * yy - 10) / 3.0)
    blob = 5 * scale * np.exp(-((xx - 24) ** 2 + (yy + 10) ** 2) / (2 * 3.0**2))
    flat = np.zeros((BOX_PX, BOX_PX))
    images = np.array(views + [flat, edge, blob]) + rng.normal(0, 0.05 * scale, (6, BOX_PX, BOX_PX))
    return images.astype(np.float32), [False, False, False, True, True, True]


def test_particle_views_score_above_the_threshold_and_junk_below():
    averages, is_junk = _averages(np.random.default_rng(0))
    scores = score_classes(averages, [100] * 6, [1 / 6] * 6, [20.0, 21.0, 22.0, 30.0, 28.0, 29.0], SETTINGS)
    assert [s.selected for s in scores] == [not junk for junk in is_junk]
    assert min(s.score for s, j in zip(scores, is_junk) if not j) > max(s.score for s, j in zip(scores, is_junk) if j)


def test_a_compact_class_far_brighter_or_fainter_than_the_typical_class_loses_its_intensity_score():
    """Aggregates are compact, centred and contrasted like the particle, but hold more (or, for empty ice,
    less) signal: the intensity feature is what tells them apart."""
    averages, _ = _averages(np.random.default_rng(3))
    views = averages[:3]
    brighter, fainter = 2.0 * views[0], 0.5 * views[1]
    stack = np.concatenate([views, [brighter, fainter]])
    scores = score_classes(stack, [100] * 5, [0.2] * 5, [20.0] * 5, SETTINGS)
    typical = [s.features.intensity for s in scores[:3]]
    assert scores[3].features.intensity == pytest.approx(2 * typical[0], rel=0.05)
    real_scores = [s.score for s in scores[:3]]
    # the brighter copy has the best contrast of all, yet scores below every real class
    assert scores[3].features.contrast > max(s.features.contrast for s in scores[:3])
    assert max(scores[3:], key=lambda s: s.score).score < min(real_scores)


def _aggregate_average(view: np.ndarray) -> np.ndarray:
    """What the demo session's pure-aggregate class looks like: dense balls of 0.5-0.9 × the particle's
    diameter, centred and averaged, holding the same total signal as a particle view."""
    yy, xx = np.mgrid[:BOX_PX, :BOX_PX] - BOX_PX // 2
    radius_sq_a2 = (xx**2 + yy**2) * PIXEL_SIZE_A**2
    diameters_a = np.linspace(0.5, 0.9, 9) * DIAMETER_A
    balls = [2 * np.sqrt(np.clip((0.5 * d) ** 2 - radius_sq_a2, 0, None)) for d in diameters_a]
    average = np.mean(balls, axis=0)
    return (average * view.sum() / average.sum()).astype(np.float32)


def test_a_compact_centred_class_of_aggregates_is_rejected_on_its_contrast_resolution_and_size():
    """Issue 19: the demo's aggregates formed one class of their own (11-14 particles, no real one) that is
    as compact and centred as the particle's and holds as much signal, with 0.7 of the best contrast and
    resolution; as a plain weighted mean (shape worth 0.35) it scored 0.76-0.80 and was kept."""
    averages, _ = _averages(np.random.default_rng(4))
    views = averages[:3]
    stack = np.concatenate([views, [_aggregate_average(views[0])]])
    scores = score_classes(stack, [160, 160, 160, 15], [160 / 495] * 3 + [15 / 495], [15.6, 16.0, 17.0, 22.3],
                           SETTINGS)
    aggregate = scores[3].features
    assert aggregate.mass_inside_fraction > 0.95 and aggregate.centre_offset_fraction < 0.1
    assert aggregate.intensity == pytest.approx(scores[0].features.intensity, rel=0.05)
    assert 0.6 < aggregate.contrast / max(s.features.contrast for s in scores) < 0.8
    assert [s.selected for s in scores] == [True, True, True, False]


def test_a_strongly_contrasted_carbon_edge_class_does_not_lower_the_particle_classes():
    """The edge is no particle-like class, so its contrast is not the bar the particle classes are held to."""
    averages, _ = _averages(np.random.default_rng(5))
    views, edge = averages[:3], averages[4]
    faint, strong = (score_classes(np.concatenate([views, [factor * edge]]), [100] * 4, [0.25] * 4, [20.0] * 4,
                                   SETTINGS) for factor in (1.0, 6.0))
    assert strong[3].features.contrast > 3 * max(s.features.contrast for s in strong[:3])
    assert [s.score for s in strong[:3]] == [s.score for s in faint[:3]]
    assert not strong[3].selected


def test_an_empty_or_tiny_class_is_never_selected():
    averages, _ = _averages(np.random.default_rng(1))
    settings = SETTINGS.model_copy(update={"min_particles_per_class": 10})
    scores = score_classes(averages, [0, 5, 100, 100, 100, 100], [0.0, 0.01, 0.3, 0.2, 0.2, 0.29],
                           [20.0] * 6, settings)
    assert scores[0].score == 0 and not scores[0].selected and not scores[1].selected
    assert scores[2].selected


def test_mismatched_inputs_name_the_problem():
    averages, _ = _averages(np.random.default_rng(2))
    with pytest.raises(ValueError, match="same K classes"):
        score_classes(averages, [1] * 5, [0.2] * 6, [20.0] * 6, SETTINGS)
    with pytest.raises(ValueError, match="does not fit"):
        score_classes(averages, [1] * 6, [0.2] * 6, [20.0] * 6,
                      SETTINGS.model_copy(update={"particle_diameter_a": 2000.0}))


def test_selection_quality_counts_particles_through_their_class():
    quality = selection_quality([1, 1, 2, 2, 3, 3], [1, 2], [False, False, False, True, True, True])
    assert quality.precision == pytest.approx(3 / 4)
    assert quality.recall == 1.0
    assert quality.junk_rejected == pytest.approx(2 / 3)
    assert quality.kept == 4


def test_fraction_threshold_is_the_score_quantile():
    averages, _ = _averages(np.random.default_rng(3))
    scores = score_classes(averages, [100] * 6, [1 / 6] * 6, [20.0] * 6, SETTINGS)
    threshold = fraction_threshold(scores, 0.5)
    assert sum(s.score >= threshold for s in scores) == 3


def test_3d_runs_at_the_batch_size_then_at_each_doubling_up_to_the_cap():
    assert class3d_due(900, [], 1000) is None
    assert class3d_due(1500, [], 1000) == 1000
    assert class3d_due(1900, [1000], 1000) is None
    assert class3d_due(4100, [1000], 1000) == 4000
    assert class3d_due(50_000, [1000, 2000, 4000], 1000, class3d_max_size=5000) == 5000


def test_session_end_classifies_everything_selected_once_and_never_a_smaller_set_again():
    assert due_3d_size(350, [], 25_000, session_over=True, min_particles=200) == 350
    assert due_3d_size(150, [], 25_000, session_over=True, min_particles=200) is None  # too few for 3D
    assert due_3d_size(350, [350], 25_000, session_over=True, min_particles=200) is None  # already done
    assert due_3d_size(3000, [2000], 1000, session_over=True, min_particles=200) == 3000
    assert due_3d_size(1500, [2000], 1000, session_over=True, min_particles=200) is None
    assert due_3d_size(1500, [], 1000, session_over=False, min_particles=200) == 1000


def test_a_3d_round_is_claimed_by_one_run_and_its_retry(tmp_path: Path):
    assert claim(tmp_path, "run_a")
    assert claim(tmp_path, "run_a")  # the retry of the run that claimed it carries on
    assert not claim(tmp_path, "run_b")


def test_a_3d_round_whose_run_died_is_taken_over_but_a_done_or_running_one_is_not(tmp_path: Path):
    assert claim(tmp_path, "run_a")
    old = time.time() - 3600
    os.utime(tmp_path / CLAIM_FILE, (old, old))  # run_a was killed an hour ago, mid-round
    assert not claim_is_live(tmp_path)
    assert claim(tmp_path, "run_b")
    assert not claim(tmp_path, "run_a")  # the dead run's late retry does not take it back
    with holding(tmp_path, interval_s=0.05):
        os.utime(tmp_path / CLAIM_FILE, (old, old))
        time.sleep(0.3)  # the holder's heartbeat refreshes the claim while it works
        assert claim_is_live(tmp_path)
    os.utime(tmp_path / CLAIM_FILE, (old, old))
    assert claim_is_live(tmp_path)  # done: never taken over again
    assert not claim(tmp_path, "run_c")


def test_a_round_left_half_done_by_an_error_is_free_once_its_claim_goes_stale(tmp_path: Path):
    assert claim(tmp_path, "run_a")
    with pytest.raises(RuntimeError):
        with holding(tmp_path, interval_s=60):
            raise RuntimeError("database went away")
    old = time.time() - 3600
    os.utime(tmp_path / CLAIM_FILE, (old, old))
    assert claim(tmp_path, "run_b")
