"""Picks scored against reference positions (the simulator's planted particles or a real reference set),
for the tests and benchmarks: one-to-one matches within a tolerance.

The assignment maximises the number of pairs within the tolerance. Minimising the summed distance over all
pairs instead (a plain linear assignment on distances) lets a far-off false pick, which must be paired with
something, take a particle away from the pick sitting on it, and under-counts every picker's matches.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def matched_picks(picks_px: np.ndarray, reference_px: np.ndarray, tolerance_px: float) -> int:
    """How many picks ([x, y] px) match a reference position one-to-one within `tolerance_px`."""
    picks = np.asarray(picks_px, dtype=np.float64).reshape(-1, 2)
    reference = np.asarray(reference_px, dtype=np.float64).reshape(-1, 2)
    if len(picks) == 0 or len(reference) == 0:
        return 0
    distance = np.hypot(picks[:, None, 0] - reference[None, :, 0], picks[:, None, 1] - reference[None, :, 1])
    within = distance <= tolerance_px
    # a pair beyond the tolerance costs more than all pairs within it together: fewest such pairs first
    cost = np.where(within, distance, tolerance_px * (min(distance.shape) + 1) + 1.0)
    rows, cols = linear_sum_assignment(cost)
    return int(np.count_nonzero(within[rows, cols]))


def precision_recall_f1(matched: int, picks: int, reference: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts (0 where undefined)."""
    precision, recall = matched / max(picks, 1), matched / max(reference, 1)
    return precision, recall, 2 * precision * recall / max(precision + recall, 1e-9)
