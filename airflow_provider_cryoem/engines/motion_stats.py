"""Motion statistics as cryoem-services reports them, and where the drift plot beside each micrograph goes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
