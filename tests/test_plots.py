"""Static plots (matplotlib) show tick values, axis labels with units, and Å / ² as glyphs, not boxes."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from airflow_provider_cryoem.engines import plots
from airflow_provider_cryoem.engines.bfactor import BFactorPoint, bfactor_plot, fit_bfactor


def _rendered(figure) -> tuple[np.ndarray, list[str]]:
    """The figure's RGB pixels and the messages of warnings raised while drawing it (missing glyphs warn)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3], [str(w.message) for w in caught]


def _inked(pixels: np.ndarray, text) -> bool:
    """Whether dark pixels lie inside the text's box on the canvas (y of the box counts from the bottom)."""
    box = text.get_window_extent()
    height = pixels.shape[0]
    rows = slice(max(0, int(height - box.y1)), int(np.ceil(height - box.y0)))
    columns = slice(max(0, int(box.x0)), int(np.ceil(box.x1)))
    return bool((pixels[rows, columns].min(axis=-1) < 100).any())


def _bfactor_fit():
    points = [BFactorPoint(number_of_particles=n, resolution_a=1.0 / np.sqrt(2 / 150.0 * np.log(n) - 0.05))
              for n in (1000, 2000, 4000)]
    return fit_bfactor(points)


def _bfactor_figure():
    fit = _bfactor_fit()
    ln_n = np.log([p.number_of_particles for p in fit.points])
    inverse_d2 = 1.0 / np.square([p.resolution_a for p in fit.points])
    return plots.bfactor_figure(ln_n, inverse_d2, ["a", "b", "c"], (fit.slope_per_a2, fit.intercept_per_a2),
                                f"B = {fit.bfactor_a2:.0f} Å²")


def test_bfactor_plot_has_tick_values_and_units_in_glyphs_the_font_has() -> None:
    figure = _bfactor_figure()
    pixels, messages = _rendered(figure)
    assert not [m for m in messages if "missing from" in m]  # Å and ² exist in the font: no boxes drawn
    axes = figure.axes[0]
    assert axes.get_title() == "B = 150 Å²" and axes.get_ylabel() == "1/d² (1/Å²)"
    assert "number of particles" in axes.get_xlabel()
    for axis, (low, high) in ((axes.xaxis, axes.get_xlim()), (axes.yaxis, axes.get_ylim())):
        values = [value for value in axis.get_ticklocs() if low <= value <= high]
        position = 0 if axis is axes.xaxis else 1
        shown = [label for label in axis.get_ticklabels() if low <= label.get_position()[position] <= high]
        assert len(values) >= 3 and len(shown) == len(values)
        assert [float(label.get_text().replace("−", "-")) for label in shown] == pytest.approx(values, abs=1e-9)
        assert all(_inked(pixels, label) for label in shown)
    assert _inked(pixels, axes.title) and _inked(pixels, axes.yaxis.label)


def test_bfactor_plot_is_a_png_of_the_requested_size(tmp_path: Path) -> None:
    path = bfactor_plot(_bfactor_fit(), tmp_path / "bfactor.png", size_px=(480, 360))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (480, 360)


def test_drift_plot_draws_the_trajectory_with_the_first_frame_marked(tmp_path: Path) -> None:
    shifts = np.cumsum(np.random.default_rng(3).normal(0, 1.5, (24, 2)), axis=0)
    with Image.open(plots.drift_plot(shifts, tmp_path / "drift.png", size_px=400, unit="Å")) as image:
        picture = np.asarray(image.convert("RGB"))
    assert picture.shape == (400, 400, 3)
    trace = np.all(picture == (31, 119, 180), axis=-1)
    first_frame = np.all(picture == (214, 39, 40), axis=-1)
    assert trace.sum() > 100 and first_frame.sum() > 4
    figure = plots.drift_figure(shifts, unit="Å", size_px=400)
    pixels, messages = _rendered(figure)
    axes = figure.axes[0]
    assert not [m for m in messages if "missing from" in m]
    assert axes.get_xlabel() == "x shift (Å)" and axes.get_ylabel() == "y shift (Å)"
    assert _inked(pixels, axes.xaxis.label) and _inked(pixels, axes.title)
    assert len([t for t in axes.get_xticklabels() if t.get_text() and _inked(pixels, t)]) >= 3
    with pytest.raises(ValueError, match="shifts"):
        plots.drift_plot([1.0, 2.0], tmp_path / "bad.png")


