"""Built-in beam-induced motion correction: global + patch alignment, dose weighting, aligned sums.

Steps: gain/defect-correct each frame and take its FFT; align whole frames on a Fourier-cropped copy
(iterated leave-one-out cross-correlation, engines/motion_align.py); align patches of the globally
aligned frames the same way and fit a smooth deformation (engines/motion_local.py), kept only if it
explains significantly more than noise; sum the frames shifted in Fourier space, with and without
dose weighting (engines/dose_weighting.py); write both sums and a drift plot. On request also the
dose-weighted sums of the even and of the odd frames with the same alignment (`<stem>_EVN.mrc`,
`<stem>_ODD.mrc`, as Relion 5's "Save images for denoising?" names them): two images of one exposure with
independent noise, which noise2noise denoisers train on.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.fft
from pydantic import BaseModel, ConfigDict, Field

from ..io import (
    ImageFileError,
    check_frames_finite,
    correct_defects,
    load_defect_map,
    load_gain,
    read_movie,
    write_mrc,
)
from .dose_weighting import apply_exposure_filters
from .motion_align import align_frames
from .motion_fourier import (
    band_limited_shape,
    bfactor_filter,
    crop_spectra,
    even_fast_size,
    phase_ramps,
    radius_inv_a,
)
from .motion_local import LocalFit, extract_patches, fit_local_motion, patch_grid
from .motion_smooth import smooth_trajectory
from .motion_stats import drift_plot_path, motion_statistics
from .plots import drift_plot
from .motion_sum import Exposure, TileLayout, global_sum, local_sum

MIN_PATCH_PX = 48        # patches smaller than this (in the local-alignment grid) hold too little signal
TILE_MARGIN_PX = 16      # overlap of output tiles on each side (input pixels)
MAX_TILE_SHIFT_SPREAD_PX = 0.1  # local shifts may differ by at most this much across one output tile


class MotionCorrectionInputs(BaseModel):
    """One movie and how to correct it; field names follow the session configuration."""

    model_config = ConfigDict(extra="forbid")

    movie_path: str = Field(min_length=1, description="Movie (MRC, TIFF or EER).")
    output_path: str = Field(min_length=1, description="Dose-weighted aligned sum (MRC) to write.")
    pixel_size_a: float = Field(gt=0, le=100, description="Pixel size of the movie frames (Å/px).")
    dose_per_frame_e_a2: float = Field(gt=0, le=1000, description="Exposure per frame (e⁻/Å²).")
    voltage_kv: float = Field(300.0, ge=60, le=400)
    pre_exposure_e_a2: float = Field(0.0, ge=0, le=1000, description="Exposure before the first frame (e⁻/Å²).")
    dose_weighting: bool = True
    gain_reference_path: str | None = None
    gain_rotation: Literal[0, 1, 2, 3] = 0
    gain_flip: Literal[0, 1, 2] = 0
    defect_file_path: str | None = None
    eer_grouping: int = Field(20, ge=1, le=1000)
    bin_factor: Literal[1, 2] = Field(1, description="2 = Fourier-crop super-resolution movies to half size.")
    patches_x: int = Field(5, ge=1, le=20, description="Patches across for local motion (1 × 1 = global only).")
    patches_y: int = Field(5, ge=1, le=20)
    iterations: int = Field(10, ge=1, le=100, description="Most alignment passes.")
    tolerance_px: float = Field(0.05, gt=0, le=10, description="Stop once no shift changes by more (input px).")
    bfactor_a2: float = Field(150.0, ge=0, le=5000, description="Low-pass exp(-B k²/4) for global alignment.")
    local_bfactor_a2: float = Field(500.0, ge=0, le=5000, description="Low-pass for patch alignment.")
    smooth_trajectory: bool = Field(True, description="Smooth the global trajectory (strength from the data).")
    max_shift_a: float = Field(200.0, gt=0, le=5000, description="Largest shift searched for any frame (Å).")
    alignment_max_size_px: int = Field(1024, ge=64, le=8192,
                                       description="Largest side of the Fourier-cropped copy used for alignment.")
    early_motion_dose_e_a2: float = Field(4.0, gt=0, description="Early/late motion split (e⁻/Å²).")
    threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=1024)
    even_odd_sums: bool = Field(False, description="Also write the even- and odd-frame sums (Relion 5's "
                                                   "do_even_odd_split), for noise2noise denoising.")


def half_sum_paths(micrograph_path: str | Path) -> tuple[Path, Path]:
    """Where the even- and odd-frame sums of a micrograph go: `<stem>_EVN.mrc`, `<stem>_ODD.mrc` beside it (the
    names Relion 5's motion correction gives them)."""
    path = Path(micrograph_path)
    return path.with_name(f"{path.stem}_EVN.mrc"), path.with_name(f"{path.stem}_ODD.mrc")


class LocalMotionSummary(BaseModel):
    """What patch alignment found and whether the deformation was applied (px are input pixels)."""

    applied: bool
    note: str
    patches_x: int
    patches_y: int
    patches_used: int = 0
    p_value: float | None = None
    rms_local_motion_px: float = 0.0
    max_local_motion_px: float = 0.0
    rms_patch_residual_px: float = 0.0


class MotionCorrectionResult(BaseModel):
    """Outputs and statistics of one motion-corrected movie."""

    movie_path: str
    micrograph: str
    micrograph_no_dw: str
    micrograph_even: str | None = Field(None, description="Sum of frames 0, 2, 4 … (even_odd_sums)")
    micrograph_odd: str | None = Field(None, description="Sum of frames 1, 3, 5 … (even_odd_sums)")
    drift_plot: str
    n_frames: int
    image_shape_px: list[int] = Field(description="[ny, nx] of the micrograph")
    pixel_size_a: float = Field(description="Pixel size of the micrograph (Å/px)")
    shifts_px: list[list[float]] = Field(description="[dx, dy] per frame in input pixels; frame 0 = [0, 0]")
    total_motion_a: float
    early_motion_a: float
    late_motion_a: float
    average_motion_per_frame_a: float
    dose_per_frame_e_a2: float
    alignment_iterations: int
    local_motion: LocalMotionSummary
    notes: list[str] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)


