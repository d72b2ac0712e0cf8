"""Rosenthal–Henderson B-factor from refinements of particle subsets (Rosenthal & Henderson 2003).

With N particles the resolution d reached follows 1/d² = (2/B)·ln N + c, so a straight-line fit of
1/d² against ln N gives B = 2 / slope (Å²). A steep line (small B) means data quality, not particle
count, limits the map.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from . import plots


class BFactorPoint(BaseModel):
    number_of_particles: int = Field(ge=1)
    resolution_a: float = Field(gt=0)


class BFactorFit(BaseModel):
    bfactor_a2: float = Field(description="2 / slope of 1/d² vs ln N; inf when the slope is not positive.")
    slope_per_a2: float
    intercept_per_a2: float
    r_squared: float
    points: list[BFactorPoint]

    def resolution_for(self, number_of_particles: int) -> float:
        """Resolution (Å) the fit predicts for `number_of_particles`."""
        inverse_d2 = self.slope_per_a2 * np.log(number_of_particles) + self.intercept_per_a2
        return float(1.0 / np.sqrt(inverse_d2)) if inverse_d2 > 0 else float("inf")


def fit_bfactor(points: Sequence[BFactorPoint]) -> BFactorFit:
    """Least-squares line through (ln N, 1/d²); needs two or more different particle counts."""
    points = [BFactorPoint.model_validate(p) for p in points]
    ln_n = np.log([p.number_of_particles for p in points])
    inverse_d2 = 1.0 / np.square([p.resolution_a for p in points])
    if len(set(ln_n)) < 2:
        raise ValueError(f"a B-factor fit needs refinements of at least two particle counts, got "
                         f"{sorted({p.number_of_particles for p in points})}")
    slope, intercept = np.polyfit(ln_n, inverse_d2, 1)
    predicted = slope * ln_n + intercept
    spread = float(((inverse_d2 - inverse_d2.mean()) ** 2).sum())
    r_squared = 1.0 - float(((inverse_d2 - predicted) ** 2).sum()) / spread if spread > 0 else 1.0
    return BFactorFit(bfactor_a2=float(2.0 / slope) if slope > 0 else float("inf"), slope_per_a2=float(slope),
                      intercept_per_a2=float(intercept), r_squared=r_squared, points=points)


def subset_sizes(total_particles: int, fractions: Sequence[float] = (0.125, 0.25, 0.5, 1.0),
                 min_particles: int = 2) -> list[int]:
    """Particle counts of the subsets to refine (distinct, ascending, at least `min_particles`)."""
    sizes = sorted({round(total_particles * f) for f in fractions if 0 < f <= 1})
    return [n for n in sizes if n >= min_particles]


def bfactor_plot(fit: BFactorFit, path: str | Path, size_px: tuple[int, int] = (480, 360)) -> Path:
    """PNG of 1/d² against ln N with the fitted line, each point's particle count and resolution, and B in
    the title (matplotlib, see `plots`)."""
    ln_n = np.log([p.number_of_particles for p in fit.points])
    inverse_d2 = 1.0 / np.square([p.resolution_a for p in fit.points])
    labels = [f"{p.number_of_particles}: {p.resolution_a:.1f} Å" for p in fit.points]
    figure = plots.bfactor_figure(ln_n, inverse_d2, labels, (fit.slope_per_a2, fit.intercept_per_a2),
                                  f"B = {fit.bfactor_a2:.0f} Å²  (R² = {fit.r_squared:.2f})", size_px)
    return plots.save_png(figure, path)
