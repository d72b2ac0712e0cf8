"""Tomography engines against known truth: projection geometry, tilt-series alignment, reconstruction, images."""
from __future__ import annotations

import numpy as np
import pytest

from airflow_provider_cryoem.engines.tomo_projection import (
    filtered_backprojection,
    project_volume,
    to_axis_frame,
    transform_image,
)


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
