"""Tilt-series geometry shared by the simulator, the aligner and the reconstructor: projection, in-plane
image transforms, projection filters and (filtered) back-projection. Pure numpy/scipy.

Geometry (one convention everywhere):
- A volume is `[z, y, x]` = `(nz, ny, nx)`; a tilt image is `[y, x]` = `(ny, nx)`; the rotation centre is
  the geometric centre `(n - 1) / 2` of each axis. The beam runs along -z; y is "up" as IMOD shows MRC files.
- The volume's y axis is the tilt axis. Tilting by `tilt_angle_deg` = θ is the right-handed rotation about
  +y: a voxel at `(x, z)` (from the centre) moves to `x' = x cos θ + z sin θ`, `z' = -x sin θ + z cos θ`,
  and the ideal projection is the line integral along z' (a sum in voxel units), so a point at height
  z > 0 appears at larger x' for positive tilts.
- In the recorded image the tilt axis lies at `tilt_axis_deg` = α counter-clockwise from the image y
  axis (the session's "Tilt axis angle from the y axis"; SerialEM's ~85° is nearly along x): the ideal
  projection is rotated in-plane by α counter-clockwise (with y up), so the axis points along
  `(-sin α, cos α)` in `[x, y]`.
- Per-tilt `shift_px = (dx, dy)`: the recorded image is that rotated projection moved by (dx, dy) pixels;
  aligning moves it back by -(dx, dy) and then rotates by -α, so the tilt axis is along y again.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.fft
from scipy.ndimage import affine_transform, uniform_filter

ProjectionFilter = Literal["ramp", "sirt"]

# Spline order used to resample recorded images once (rotation + shift): cubic keeps the fine detail that
# the reconstruction is scored on; the ramp filter would amplify linear interpolation's blur.
_IMAGE_SPLINE_ORDER = 3


def _centre(n: int) -> float:
    return (n - 1) / 2.0


def _tilt_radians(tilt_angles_deg: Sequence[float]) -> np.ndarray:
    radians = np.deg2rad(np.asarray(tilt_angles_deg, dtype=np.float64).ravel())
    if radians.size == 0:
        raise ValueError("no tilt angles given")
    if np.any(np.abs(radians) >= np.deg2rad(89.0)):
        raise ValueError(f"tilt angles must lie within ±89°, got {np.rad2deg(radians).round(2).tolist()}")
    return radians


def transform_image(image: np.ndarray, rotation_deg: float = 0.0, shift_px: Sequence[float] = (0.0, 0.0), *,
                    binning: int = 1, stretch_x: float = 1.0, output_shape: tuple[int, int] | None = None,
                    order: int = _IMAGE_SPLINE_ORDER, fill: float | None = None) -> np.ndarray:
    """Rotate `image` counter-clockwise by `rotation_deg` about its centre, move it by `shift_px` = (dx, dy),
    then shrink it by `binning` (block average) and stretch it along x by `stretch_x`, in one resampling.

    A point at `p` (from the centre, input pixels) lands at `diag(stretch_x, 1) (R p + shift) / binning`
    from the output centre, so the centre stays the centre whatever the sizes. Pixels from outside the
    image get `fill` (default: the image mean, which keeps a ramp filter from ringing on the edge).
    Output is `output_shape`, default the input shape divided by `binning`.
    """
    data = np.asarray(image, dtype=np.float32)
    if binning < 1:
        raise ValueError(f"binning must be at least 1, got {binning}")
    cval = float(data.mean()) if fill is None else fill
    if binning > 1:
        # A box of `binning` pixels sampled at the block centre is the block average; an even box is centred
        # half a pixel before its index, which the sampling offset below puts back.
        data = uniform_filter(data, size=binning, mode="constant", cval=cval)
    shape = output_shape or (data.shape[0] // binning, data.shape[1] // binning)
    alpha = np.deg2rad(rotation_deg)
    cos_a, sin_a = np.cos(alpha), np.sin(alpha)
    # Input position (row, column) for output q: R(-α)·(binning·diag(1/stretch_x, 1)·q - shift) + centre.
    inverse_rotation = np.array([[cos_a, -sin_a], [sin_a, cos_a]])  # R(-α) in [row, column] order
    matrix = inverse_rotation @ np.diag([float(binning), binning / stretch_x])
    centre_in = np.array([_centre(image.shape[0]), _centre(image.shape[1])]) + (0.5 if binning % 2 == 0 else 0.0)
    centre_out = np.array([_centre(shape[0]), _centre(shape[1])])
    offset = centre_in - matrix @ centre_out - inverse_rotation @ np.array([float(shift_px[1]), float(shift_px[0])])
    return affine_transform(data, matrix, offset=offset, output_shape=shape, order=order, mode="constant",
                            cval=cval, prefilter=order > 1).astype(np.float32, copy=False)


def _add_rows_at(out: np.ndarray, rows: np.ndarray, position: np.ndarray) -> None:
    """`out[k] += rows` sampled at fractional row `position[k]` (linear), where that lies inside `rows`.

    `rows` carries a zero row at each end, so samples up to one row outside read towards 0. Whole rows
    are gathered (x-major layout), several times faster than gathering columns; `position` is monotonic,
    so the rows inside form one slice.
    """
    inside = np.flatnonzero((position > 0.0) & (position < rows.shape[0] - 1))
    if inside.size == 0:
        return
    first, last = int(inside[0]), int(inside[-1]) + 1
    sample = position[first:last]
    low_row = np.floor(sample).astype(np.intp)
    weight = (sample - low_row).astype(np.float32)[:, None]
    low = rows[low_row]
    high = rows[low_row + 1]
    high -= low
    high *= weight
    high += low
    out[first:last] += high


def _x_major_padded(image: np.ndarray) -> np.ndarray:
    """`(ny, nx)` → `(nx + 2, ny)`: rows are x, with a zero row before and after."""
    padded = np.zeros((image.shape[1] + 2, image.shape[0]), dtype=np.float32)
    padded[1:-1] = image.T
    return padded


def project_volume(volume: np.ndarray, tilt_angles_deg: Sequence[float], tilt_axis_deg: float = 0.0) -> np.ndarray:
    """Line-integral projections `(n_tilts, ny, nx)` float32 of a `(nz, ny, nx)` volume (see module geometry).

    Ray-driven: for each output column x' and each z-slice the ray crosses the slice at
    `x = (x' - z sin θ) / cos θ`, sampled linearly along x and weighted by the path length 1 / cos θ, so
    mass is conserved while the ray stays inside the volume. The result is rotated in-plane by
    `tilt_axis_deg` (linear interpolation, outside = 0). Slice by slice, so memory beyond the volume is
    the projections and one slice.
    """
    data = np.asarray(volume, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"expected a (nz, ny, nx) volume, got shape {data.shape}")
    nz, ny, nx = data.shape
    radians = _tilt_radians(tilt_angles_deg)
    x_out = np.arange(nx, dtype=np.float64) - _centre(nx)
    z_rel = np.arange(nz, dtype=np.float64) - _centre(nz)
    totals = np.zeros((radians.size, nx, ny), dtype=np.float32)
    for z in range(nz):
        rows = _x_major_padded(data[z])
        for total, theta in zip(totals, radians):
            _add_rows_at(total, rows, (x_out - z_rel[z] * np.sin(theta)) / np.cos(theta) + _centre(nx) + 1.0)
    projections = np.empty((radians.size, ny, nx), dtype=np.float32)
    for index, theta in enumerate(radians):
        projections[index] = totals[index].T / np.float32(np.cos(theta))
        if tilt_axis_deg != 0.0:
            projections[index] = transform_image(projections[index], tilt_axis_deg, order=1, fill=0.0)
    return projections


def to_axis_frame(image: np.ndarray, tilt_axis_deg: float, shift_px: Sequence[float] = (0.0, 0.0), *,
                  binning: int = 1, stretch_x: float = 1.0, output_shape: tuple[int, int] | None = None,
                  order: int = _IMAGE_SPLINE_ORDER) -> np.ndarray:
    """Undo a recorded image's shift and in-plane rotation so its tilt axis runs along y (one resampling),
    optionally binned and stretched perpendicular to the axis (see `transform_image`)."""
    alpha = np.deg2rad(tilt_axis_deg)
    dx, dy = float(shift_px[0]), float(shift_px[1])
    # Rotating by -α after moving by -d equals moving by -R(-α)·d after rotating.
    back = (-(np.cos(alpha) * dx + np.sin(alpha) * dy), -(-np.sin(alpha) * dx + np.cos(alpha) * dy))
    return transform_image(image, -tilt_axis_deg, back, binning=binning, stretch_x=stretch_x,
                           output_shape=output_shape, order=order)


def tilt_weights(tilt_angles_deg: Sequence[float]) -> np.ndarray:
    """Angular interval (radians) each tilt stands for: half the gaps to its neighbours, sorted by angle.

    The first and last tilts get their single gap, so uneven or sparse schemes still integrate evenly.
    """
    radians = _tilt_radians(tilt_angles_deg)
    if radians.size == 1:
        return np.ones(1)
    order = np.argsort(radians)
    sorted_rad = radians[order]
    gaps = np.diff(sorted_rad)
    interval = np.empty_like(sorted_rad)
    interval[1:-1] = 0.5 * (gaps[:-1] + gaps[1:])
    interval[0], interval[-1] = gaps[0], gaps[-1]
    weights = np.empty_like(interval)
    weights[order] = interval
    return weights


def projection_filter(n_px: int, kind: ProjectionFilter = "ramp", sirt_iterations: int = 10,
                      width_px: int | None = None) -> np.ndarray:
    """Weights over `scipy.fft.rfftfreq(n_px)` (cycles/px) applied perpendicular to the tilt axis.

    "ramp": |f| with a Hamming window (1 at DC, 0.08 at Nyquist): sharp, noisy at low dose.
    "sirt": the filter that reproduces `sirt_iterations` = k Landweber (SIRT) iterations (Zeng 2012, as
    IMOD's FakeSIRTiterations): back-projection acts like 1/|f|, so k iterations of step a weight the
    projections by `|f| [1 - (1 - a/|f|)^k]`; the largest stable step is the first ramp step of the
    image, a = 1/`width_px` (default `n_px`). It follows the ramp up to about k·a and stays flat above,
    damping noise as SIRT does.
    The DC term keeps half the first ramp step so the tomogram's mean is not lost.
    """
    freq = scipy.fft.rfftfreq(n_px)
    ramp = np.abs(freq)
    ramp[0] = 0.5 / n_px
    if kind == "ramp":
        return ramp * (0.54 + 0.46 * np.cos(2.0 * np.pi * freq))
    if kind == "sirt":
        step = 1.0 / (width_px or n_px)
        return ramp * (1.0 - np.power(np.clip(1.0 - step / ramp, 0.0, 1.0), sirt_iterations))
    raise ValueError(f"unknown projection filter {kind!r}: choose 'ramp' or 'sirt'")


def filter_projections(projections: np.ndarray, kind: ProjectionFilter = "ramp", sirt_iterations: int = 10,
                       workers: int = 1) -> np.ndarray:
    """Filter each `(ny, nx)` image along x (perpendicular to the axis), zero-padded to twice its width."""
    data = np.asarray(projections, dtype=np.float32)
    nx = data.shape[-1]
    padded_nx = scipy.fft.next_fast_len(2 * nx, real=True)
    weights = projection_filter(padded_nx, kind, sirt_iterations, width_px=nx).astype(np.float32)
    mean = data.mean(axis=-1, keepdims=True)
    spectrum = scipy.fft.rfft(data - mean, n=padded_nx, axis=-1, workers=workers)
    spectrum *= weights
    spectrum[..., 0] += mean[..., 0] * nx * weights[0]
    return scipy.fft.irfft(spectrum, n=padded_nx, axis=-1, workers=workers)[..., :nx].astype(np.float32)


def backproject(projections: np.ndarray, tilt_angles_deg: Sequence[float], thickness_px: int,
                weights: Sequence[float] | None = None) -> np.ndarray:
    """Smear axis-frame projections `(n_tilts, ny, nx)` back through a `(thickness_px, ny, nx)` volume.

    Voxel-driven with linear interpolation along x: voxel (x, z) takes `weight · P(x cos θ + z sin θ)`
    (the transpose of `project_volume` up to interpolation). Images must already be in the axis frame
    (`to_axis_frame`); `weights` default to 1 per tilt. Section by section, so memory beyond the volume
    is one copy of the projections.
    """
    data = np.asarray(projections, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"expected (n_tilts, ny, nx) projections, got shape {data.shape}")
    radians = _tilt_radians(tilt_angles_deg)
    if radians.size != data.shape[0]:
        raise ValueError(f"{data.shape[0]} projections but {radians.size} tilt angles")
    if thickness_px < 1:
        raise ValueError(f"thickness_px must be at least 1, got {thickness_px}")
    tilt_weight = np.ones(radians.size) if weights is None else np.asarray(weights, dtype=np.float32)
    _, ny, nx = data.shape
    x_rel = np.arange(nx, dtype=np.float64) - _centre(nx)
    z_rel = np.arange(thickness_px, dtype=np.float64) - _centre(thickness_px)
    rows = [_x_major_padded(image * weight) for image, weight in zip(data, tilt_weight)]
    volume = np.empty((thickness_px, ny, nx), dtype=np.float32)
    section = np.empty((nx, ny), dtype=np.float32)
    for z in range(thickness_px):
        section[:] = 0.0
        for image, theta in zip(rows, radians):
            _add_rows_at(section, image, x_rel * np.cos(theta) + z_rel[z] * np.sin(theta) + _centre(nx) + 1.0)
        volume[z] = section.T
    return volume


def filtered_backprojection(projections: np.ndarray, tilt_angles_deg: Sequence[float], thickness_px: int,
                            kind: ProjectionFilter = "ramp", sirt_iterations: int = 10,
                            workers: int = 1) -> np.ndarray:
    """Weighted back-projection of axis-frame projections into `(thickness_px, ny, nx)`.

    Each tilt is filtered along x and weighted by the angular interval it covers (`tilt_weights`), so
    the scale matches the object's: a reconstruction re-projects to about the input projections.
    """
    filtered = filter_projections(projections, kind, sirt_iterations, workers)
    return backproject(filtered, tilt_angles_deg, thickness_px, tilt_weights(tilt_angles_deg))