class _Frames:
    """Raw frames → gain- and defect-corrected float32 frames, one at a time (keeps only the raw stack)."""

    def __init__(self, raw: np.ndarray, gain: np.ndarray | None, defects: np.ndarray | None) -> None:
        self.raw, self.gain, self.defects = raw, gain, defects

    def __len__(self) -> int:
        return self.raw.shape[0]

    def __call__(self, index: int) -> np.ndarray:
        if self.gain is None:
            frame = np.asarray(self.raw[index], dtype=np.float32)
        else:
            frame = np.multiply(self.raw[index], self.gain, dtype=np.float32)
        if self.defects is not None:
            frame = correct_defects(frame, self.defects)
        return frame


def _read(inputs: MotionCorrectionInputs, notes: list[str]) -> _Frames:
    """Read and check the movie, gain and defects; every problem names its file."""
    path = inputs.movie_path
    raw = read_movie(path, eer_grouping=inputs.eer_grouping)
    check_frames_finite(raw, path)
    n, ny, nx = raw.shape
    if ny < 16 or nx < 16:
        raise ImageFileError(path, f"frames of {ny} x {nx} px are too small to align (need at least 16 x 16)")
    flat = raw.reshape(n, -1)
    empty = flat.max(axis=1) == flat.min(axis=1)
    if empty.any():
        first = int(np.flatnonzero(empty)[0])
        value = flat[first, 0]
        raise ImageFileError(path, f"frame {first} is blank (every pixel = {value}); "
                                   f"{int(empty.sum())} of {n} frames are blank")
    if ny % 2 or nx % 2:
        notes.append(f"frames of {ny} x {nx} px trimmed to even size {ny - ny % 2} x {nx - nx % 2}")
    gain = None
    if inputs.gain_reference_path:
        gain = load_gain(inputs.gain_reference_path, inputs.gain_rotation, inputs.gain_flip, (ny, nx))
    defects = load_defect_map(inputs.defect_file_path, (ny, nx)) if inputs.defect_file_path else None
    even = (slice(None), slice(0, ny - ny % 2), slice(0, nx - nx % 2))
    return _Frames(raw[even], None if gain is None else gain[even[1:]],
                   None if defects is None else defects[even[1:]])


def _half_exposure(exposure: Exposure | None, count: int) -> Exposure | None:
    """Every other frame: half the frames, each standing for twice the dose (frame k of a half starts at 2k
    frames' dose, as it does in the movie, give or take the one frame between the halves)."""
    if exposure is None:
        return None
    return Exposure(count, 2 * exposure.dose_per_frame_e_a2, exposure.voltage_kv)


