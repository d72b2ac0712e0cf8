"""Scoring picks against reference positions: one-to-one, within the tolerance, as many matches as there are."""
from __future__ import annotations

import numpy as np

from airflow_provider_cryoem.engines.pick_scoring import matched_picks, precision_recall_f1


def test_a_far_false_pick_does_not_take_a_particle_from_the_pick_on_it() -> None:
    # pick A sits on particle X; false pick F is 1.5 tolerances from X, further still from Y, which has no
    # pick. The least summed distance pairs A with Y and F with X (9.95 + 1.5 < 0.05 + 11.5): no match at all.
    reference = np.array([[0.0, 0.0], [10.0, 0.0]])
    picks = np.array([[0.05, 0.0], [-1.5, 0.0]])
    assert matched_picks(picks, reference, tolerance_px=1.0) == 1


def test_each_reference_matches_at_most_one_pick_and_only_within_the_tolerance() -> None:
    reference = np.array([[0.0, 0.0], [5.0, 5.0]])
    picks = np.array([[0.1, 0.0], [0.0, 0.2], [5.0, 6.5]])
    assert matched_picks(picks, reference, tolerance_px=1.0) == 1
    assert matched_picks(picks, reference, tolerance_px=2.0) == 2
    assert matched_picks(np.zeros((0, 2)), reference, tolerance_px=1.0) == 0


def test_precision_recall_f1_from_counts() -> None:
    assert precision_recall_f1(3, 4, 6) == (0.75, 0.5, 0.6)
    assert precision_recall_f1(0, 0, 5) == (0.0, 0.0, 0.0)
