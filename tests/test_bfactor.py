"""Rosenthal–Henderson B-factor fit: recovers a planted B from resolutions that follow the model."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from airflow_provider_cryoem.engines.bfactor import (
    BFactorPoint,
    bfactor_plot,
    fit_bfactor,
    subset_sizes,
)


def _points(bfactor_a2: float, counts: list[int], noise: float = 0.0, seed: int = 0) -> list[BFactorPoint]:
    """Resolutions from 1/d² = (2/B) ln N + c, with c chosen so that 1000 particles give 8 Å."""
    rng = np.random.default_rng(seed)
    intercept = 1 / 8.0**2 - 2 / bfactor_a2 * math.log(1000)
    return [BFactorPoint(number_of_particles=n, resolution_a=(2 / bfactor_a2 * math.log(n) + intercept) ** -0.5
                         * (1 + noise * rng.normal())) for n in counts]


@pytest.mark.parametrize("bfactor_a2", [60.0, 150.0, 400.0])
def test_fit_recovers_the_planted_bfactor(bfactor_a2: float):
    fit = fit_bfactor(_points(bfactor_a2, [1000, 2000, 4000, 8000]))
    assert fit.bfactor_a2 == pytest.approx(bfactor_a2, rel=1e-6)
    assert fit.r_squared == pytest.approx(1.0)
    assert fit.resolution_for(1000) == pytest.approx(8.0)


def test_fit_with_noisy_resolutions_stays_close():
    fit = fit_bfactor(_points(150.0, [500, 1000, 2000, 4000, 8000, 16000], noise=0.005, seed=4))
    assert fit.bfactor_a2 == pytest.approx(150.0, rel=0.2)


def test_one_particle_count_is_refused_and_a_flat_line_gives_infinite_b():
    with pytest.raises(ValueError, match="at least two particle counts"):
        fit_bfactor([BFactorPoint(number_of_particles=100, resolution_a=8.0)] * 2)
    flat = fit_bfactor([BFactorPoint(number_of_particles=n, resolution_a=8.0) for n in (100, 200)])
    assert math.isinf(flat.bfactor_a2)


def test_subset_sizes_are_distinct_and_ascending():
    assert subset_sizes(8000) == [1000, 2000, 4000, 8000]
    assert subset_sizes(3, min_particles=2) == [2, 3]


def test_plot_is_written_as_a_png(tmp_path: Path):
    path = bfactor_plot(fit_bfactor(_points(150.0, [1000, 2000, 4000])), tmp_path / "bfactor.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (480, 360)
        assert len(image.getcolors(1 << 16) or []) > 3  # more than a blank canvas
