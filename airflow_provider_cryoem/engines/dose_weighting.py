"""Exposure (dose) weighting of movie frames after Grant & Grigorieff 2015 (eLife 4:e06980).

Radiation damage fades high spatial frequencies first; the critical exposure Ne(k) at which a
frequency keeps 1/e of its amplitude is Ne(k) = 0.245 k^-1.665 + 2.81 e⁻/Å² (k in 1/Å, 300 kV).
Each frame's frequency k is attenuated by q = exp(-N / (2 Ne(k))) at accumulated exposure N, and the
SNR-optimal sum weighs each frame by its q; here the weights are normalised to sum to 1 per frequency.
"""
from __future__ import annotations

import numpy as np

CRITICAL_EXPOSURE_A = 0.245
CRITICAL_EXPOSURE_B = -1.665
CRITICAL_EXPOSURE_C_E_A2 = 2.81

# Critical exposure relative to 300 kV: lower voltage damages more per electron. The 200 kV factor
# is Grant & Grigorieff's 0.8 (as in unblur/cisTEM and MotionCor2); 100 kV is cisTEM's 0.532.
_VOLTAGE_KV = (100.0, 200.0, 300.0)
_VOLTAGE_SCALE = (0.532, 0.8, 1.0)


def voltage_scale(voltage_kv: float) -> float:
    """Critical-exposure factor for `voltage_kv` (1 at 300 kV, 0.8 at 200 kV), interpolated between."""
    return float(np.interp(voltage_kv, _VOLTAGE_KV, _VOLTAGE_SCALE))


def critical_exposure_e_a2(k_inv_a: np.ndarray, voltage_kv: float = 300.0) -> np.ndarray:
    """Ne(k) in e⁻/Å² for spatial frequencies `k_inv_a` (1/Å); infinite at k = 0 (no damage at DC)."""
    k = np.abs(np.asarray(k_inv_a, dtype=np.float64))
    with np.errstate(divide="ignore"):
        ne = CRITICAL_EXPOSURE_A * np.power(k, CRITICAL_EXPOSURE_B) + CRITICAL_EXPOSURE_C_E_A2
    return ne * voltage_scale(voltage_kv)


def frame_exposures_e_a2(n_frames: int, dose_per_frame_e_a2: float, pre_exposure_e_a2: float = 0.0) -> np.ndarray:
    """Accumulated exposure at the middle of each frame: the exposure that frame's signal has seen on average."""
    return pre_exposure_e_a2 + (np.arange(n_frames) + 0.5) * dose_per_frame_e_a2


def exposure_filters(k_inv_a: np.ndarray, n_frames: int, dose_per_frame_e_a2: float,
                     pre_exposure_e_a2: float = 0.0, voltage_kv: float = 300.0) -> np.ndarray:
    """(n_frames, *k.shape) fraction q = exp(-N / (2 Ne(k))) of each frame's signal amplitude left by damage."""
    ne = critical_exposure_e_a2(k_inv_a, voltage_kv)
    exposures = frame_exposures_e_a2(n_frames, dose_per_frame_e_a2, pre_exposure_e_a2)
    exposures = exposures.reshape((n_frames,) + (1,) * ne.ndim)
    return np.exp(-exposures / (2.0 * ne))


def apply_exposure_filters(spectra: np.ndarray, k_inv_a: np.ndarray, dose_per_frame_e_a2: float,
                           pre_exposure_e_a2: float = 0.0, voltage_kv: float = 300.0) -> None:
    """Multiply each frame of `spectra` (n_frames, *k.shape) in place by its exposure filter.

    Same values as `exposure_filters`, in float32 and one frame at a time, so large stacks need no
    filter array of their own size.
    """
    rate = (-0.5 / critical_exposure_e_a2(k_inv_a, voltage_kv)).astype(np.float32)
    for frame, exposure in zip(spectra, frame_exposures_e_a2(len(spectra), dose_per_frame_e_a2, pre_exposure_e_a2)):
        frame *= np.exp(rate * np.float32(exposure))


def dose_weights(k_inv_a: np.ndarray, n_frames: int, dose_per_frame_e_a2: float, pre_exposure_e_a2: float = 0.0,
                 voltage_kv: float = 300.0) -> np.ndarray:
    """Weights (n_frames, *k.shape): each frame's exposure filter q, normalised so frames sum to 1 per k."""
    q = exposure_filters(k_inv_a, n_frames, dose_per_frame_e_a2, pre_exposure_e_a2, voltage_kv)
    return q / q.sum(axis=0)


class DoseWeightSeries:
    """The weights of `dose_weights` on one Fourier grid, as a geometric series in the frame number.

    Frame f's weight is first · ratio^f with ratio = exp(-dose_per_frame / (2 Ne(k))) (exposure before
    the first frame cancels out of normalised weights). So a weighted sum Σ_f w_f S_f needs no weight
    per frame: accumulate it last frame first by Horner's rule, acc = acc · ratio + S_f, and multiply
    by `first` at the end.
    """

    def __init__(self, k_inv_a: np.ndarray, n_frames: int, dose_per_frame_e_a2: float,
                 voltage_kv: float = 300.0) -> None:
        step = -0.5 * dose_per_frame_e_a2 / critical_exposure_e_a2(k_inv_a, voltage_kv)
        with np.errstate(divide="ignore", invalid="ignore"):
            first = np.where(step < 0, np.expm1(step) / np.expm1(n_frames * step), 1.0 / n_frames)
        self.first = first.astype(np.float32)
        self.ratio = np.exp(step).astype(np.float32)