def test_alignment_plot_marks_excluded_tilts_and_labels_its_axes_in_degrees_and_pixels() -> None:
    angles = np.arange(-60.0, 61.0, 3.0)
    rng = np.random.default_rng(4)
    shifts = rng.normal(0, 5, (angles.size, 2))
    residuals = np.abs(rng.normal(1, 0.3, angles.size))
    residuals[5] = np.nan  # not measured (a used tilt)
    excluded = np.abs(angles) > 55
    figure = plots.alignment_figure(angles, shifts, residuals, excluded)
    pixels, messages = _rendered(figure)
    axes = figure.axes[0]
    assert not [m for m in messages if "missing from" in m]
    assert axes.get_xlabel() == "tilt angle (°)" and "(px)" in axes.get_ylabel()
    assert axes.get_title() == f"alignment: {int(excluded.sum())} tilts excluded (grey)"
    dx, dy, residual = (line for line in axes.get_lines() if line.get_label() in ("dx", "dy", "residual"))
    assert len(dx.get_xdata()) == (~excluded).sum() and len(residual.get_xdata()) == (~excluded).sum() - 1
    assert _inked(pixels, axes.xaxis.label) and _inked(pixels, axes.yaxis.label)
    assert len([t for t in axes.get_xticklabels() if t.get_text() and _inked(pixels, t)]) >= 3


def test_importing_the_plot_modules_does_not_import_matplotlib() -> None:
    code = ("import sys; import airflow_provider_cryoem.engines.plots, airflow_provider_cryoem.engines.bfactor, "
            "airflow_provider_cryoem.engines.motion, airflow_provider_cryoem.engines.tomo_images; print('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True
                          ).stdout.strip() == "False"


def test_ctf_profile_draws_the_fitted_ctf_only_over_the_fitted_band_with_resolutions_on_top() -> None:
    freq = np.linspace(0, 0.3, 200)
    fit = np.sin(2e3 * freq**2) ** 2
    cc = np.where(freq < 0.2, 0.8, 0.0)
    figure = plots.ctf_profile_figure(freq, fit, fit, cc, np.full_like(freq, 0.3), (0.03, 0.2),
                                      display_max_freq=0.3, size_px=(600, 400))
    pixels, messages = _rendered(figure)
    assert pixels.shape == (400, 600, 3) and not [m for m in messages if "missing from" in m]
    axes = figure.axes[0]
    assert axes.get_xlabel() == "spatial frequency (1/Å)"
    top = next(child for child in axes.child_axes)
    shown = [label.get_text() for label in top.get_xticklabels()]
    # Resolutions at their frequencies (1/Å), kept at least a tenth of the axis apart.
    assert shown == ["50 Å", "20 Å", "10 Å", "6.0 Å", "5.0 Å", "4.0 Å", "3.5 Å"]
    assert top.get_xticks() == pytest.approx([1 / 50, 1 / 20, 1 / 10, 1 / 6, 1 / 5, 1 / 4, 1 / 3.5])
    assert all(_inked(pixels, label) for label in top.get_xticklabels())
    # The fit's red runs from the band's start to its end (0.03-0.2/Å), nowhere else inside the axes.
    height = pixels.shape[0]
    box = axes.get_window_extent()
    inside = pixels[int(height - box.y1) + 2: int(height - box.y0) - 2, int(box.x0) + 2: int(box.x1) - 2]
    red = (inside[..., 0] > 180) & (inside[..., 1] < 90) & (inside[..., 2] < 90)
    columns = np.nonzero(red.any(axis=0))[0] + int(box.x0) + 2
    start, end = (axes.transData.transform((f, 0))[0] for f in (0.03, 0.2))
    assert abs(columns.min() - start) <= 3 and abs(columns.max() - end) <= 3
    picture = plots.ctf_profile_plot(freq, fit, fit, cc, np.full_like(freq, 0.3), (0.03, 0.2), 0.3, (600, 400))
    assert picture.size == (600, 400) and picture.mode == "RGB"