def _spectra(frames: _Frames, workers: int) -> np.ndarray:
    """rfft2 of every corrected frame, (n, ny, nx//2+1) complex64."""
    n, ny, nx = frames.raw.shape
    out = np.empty((n, ny, nx // 2 + 1), dtype=np.complex64)
    for i in range(n):
        out[i] = scipy.fft.rfft2(frames(i), workers=workers)
    return out


def _align_global(spectra: np.ndarray, shape: tuple[int, int], inputs: MotionCorrectionInputs
                  ) -> tuple[np.ndarray, int, np.ndarray, tuple[int, int]]:
    """Global shifts (n, 2) in input px, passes used, and the spectra cropped for patch alignment with their shape."""
    align_shape = band_limited_shape(shape, inputs.pixel_size_a, inputs.bfactor_a2, inputs.alignment_max_size_px)
    scale = np.array([shape[1] / align_shape[1], shape[0] / align_shape[0]])
    cropped = crop_spectra(spectra, align_shape)[None]
    align_pixel_a = inputs.pixel_size_a * float(scale.mean())
    filt = bfactor_filter(align_shape, align_pixel_a, inputs.bfactor_a2)
    # Matched filter: weigh each frame's frequencies by the signal that radiation damage left in them
    # (the patch alignment profits from the same weighting, so its copy is cut after this).
    apply_exposure_filters(cropped[0], radius_inv_a(align_shape, align_pixel_a), inputs.dose_per_frame_e_a2,
                           inputs.pre_exposure_e_a2, inputs.voltage_kv)
    local_shape = band_limited_shape(shape, inputs.pixel_size_a, inputs.local_bfactor_a2, min(align_shape))
    local_spectra = crop_spectra(cropped[0], local_shape)
    result = align_frames(cropped, align_shape, filt, inputs.max_shift_a / inputs.pixel_size_a / scale.min(),
                          inputs.iterations, inputs.tolerance_px / scale.max(), inputs.threads)
    shifts = result.shifts_px[0] * scale
    if inputs.smooth_trajectory:
        shifts, _ = smooth_trajectory(shifts)
        shifts -= shifts[0]
    return shifts, result.iterations, local_spectra, local_shape


def _align_local(local_spectra: np.ndarray, local_shape: tuple[int, int], shape: tuple[int, int],
                 shifts_px: np.ndarray, inputs: MotionCorrectionInputs) -> tuple[LocalFit | None, str]:
    """Patch trajectories on the globally aligned frames and the deformation fitted to them."""
    n_frames = local_spectra.shape[0]
    if n_frames < 3:
        return None, f"local alignment skipped: {n_frames} frames are too few for a trajectory model"
    size = even_fast_size(1.25 * max(local_shape[0] / inputs.patches_y, local_shape[1] / inputs.patches_x))
    if size < MIN_PATCH_PX or size > min(local_shape):
        return None, (f"local alignment skipped: {inputs.patches_x} x {inputs.patches_y} patches of a "
                      f"{shape[1]} x {shape[0]} px image hold too little signal (patch {size} px in the "
                      f"{local_shape[1]} x {local_shape[0]} alignment grid, need >= {MIN_PATCH_PX})")
    scale = np.array([shape[1] / local_shape[1], shape[0] / local_shape[0]])
    ey, ex = phase_ramps(shifts_px / scale, local_shape)
    local_spectra *= ey
    local_spectra *= ex
    frames = scipy.fft.irfft2(local_spectra, s=local_shape, workers=inputs.threads)
    grid = patch_grid(local_shape, inputs.patches_x, inputs.patches_y, size)
    patch_spectra = scipy.fft.rfft2(extract_patches(frames, grid), workers=inputs.threads)
    patch_pixel_a = inputs.pixel_size_a * float(scale.mean())
    filt = bfactor_filter((size, size), patch_pixel_a, inputs.local_bfactor_a2)
    result = align_frames(patch_spectra, (size, size), filt, size / 4, inputs.iterations,
                          inputs.tolerance_px / scale.max(), inputs.threads)
    fit = fit_local_motion(grid.centres_xy_px * scale, result.shifts_px * scale, result.peak_quality, shape)
    if fit is None:
        return None, "local alignment skipped: too few patches with a clear correlation peak"
    return fit, ""


def _tile_core_px(fit: LocalFit, shape: tuple[int, int], bin_factor: int) -> int:
    """Largest tile core over which the fitted deformation changes by at most MAX_TILE_SHIFT_SPREAD_PX."""
    ny, nx = shape
    ys, xs = np.meshgrid(np.linspace(0, ny - 1, 17), np.linspace(0, nx - 1, 17), indexing="ij")
    d = fit.model.displacement_px(xs, ys)
    step = (ny - 1) / 16
    gradient = max(np.abs(np.diff(d, axis=1)).max(), np.abs(np.diff(d, axis=2)).max()) / step
    core = MAX_TILE_SHIFT_SPREAD_PX / max(gradient, 1e-9)
    core = int(np.clip(core, 64, max(ny, nx)))
    unit = 16 * bin_factor
    return max(unit, core // unit * unit)


def run_motion_correction(inputs: MotionCorrectionInputs) -> MotionCorrectionResult:
    """Correct one movie: align, dose-weight, write the sums and the drift plot, return the statistics."""
    timings: dict[str, float] = {}
    notes: list[str] = []
    start = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal start
        now = time.perf_counter()
        timings[name] = round(now - start, 4)
        start = now

    frames = _read(inputs, notes)
    n_frames, ny, nx = frames.raw.shape
    shape = (ny, nx)
    lap("read_s")
    spectra = _spectra(frames, inputs.threads)
    lap("fft_s")
    shifts, passes, local_spectra, local_shape = _align_global(spectra, shape, inputs)
    lap("global_alignment_s")
    summary = LocalMotionSummary(applied=False, note="local alignment not requested", patches_x=inputs.patches_x,
                                 patches_y=inputs.patches_y)
    fit = None
    if inputs.patches_x * inputs.patches_y > 1:
        fit, note = _align_local(local_spectra, local_shape, shape, shifts, inputs)
        if fit is None:
            summary.note = note
            notes.append(note)
        else:
            summary = LocalMotionSummary(
                applied=fit.significant, patches_x=inputs.patches_x, patches_y=inputs.patches_y,
                note="deformation applied" if fit.significant else
                "deformation not applied: not significantly better than global alignment alone",
                patches_used=fit.patches_used, p_value=fit.p_value, rms_local_motion_px=fit.rms_model_px,
                max_local_motion_px=fit.max_model_px, rms_patch_residual_px=fit.rms_residual_px)
        lap("local_alignment_s")
    del local_spectra
    out_pixel_a = inputs.pixel_size_a * inputs.bin_factor
    exposure = Exposure(n_frames, inputs.dose_per_frame_e_a2, inputs.voltage_kv) if inputs.dose_weighting else None
    halves: list[np.ndarray] = []
    if fit is not None and fit.significant:
        del spectra
        layout = TileLayout(shape, _tile_core_px(fit, shape, inputs.bin_factor), TILE_MARGIN_PX * inputs.bin_factor)
        model = fit.model

        def shifts_at(centres_xy: np.ndarray, frame: int) -> np.ndarray:
            local = model.displacement_px(centres_xy[:, 0], centres_xy[:, 1])[frame]
            return shifts[frame] + local

        dw, plain = local_sum(frames, n_frames, layout, shifts_at, inputs.pixel_size_a, exposure,
                              inputs.bin_factor, inputs.threads)
        if inputs.even_odd_sums:
            for first in (0, 1):
                count = len(range(first, n_frames, 2))
                halves.append(local_sum(
                    lambda i, first=first: frames(first + 2 * i), count, layout,
                    lambda centres, i, first=first: shifts_at(centres, first + 2 * i), inputs.pixel_size_a,
                    _half_exposure(exposure, count), inputs.bin_factor, inputs.threads)[0])
    else:
        dw, plain = global_sum(spectra, shape, shifts, inputs.pixel_size_a, exposure, inputs.bin_factor,
                               inputs.threads)
        if inputs.even_odd_sums:
            for first in (0, 1):
                count = len(range(first, n_frames, 2))
                halves.append(global_sum(spectra[first::2], shape, shifts[first::2], inputs.pixel_size_a,
                                         _half_exposure(exposure, count), inputs.bin_factor, inputs.threads)[0])
        del spectra
    lap("sum_s")
    out = Path(inputs.output_path)
    no_dw = out.with_name(f"{out.stem}_noDW{out.suffix or '.mrc'}")
    write_mrc(out, dw, out_pixel_a)
    write_mrc(no_dw, plain, out_pixel_a)
    half_paths: list[str | None] = [None, None]
    if halves:
        half_paths = [str(write_mrc(path, image, out_pixel_a)) for path, image in zip(half_sum_paths(out), halves)]
    shifts = np.round(shifts, 4)  # the reported shifts, so the statistics follow them exactly
    stats = motion_statistics(shifts, inputs.pixel_size_a, inputs.dose_per_frame_e_a2, inputs.early_motion_dose_e_a2)
    plot = drift_plot(shifts * inputs.pixel_size_a, drift_plot_path(out, inputs.movie_path), size_px=400, unit="Å")
    lap("write_s")
    timings["total_s"] = round(sum(timings.values()), 4)
    return MotionCorrectionResult(
        movie_path=str(inputs.movie_path), micrograph=str(out), micrograph_no_dw=str(no_dw), drift_plot=str(plot),
        micrograph_even=half_paths[0], micrograph_odd=half_paths[1],
        n_frames=n_frames, image_shape_px=list(dw.shape), pixel_size_a=out_pixel_a,
        shifts_px=shifts.tolist(), total_motion_a=stats.total_motion_a,
        early_motion_a=stats.early_motion_a, late_motion_a=stats.late_motion_a,
        average_motion_per_frame_a=stats.average_motion_per_frame_a, dose_per_frame_e_a2=inputs.dose_per_frame_e_a2,
        alignment_iterations=passes, local_motion=summary, notes=notes, timings_s=timings)
