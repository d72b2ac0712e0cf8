"""Local (non-rigid) motion: patch trajectories, a smooth deformation model fitted to them, and a test
of whether that model explains more than noise.

The model follows MotionCor2's choice of a polynomial in space and time:
d(x, y, t) = Σ c_st · S_s(u, v) · T_t(τ), with S = [1, u, v, uv, u², v²] over the image
(u, v in [-0.5, 0.5]) and T = [τ, τ², τ³] over the movie (τ in [0, 1]), so d = 0 at frame 0. Each
patch's trajectory also carries a free constant (patch alignment fixes trajectories only up to one).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

MAX_TIME_DEGREE = 3
# Patches whose correlation peaks stand less than this many standard deviations above the map are
# dropped: their shifts would be noise.
MIN_PEAK_QUALITY = 5.0
# The deformation is applied only when it beats "no local motion" at this significance (F-test).
SIGNIFICANCE = 1e-3


@dataclass
class PatchGrid:
    """Square patches (side `size_px`) of an image of `shape`; `corners_px` (n, 2) [row, column]."""

    shape: tuple[int, int]
    size_px: int
    corners_px: np.ndarray

    @property
    def centres_xy_px(self) -> np.ndarray:
        """Patch centres as [x, y] in pixels of this grid."""
        centre = self.corners_px + (self.size_px - 1) / 2.0
        return centre[:, ::-1].astype(np.float64)


def patch_grid(shape: tuple[int, int], n_x: int, n_y: int, size_px: int) -> PatchGrid:
    """n_x × n_y patches of side `size_px` spread evenly over `shape`, the outer ones touching the border."""
    ny, nx = shape
    rows = np.rint(np.linspace(0, ny - size_px, n_y)).astype(int) if n_y > 1 else np.array([(ny - size_px) // 2])
    cols = np.rint(np.linspace(0, nx - size_px, n_x)).astype(int) if n_x > 1 else np.array([(nx - size_px) // 2])
    corners = np.array([(r, c) for r in rows for c in cols])
    return PatchGrid(shape=shape, size_px=size_px, corners_px=corners)


def _taper(size: int, edge_px: int) -> np.ndarray:
    """2D window: 1 inside, cosine fall-off over `edge_px` at each border (keeps patch edges out of the FFT)."""
    ramp = np.ones(size, dtype=np.float32)
    t = 0.5 - 0.5 * np.cos(np.pi * (np.arange(edge_px, dtype=np.float32) + 0.5) / edge_px)
    ramp[:edge_px] = t
    ramp[size - edge_px:] = t[::-1]
    return ramp[:, None] * ramp[None, :]


def extract_patches(frames: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """(n_patches, n_frames, size, size) float32 copies, mean removed and edges tapered."""
    size = grid.size_px
    out = np.empty((len(grid.corners_px), frames.shape[0], size, size), dtype=np.float32)
    for p, (r, c) in enumerate(grid.corners_px):
        out[p] = frames[:, r:r + size, c:c + size]
    out -= out.mean(axis=(-2, -1), keepdims=True)
    out *= _taper(size, max(2, size // 8))
    return out


def spatial_basis(x_px: np.ndarray, y_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(6, ...) spatial terms [1, u, v, uv, u², v²] at pixel positions of an image of `shape` (ny, nx)."""
    u = np.asarray(x_px, dtype=np.float64) / max(shape[1] - 1, 1) - 0.5
    v = np.asarray(y_px, dtype=np.float64) / max(shape[0] - 1, 1) - 0.5
    return np.stack([np.ones_like(u), u, v, u * v, u * u, v * v])


def time_basis(n_frames: int) -> np.ndarray:
    """(degree, n_frames) temporal terms τ^1..τ^degree, zero at frame 0; degree ≤ 3 and < n_frames."""
    tau = np.arange(n_frames) / max(n_frames - 1, 1)
    degree = max(1, min(MAX_TIME_DEGREE, n_frames - 1))
    return np.stack([tau**d for d in range(1, degree + 1)])


