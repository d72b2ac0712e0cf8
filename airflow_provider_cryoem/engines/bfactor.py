"""Rosenthal–Henderson B-factor from refinements of particle subsets (Rosenthal & Henderson 2003).

With N particles the resolution d reached follows 1/d² = (2/B)·ln N + c, so a straight-line fit of
1/d² against ln N gives B = 2 / slope (Å²). A steep line (small B) means data quality, not particle
count, limits the map.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, Field


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
    """PNG of 1/d² against ln N with the fitted line and B in the title."""
    width, height = size_px
    margin = 50
    ln_n = np.log([p.number_of_particles for p in fit.points])
    inverse_d2 = 1.0 / np.square([p.resolution_a for p in fit.points])
    x_low, x_high = float(ln_n.min()) - 0.2, float(ln_n.max()) + 0.2
    line_y = fit.slope_per_a2 * np.array([x_low, x_high]) + fit.intercept_per_a2
    y_low = float(min(inverse_d2.min(), line_y.min()))
    y_high = float(max(inverse_d2.max(), line_y.max()))
    y_pad = 0.1 * (y_high - y_low or abs(y_high) or 1.0)
    y_low, y_high = y_low - y_pad, y_high + y_pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (margin + (x - x_low) / (x_high - x_low) * (width - 2 * margin),
                height - margin - (y - y_low) / (y_high - y_low) * (height - 2 * margin))

    picture = Image.new("RGB", size_px, "white")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    draw.line([to_px(x_low, line_y[0]), to_px(x_high, line_y[1])], fill="red", width=2)
    for x, y, point in zip(ln_n, inverse_d2, fit.points):
        cx, cy = to_px(float(x), float(y))
        draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill="blue")
        draw.text((cx + 6, cy - 12), f"{point.number_of_particles}: {point.resolution_a:.1f} Å", fill="black", font=font)
    draw.text((margin, 15), f"B = {fit.bfactor_a2:.0f} Å²  (R² = {fit.r_squared:.2f})", fill="black", font=font)
    draw.text((width / 2 - 20, height - margin + 15), "ln(N particles)", fill="black", font=font)
    draw.text((5, margin - 15), "1/d² (1/Å²)", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
