"""Static PNG plots (drift trajectory, B-factor line) drawn with matplotlib's Agg renderer.

Matplotlib gives axes with tick values and renders Å, ² and σ with its bundled DejaVu fonts, which Pillow's
built-in font cannot. It is imported inside the functions, never at module level: DAG files import the
recipes, and a module-level import would add about half a second to every DAG parse.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io._atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_DPI = 100
_TRACE = "#1f77b4"  # (31, 119, 180)
_FIRST_FRAME = "#d62728"  # (214, 39, 40)
_FIT_LINE = "#d62728"


def new_figure(size_px: tuple[int, int]) -> Figure:
    """A figure of exactly `size_px` (width, height) on its own Agg canvas: no pyplot, so no global state
    shared between threads of a worker."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size_px[0] / _DPI, size_px[1] / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG atomically (temp file + rename) so a reader never sees half a picture."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)
    return path


def drift_figure(shifts: Sequence[Sequence[float]] | np.ndarray, unit: str = "px", size_px: int = 480) -> Figure:
    """The whole-frame trajectory `[[dx, dy], ...]` on equal axes: a line through per-frame markers, the
    first frame in red, total path length in the title."""
    points = np.asarray(shifts, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"shifts must be a non-empty list of [dx, dy], got shape {points.shape}")
    figure = new_figure((size_px, size_px))
    axes = figure.add_subplot()
    axes.plot(points[:, 0], points[:, 1], "-o", color=_TRACE, linewidth=2, markersize=3)
    axes.plot(points[:1, 0], points[:1, 1], "o", color=_FIRST_FRAME, markersize=6, label="first frame")
    # Equal scale on both axes, at least ±1 unit around the middle, so a still movie is not a zoomed-in blur.
    middle = 0.5 * (points.min(axis=0) + points.max(axis=0))
    half_span = max(0.55 * float(np.ptp(points, axis=0).max()), 1.0)
    axes.set_xlim(middle[0] - half_span, middle[0] + half_span)
    axes.set_ylim(middle[1] - half_span, middle[1] + half_span)
    axes.set_aspect("equal")
    axes.grid(True, color="0.9")
    axes.set_xlabel(f"x shift ({unit})")
    axes.set_ylabel(f"y shift ({unit})")
    total = float(np.hypot(*np.diff(points, axis=0).T).sum()) if len(points) > 1 else 0.0
    axes.set_title(f"drift: {len(points)} frames, total {total:.1f} {unit}", fontsize="medium")
    axes.legend(loc="best", fontsize="small", frameon=False)
    figure.tight_layout()
    return figure


def drift_plot(shifts: Sequence[Sequence[float]] | np.ndarray, path: str | Path, size_px: int = 480,
               unit: str = "px") -> Path:
    """Save `drift_figure` as a `size_px` square PNG at `path`."""
    return save_png(drift_figure(shifts, unit, size_px), path)


def bfactor_figure(ln_particles: np.ndarray, inverse_d2_per_a2: np.ndarray, labels: Sequence[str],
                   line: tuple[float, float], title: str, size_px: tuple[int, int] = (480, 360)) -> Figure:
    """1/d² (1/Å²) against ln N: the measured points labelled, the fitted line `(slope, intercept)` over
    them, `title` on top."""
    figure = new_figure(size_px)
    axes = figure.add_subplot()
    x_low, x_high = float(ln_particles.min()) - 0.2, float(ln_particles.max()) + 0.4  # room for the labels
    slope, intercept = line
    axes.plot([x_low, x_high], [slope * x_low + intercept, slope * x_high + intercept], color=_FIT_LINE,
              linewidth=2, label="fit")
    axes.plot(ln_particles, inverse_d2_per_a2, "o", color=_TRACE, label="refinement")
    for x, y, label in zip(ln_particles, inverse_d2_per_a2, labels):
        axes.annotate(label, (float(x), float(y)), textcoords="offset points", xytext=(6, -12), fontsize="small")
    axes.set_xlim(x_low, x_high)
    axes.set_xlabel("ln(number of particles)")
    axes.set_ylabel("1/d² (1/Å²)")
    axes.set_title(title, fontsize="medium")
    axes.legend(loc="upper left", fontsize="small", frameon=False)
    axes.grid(True, color="0.9")
    figure.tight_layout()
    return figure


# Tilt-series alignment: one colour per series, as matplotlib's default cycle gives them.
_ALIGNMENT_SERIES = (("dx", "#1f77b4"), ("dy", "#ff7f0e"), ("residual", "#2ca02c"))


def alignment_figure(tilt_angles_deg: np.ndarray, shifts_px: np.ndarray, residuals_px: np.ndarray,
                     excluded: np.ndarray, size_px: tuple[int, int] = (560, 392)) -> Figure:
    """Shift dx, dy and residual (px) of each used tilt against its tilt angle (°); `residuals_px` NaN where
    not measured; excluded tilts as grey ticks along the bottom."""
    figure = new_figure(size_px)
    axes = figure.add_subplot()
    used = ~excluded
    for (name, colour), values in zip(_ALIGNMENT_SERIES, (shifts_px[:, 0], shifts_px[:, 1], residuals_px)):
        shown = used & np.isfinite(values)
        axes.plot(tilt_angles_deg[shown], values[shown], "-o", color=colour, linewidth=1.5, markersize=4, label=name)
    axes.axhline(0.0, color="0.6", linewidth=0.8)
    for angle in tilt_angles_deg[excluded]:
        axes.axvline(angle, ymax=0.06, color="0.6", linewidth=2)
    axes.set_xlabel("tilt angle (°)")
    axes.set_ylabel("shift, residual (px)")
    title = "alignment" + (f": {int(excluded.sum())} tilts excluded (grey)" if excluded.any() else "")
    axes.set_title(title, fontsize="medium")
    axes.legend(loc="best", fontsize="small", ncols=3)
    axes.grid(True, color="0.9")
    figure.tight_layout()
    return figure