@dataclass
class LocalMotionModel:
    """Fitted deformation: `coefficients` (2, n_spatial, n_time) for x and y, in input pixels."""

    coefficients: np.ndarray
    shape: tuple[int, int]
    n_frames: int

    def displacement_px(self, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
        """(n_frames, ..., 2) [dx, dy] at output positions (x, y) for every frame."""
        spatial = spatial_basis(x_px, y_px, self.shape)
        temporal = time_basis(self.n_frames)
        d = np.einsum("ast,s...,tf->f...a", self.coefficients, spatial, temporal)
        return d


@dataclass
class LocalFit:
    """The model, how well it fits, and whether it is worth applying."""

    model: LocalMotionModel
    significant: bool
    p_value: float
    patches_used: int
    rms_model_px: float
    rms_residual_px: float
    max_model_px: float


def _design(spatial: np.ndarray, temporal: np.ndarray) -> np.ndarray:
    """Deformation terms per (patch, frame): (n_patches, n_frames, n_spatial × n_time)."""
    n_patches, n_frames = spatial.shape[1], temporal.shape[1]
    return np.einsum("sp,tf->pfst", spatial, temporal).reshape(n_patches, n_frames, -1)


def _patch_noise_px(trajectories: np.ndarray) -> np.ndarray:
    """Per-patch scatter (px) of a trajectory about its own cubic in time: the measurement noise."""
    n_frames = trajectories.shape[1]
    basis = np.vstack([np.ones(n_frames), time_basis(n_frames)]).T
    coeffs, *_ = np.linalg.lstsq(basis, trajectories.transpose(1, 0, 2).reshape(n_frames, -1), rcond=None)
    residual = trajectories.transpose(1, 0, 2).reshape(n_frames, -1) - basis @ coeffs
    dof = max(n_frames - basis.shape[1], 1)
    variance = (residual**2).sum(axis=0).reshape(trajectories.shape[0], 2).mean(axis=1) / dof
    return np.sqrt(variance)


def fit_local_motion(centres_xy_px: np.ndarray, trajectories_px: np.ndarray, peak_quality: np.ndarray,
                     shape: tuple[int, int]) -> LocalFit | None:
    """Fit the deformation to patch trajectories (n_patches, n_frames, 2) in input pixels.

    Patches with weak correlation peaks are dropped and the rest weighted by their own scatter;
    returns None when too few patches remain to constrain the model.
    """
    n_frames = trajectories_px.shape[1]
    temporal = time_basis(n_frames)
    keep = peak_quality >= MIN_PEAK_QUALITY
    n_spatial = spatial_basis(np.zeros(1), np.zeros(1), shape).shape[0]
    if keep.sum() < n_spatial + 2 or n_frames < 3:
        return None
    centres, traj = centres_xy_px[keep], trajectories_px[keep]
    n_kept = len(centres)
    weight = 1.0 / np.maximum(_patch_noise_px(traj), 1e-3)[:, None, None]
    deform = _design(spatial_basis(centres[:, 0], centres[:, 1], shape), temporal)
    # Each patch's free offset is fitted exactly by removing its (weighted) mean over frames, which
    # leaves a least-squares problem in the few deformation terms alone; the null model is that mean.
    data = traj * weight
    data -= data.mean(axis=1, keepdims=True)
    design = deform * weight
    design -= design.mean(axis=1, keepdims=True)
    data, design = data.reshape(-1, 2), design.reshape(-1, deform.shape[-1])
    coef, *_ = np.linalg.lstsq(design.T @ design, design.T @ data, rcond=None)
    ssr_full = float(((data - design @ coef) ** 2).sum())
    ssr_null = float((data**2).sum())
    n_rows, n_params = data.size, 2 * (deform.shape[-1] + n_kept)
    extra = 2 * deform.shape[-1]
    dof = max(n_rows - n_params, 1)
    f_stat = ((ssr_null - ssr_full) / extra) / max(ssr_full / dof, 1e-30)
    p_value = float(stats.f.sf(f_stat, extra, dof))
    coefficients = coef.T.reshape(2, n_spatial, temporal.shape[0])
    model = LocalMotionModel(coefficients=coefficients, shape=shape, n_frames=n_frames)
    predicted = deform @ coef
    fitted = predicted + (traj - predicted).mean(axis=1, keepdims=True)
    residual = traj - fitted
    return LocalFit(model=model, significant=p_value < SIGNIFICANCE, p_value=p_value, patches_used=n_kept,
                    rms_model_px=float(np.sqrt((predicted**2).sum(-1).mean())),
                    rms_residual_px=float(np.sqrt((residual**2).sum(-1).mean())),
                    max_model_px=float(np.sqrt((predicted**2).sum(-1)).max()))
