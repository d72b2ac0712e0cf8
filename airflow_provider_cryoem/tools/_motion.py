"""The motion result dict shared by every motion-correction tool (same keys as engines.motion)."""
from __future__ import annotations

from typing import Any

import numpy as np

from airflow_provider_cryoem.engines.motion_stats import motion_statistics


def motion_result(shifts_px: np.ndarray, pixel_size_a: float, dose_per_frame_e_a2: float,
                  micrograph: str) -> dict[str, Any]:
    """Shifts re-referenced to frame 0 plus cryoem-services' total/early/late motion (Å)."""
    shifts = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    shifts = shifts - shifts[0]
    stats = motion_statistics(shifts, pixel_size_a, dose_per_frame_e_a2)
    return {"micrograph": micrograph, "n_frames": len(shifts), "shifts_px": shifts.round(4).tolist(),
            "total_motion_a": stats.total_motion_a, "early_motion_a": stats.early_motion_a,
            "late_motion_a": stats.late_motion_a, "average_motion_per_frame_a": stats.average_motion_per_frame_a}
