"""Static plots (drift trajectory, B-factor line, tilt alignment, CTF profile) drawn with matplotlib's Agg
renderer.

Matplotlib gives axes with tick values and renders Å, ² and σ with its bundled DejaVu fonts, which Pillow's
built-in font cannot. It is imported inside the functions, never at module level: DAG files import the
recipes, and a module-level import would add about half a second to every DAG parse.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..io._atomic import atomic_path
from .thumbnails import _resolution_label

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


def figure_image(figure: Figure) -> Image.Image:
    """The drawn figure as an RGB Pillow image, to paste beside other pictures."""
    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy(), mode="RGB")


# Resolutions (Å) offered as labels along the top of the CTF profile; those inside the shown range are used.
_RESOLUTION_LABELS_A = (50.0, 30.0, 20.0, 15.0, 10.0, 8.0, 6.0, 5.0, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5)
_CTF_SERIES = {"data": ("spectrum, background subtracted", "#1f77b4"), "fit": ("CTF² fit", "#d62728"),
               "cc": ("CC of spectrum and fit", "#2ca02c"), "noise": ("2σ CC of noise", "#8c8c8c")}


def ctf_profile_figure(freq: np.ndarray, data: np.ndarray, fit: np.ndarray, cc: np.ndarray,
                       noise_2sigma: np.ndarray, fit_band: tuple[float, float], display_max_freq: float,
                       size_px: tuple[int, int] = (640, 420)) -> Figure:
    """The 1D fit: rotational average (on the fit's scale) and fitted CTF² over the fitted band, the local CC
    of data and fit and the 2σ CC of noise, against frequency (1/Å below, resolution in Å above); what lies
    outside the fitted band is shaded."""
    low, high = fit_band
    shown = (freq >= low) & (freq <= display_max_freq)
    band = (freq >= low) & (freq <= high)
    values = np.concatenate([data[shown], fit[shown], [0.0, 1.0]])
    y_low = min(float(np.percentile(values, 0.5)), -0.1)
    y_high = max(float(np.percentile(values, 99.5)), 1.1)
    figure = new_figure(size_px)
    axes = figure.add_subplot()
    axes.axvspan(0.0, low, color="0.92", linewidth=0)
    if high < display_max_freq:
        axes.axvspan(high, display_max_freq, color="0.92", linewidth=0)
    # Widths chosen so each line still shows when the dashboard shrinks the picture to a 256 px thumbnail.
    series = {"data": (freq[shown], np.clip(data[shown], y_low, y_high), "-", 1.3),
              "fit": (freq[band], fit[band], "-", 2.2),
              "cc": (freq[shown], np.clip(cc[shown], y_low, y_high), "-", 2.2),
              "noise": (freq[shown], noise_2sigma[shown], "--", 1.5)}
    for key, (x, y, style, width) in series.items():
        label, colour = _CTF_SERIES[key]
        # The thin data trace over the broad fit, so the eye sees where it leaves the fit.
        axes.plot(x, y, style, color=colour, linewidth=width, label=label, zorder=3 if key == "data" else 2)
    axes.axvline(high, color=_CTF_SERIES["fit"][1], linewidth=1.5)
    # On a white box above the lines: the data trace runs through this corner on real micrographs.
    axes.annotate(f"fit to {_resolution_label(1.0 / high)}", (high, y_low), textcoords="offset points",
                  xytext=(-4, 4), ha="right", va="bottom", color=_CTF_SERIES["fit"][1], fontsize="small",
                  bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
                  zorder=5)
    axes.set_xlim(0.0, display_max_freq)
    axes.set_ylim(y_low, y_high)
    axes.set_xlabel("spatial frequency (1/Å)")
    axes.set_ylabel("CTF², CC")
    top = axes.secondary_xaxis("top")
    labelled = [r for r in _RESOLUTION_LABELS_A if 0 < 1.0 / r < display_max_freq]
    # Keep labels apart: at most one per tenth of the axis.
    kept: list[float] = []
    for resolution_a in labelled:
        if not kept or 1.0 / resolution_a - 1.0 / kept[-1] > 0.1 * display_max_freq:
            kept.append(resolution_a)
    top.set_xticks([1.0 / r for r in kept], labels=[_resolution_label(r) for r in kept])
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize="small", frameon=False)
    figure.tight_layout()
    return figure


def ctf_profile_plot(freq: np.ndarray, data: np.ndarray, fit: np.ndarray, cc: np.ndarray, noise_2sigma: np.ndarray,
                     fit_band: tuple[float, float], display_max_freq: float, size_px: tuple[int, int] = (640, 420)
                     ) -> Image.Image:
    """`ctf_profile_figure` as a Pillow image of `size_px`, the right half of the CTF diagnostic picture."""
    return figure_image(ctf_profile_figure(freq, data, fit, cc, noise_2sigma, fit_band, display_max_freq, size_px))
