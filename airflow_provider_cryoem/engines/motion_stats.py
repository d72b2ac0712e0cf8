"""Motion statistics as cryoem-services reports them, and the drift plot shown beside each micrograph."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..io._atomic import atomic_path

EARLY_MOTION_DOSE_E_A2 = 4.0  # Relion's --dose_motionstats_cutoff default


@dataclass
class MotionStatistics:
    total_motion_a: float
    early_motion_a: float
    late_motion_a: float
    average_motion_per_frame_a: float


def motion_statistics(shifts_px: np.ndarray, pixel_size_a: float, dose_per_frame_e_a2: float,
                      early_dose_e_a2: float = EARLY_MOTION_DOSE_E_A2) -> MotionStatistics:
    """Total = summed frame-to-frame steps (Å); early = steps into frames before round(cutoff / dose);
    late = the rest; average = total / number of frames (cryoem-services' definitions)."""
    shifts = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    steps_a = np.hypot(*np.diff(shifts, axis=0).T) * pixel_size_a
    cutoff_frame = round(early_dose_e_a2 / dose_per_frame_e_a2)
    frame_of_step = np.arange(1, len(shifts))
    early = float(steps_a[frame_of_step < cutoff_frame].sum())
    total = float(steps_a.sum())
    return MotionStatistics(total_motion_a=total, early_motion_a=early, late_motion_a=total - early,
                            average_motion_per_frame_a=total / len(shifts))


def drift_plot_path(micrograph_path: str | Path, movie_path: str | Path) -> Path:
    """`<movie stem>_drift_plot.png` next to the micrograph (cryoem-services names its plot this way)."""
    return Path(micrograph_path).parent / f"{Path(movie_path).stem}_drift_plot.png"


def write_drift_plot(path: str | Path, shifts_a: np.ndarray, size_px: int = 400) -> Path:
    """Trajectory of the specimen (Å) as a PNG: frame 0 green, last frame red, equal axes, 1 Å grid steps."""
    shifts = np.asarray(shifts_a, dtype=np.float64).reshape(-1, 2)
    margin = 40
    span = max(float(np.ptp(shifts, axis=0).max()), 1.0)
    centre = 0.5 * (shifts.min(axis=0) + shifts.max(axis=0))
    scale = (size_px - 2 * margin) / span

    def to_px(point: np.ndarray) -> tuple[float, float]:
        # Image y grows downwards; plot y upwards like a graph.
        return (size_px / 2 + (point[0] - centre[0]) * scale, size_px / 2 - (point[1] - centre[1]) * scale)

    image = Image.new("RGB", (size_px, size_px), "white")
    draw = ImageDraw.Draw(image)
    grid_step_a = 10.0 ** np.floor(np.log10(span)) if span >= 1 else 1.0
    for value in np.arange(np.floor((centre - span) / grid_step_a).min(), np.ceil((centre + span) / grid_step_a).max() + 1):
        x, _ = to_px(np.array([value * grid_step_a, centre[1]]))
        _, y = to_px(np.array([centre[0], value * grid_step_a]))
        draw.line([(x, margin / 2), (x, size_px - margin / 2)], fill=(230, 230, 230))
        draw.line([(margin / 2, y), (size_px - margin / 2, y)], fill=(230, 230, 230))
    points = [to_px(p) for p in shifts]
    if len(points) > 1:
        draw.line(points, fill=(40, 80, 200), width=2)
    for (x, y) in points:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(40, 80, 200))
    for (x, y), colour in ((points[0], (0, 160, 0)), (points[-1], (200, 0, 0))):
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=colour, width=2)
    total = float(np.hypot(*np.diff(shifts, axis=0).T).sum()) if len(shifts) > 1 else 0.0
    draw.text((8, 6), f"drift: {len(shifts)} frames, total {total:.1f} A, grid {grid_step_a:g} A", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
