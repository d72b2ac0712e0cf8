"""Built-in tilt-series alignment (fiducial-less), numpy/scipy only.

Steps, on a working copy binned so its longest side is at most `alignment_size_px`:
1. exclude tilts that are dark or blank (mean or spread far below the series median), with the reason;
2. coarse shifts by cross-correlating each tilt with its neighbour nearer zero tilt, stretched by the
   cosine ratio perpendicular to the axis, band-pass filtered and edge-tapered, chained outwards from the
   tilt nearest zero (IMOD tiltxcorr's scheme);
3. refine the tilt axis from the direction in which patches move between the zero tilt and tilts of
   10-35°: only across the true axis, never along it (see `refine_tilt_axis`), then redo step 2 in the
   refined frame;
4. projection matching: a quick weighted back-projection of the aligned working stack is re-projected at
   each tilt without that tilt's own contribution, and each tilt is cross-correlated with it, which
   removes the random part of the error the neighbour chain accumulates. The last correction's length
   is the tilt's residual.
Known limit: in a specimen that is thick compared with the field of view and holds few features, the
chain follows the contrast-weighted mean height of what is in view, which changes with tilt; the shifts
then drift smoothly with tilt (1-2 working pixels at ±60° on the simulator's sparse 150 nm slabs), and
projection matching, whose reference shares the drift, corrects it only slowly.
Geometry and shift conventions are those of engines/tomo_projection.py: `shift_px = (dx, dy)` is how far
the recorded tilt sits from the ideal projection, in input micrograph pixels; the aligned stack holds the
included tilts sorted by angle, moved by -shift, rotated so the tilt axis runs along y, and binned.
Per-tilt angles are not refined (`refined_tilt_angle_deg` equals the nominal angle).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.fft
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.ndimage import map_coordinates

from ..io import ImageFileError, read_mrc, write_mrc
from .tomo_projection import (
    backproject,
    filter_projections,
    project_volume,
    tilt_weights,
    to_axis_frame,
    transform_image,
)

# Band-pass of the cross-correlations (cycles per working pixel): below the high-pass sit ice gradients
# and uneven illumination; above the low-pass the noise dominates at a few e⁻/Å² per tilt.
_HIGH_PASS_CYCLES = 0.01
_LOW_PASS_CYCLES = 0.12
# Working copies are resampled linearly: their blur is the same for both sides of every correlation, and a
# cubic spline's prefilter would take half the alignment's time at 1k.
_WORKING_ORDER = 1
_TAPER_FRACTION = 0.1         # cosine edge taper, per side, as a fraction of the image size
_MAX_SHIFT_FRACTION = 0.25    # shifts beyond this fraction of the image are not searched
_AXIS_PAIR_MIN_DEG = 10.0     # tilts paired with the zero tilt for the axis: enough parallax ...
_AXIS_PAIR_MAX_DEG = 35.0     # ... while a stretched patch still correlates
_AXIS_PATCH_PX = 48
_AXIS_MIN_PEAK_SNR = 4.0      # patch correlation peak over the correlation map's spread
_AXIS_MIN_PATCHES = 20


class TiltAlignmentSettings(BaseModel):
    """How to align; shared by the file-based and the array-based entry points."""

    model_config = ConfigDict(extra="forbid")

    pixel_size_a: float = Field(gt=0, le=100, description="Pixel size of the tilt images (Å/px).")
    tilt_axis_deg: float = Field(85.0, ge=-180, le=180, description="Nominal tilt axis, counter-clockwise "
                                                                    "from the image y axis (degrees).")
    binning: int = Field(1, ge=1, le=32, description="Binning of the aligned stack written out.")
    refine_tilt_axis: bool = True
    tilt_axis_search_deg: float = Field(10.0, ge=0, le=45, description="Accept a refined tilt axis up to "
                                                                       "± this from the nominal (degrees).")
    projection_matching_iterations: int = Field(2, ge=0, le=10)
    thickness_nm: float = Field(150.0, gt=0, le=5000, description="Sample thickness for the projection-"
                                                                  "matching reconstruction (nm).")
    alignment_size_px: int = Field(512, ge=64, le=4096, description="Longest side of the working copy the "
                                                                    "shifts are measured on.")
    dark_fraction: float = Field(0.25, ge=0, lt=1, description="Exclude a tilt whose mean is below this "
                                                               "fraction of the series median (beam blocked).")
    blank_fraction: float = Field(0.25, ge=0, lt=1, description="Exclude a tilt whose standard deviation is "
                                                                "below this fraction of the series median.")
    fft_workers: int = Field(1, ge=1, le=256)


class TiltAlignmentInputs(TiltAlignmentSettings):
    """One tilt series: the motion-corrected tilt images (MRC) with their nominal angles and the outputs."""

    micrograph_paths: list[str] = Field(min_length=3, description="Motion-corrected tilt images (MRC).")
    tilt_angles_deg: list[float] = Field(min_length=3, description="Nominal tilt angle of each image.")
    aligned_stack_path: str = Field(min_length=1, description="Aligned, binned stack to write (MRC).")

    @model_validator(mode="after")
    def _one_angle_per_image(self) -> "TiltAlignmentInputs":
        if len(self.tilt_angles_deg) != len(self.micrograph_paths):
            raise ValueError(f"{len(self.micrograph_paths)} micrographs but {len(self.tilt_angles_deg)} "
                             f"tilt angles")
        return self


class TiltAlignment(BaseModel):
    """One tilt's outcome, in input order."""

    nominal_tilt_angle_deg: float
    refined_tilt_angle_deg: float
    shift_px: tuple[float, float] = Field(description="(dx, dy) of the recorded image from the ideal "
                                                      "projection, input pixels.")
    residual_px: float | None = Field(description="Disagreement with the re-projection after alignment "
                                                  "(input pixels); None if excluded or not measured.")
    excluded: bool = False
    exclusion_reason: str | None = None
    stack_index: int | None = Field(description="Slice of the aligned stack (None if excluded).")
    micrograph_path: str | None = None


class TiltAlignmentResult(BaseModel):
    """The aligned tilt series: per-tilt outcome, refined axis, and where the aligned stack went."""

    tilts: list[TiltAlignment]
    nominal_tilt_axis_deg: float
    tilt_axis_deg: float = Field(description="Refined tilt axis (equals the nominal one if not refined).")
    aligned_tilt_angles_deg: list[float] = Field(description="Tilt angle of each aligned-stack slice.")
    aligned_pixel_size_a: float
    mean_residual_px: float | None
    aligned_stack_path: str | None = None


def align_tilt_series(inputs: TiltAlignmentInputs) -> TiltAlignmentResult:
    """Read the tilt images, align them and write the aligned stack (pixel size × binning in its header).

    Each image is binned as it is read, so a series of 4k images needs only the binned stack in memory;
    shifts and residuals are reported in input pixels all the same. A tilt image that cannot be read, or
    differs in size from the rest, is excluded with the file's problem as the reason.
    """
    binning = inputs.binning
    stack, file_problems = read_tilt_images(inputs.micrograph_paths, binning)
    settings = TiltAlignmentSettings(**inputs.model_dump(include=set(TiltAlignmentSettings.model_fields)))
    settings = settings.model_copy(update={"pixel_size_a": inputs.pixel_size_a * binning, "binning": 1})
    result, aligned = align_tilt_stack(stack, inputs.tilt_angles_deg, settings)
    write_mrc(inputs.aligned_stack_path, aligned, result.aligned_pixel_size_a, is_stack=True)
    tilts = []
    for tilt, path, problem in zip(result.tilts, inputs.micrograph_paths, file_problems):
        update = {"micrograph_path": path, "shift_px": (tilt.shift_px[0] * binning, tilt.shift_px[1] * binning),
                  "residual_px": None if tilt.residual_px is None else tilt.residual_px * binning}
        if problem is not None:
            update["exclusion_reason"] = problem
        tilts.append(tilt.model_copy(update=update))
    mean_residual = None if result.mean_residual_px is None else result.mean_residual_px * binning
    return result.model_copy(update={"tilts": tilts, "mean_residual_px": mean_residual,
                                     "aligned_stack_path": inputs.aligned_stack_path})


def apply_alignment(result: TiltAlignmentResult, micrograph_paths: Sequence[str | Path], binning: int,
                    aligned_stack_path: str | Path) -> str:
    """Write other images of the same tilts (their even- or odd-frame sums, one per tilt in `result.tilts`'
    order) as an aligned stack moved exactly as the aligned stack was: the same tilts, order, axis and shifts."""
    kept = sorted((tilt.stack_index, i) for i, tilt in enumerate(result.tilts) if tilt.stack_index is not None)
    images, problems = read_tilt_images([str(micrograph_paths[i]) for _, i in kept], binning)
    for problem in problems:
        if problem is not None:
            raise ImageFileError(aligned_stack_path, f"cannot align the series' other images: {problem}")
    aligned = np.stack([to_axis_frame(image, result.tilt_axis_deg, np.asarray(result.tilts[i].shift_px) / binning)
                        for image, (_, i) in zip(images, kept)])
    write_mrc(aligned_stack_path, aligned, result.aligned_pixel_size_a, is_stack=True)
    return str(aligned_stack_path)


def read_tilt_images(paths: Sequence[str], binning: int) -> tuple[np.ndarray, list[str | None]]:
    """The tilt images as one binned float32 stack, and each file's problem (None if it read cleanly).

    A file that cannot be read or is not a 2D image the size of the first readable one becomes a NaN
    image, which the exclusion step then drops; if no file reads, the first problem is raised.
    """
    images: list[np.ndarray | None] = []
    problems: list[str | None] = []
    shape: tuple[int, ...] = ()
    first_error: ImageFileError | None = None
    for path in paths:
        try:
            data = read_mrc(path, mmap=False)
            if data.ndim == 3 and data.shape[0] == 1:
                data = data[0]
            if data.ndim != 2:
                raise ImageFileError(path, f"expected a 2D tilt image, got an array of shape {data.shape}")
            if shape and data.shape != shape:
                raise ImageFileError(path, f"tilt image is {data.shape[1]}×{data.shape[0]} px, the series' "
                                           f"first is {shape[1]}×{shape[0]} px")
        except ImageFileError as exc:
            first_error = first_error or exc
            images.append(None)
            problems.append(str(exc))
            continue
        shape = data.shape
        image = np.asarray(data, dtype=np.float32)
        images.append(image if binning == 1 else transform_image(image, binning=binning))
        problems.append(None)
    if not shape:
        raise first_error or ValueError("no tilt images given")
    binned_shape = next(image.shape for image in images if image is not None)
    return (np.stack([np.full(binned_shape, np.nan, np.float32) if image is None else image for image in images]),
            problems)


def align_tilt_stack(stack: np.ndarray, tilt_angles_deg: Sequence[float], settings: TiltAlignmentSettings
                     ) -> tuple[TiltAlignmentResult, np.ndarray]:
    """Align a `(n_tilts, ny, nx)` stack; returns the result and the aligned, binned stack of included tilts."""
    data = np.asarray(stack, dtype=np.float32)
    angles = np.asarray(tilt_angles_deg, dtype=np.float64)
    if data.ndim != 3 or data.shape[0] != angles.size:
        raise ValueError(f"expected one (ny, nx) image per tilt angle, got stack {data.shape} and "
                         f"{angles.size} angles")
    reasons = exclusion_reasons(data, settings.dark_fraction, settings.blank_fraction)
    included = np.array([reason is None for reason in reasons])
    if included.sum() < 3:
        raise ValueError(f"only {int(included.sum())} usable tilts: {[r for r in reasons if r]}")

    factor = max(1, math.ceil(max(data.shape[1:]) / settings.alignment_size_px))
    order = [int(i) for i in np.argsort(angles) if included[i]]
    tilt_axis_deg = settings.tilt_axis_deg
    shifts = coarse_shifts(data, angles, order, tilt_axis_deg, factor, settings.fft_workers)
    if settings.refine_tilt_axis and settings.tilt_axis_search_deg > 0:
        refined = refine_tilt_axis(data[order], angles[order], shifts[order], tilt_axis_deg, factor)
        if abs(refined - tilt_axis_deg) <= settings.tilt_axis_search_deg:
            tilt_axis_deg = refined
        shifts = coarse_shifts(data, angles, order, tilt_axis_deg, factor, settings.fft_workers)
    residuals = np.full(angles.size, np.nan)
    thickness_px = max(8, round(settings.thickness_nm * 10.0 / (settings.pixel_size_a * factor)))
    for _ in range(settings.projection_matching_iterations):
        corrections = projection_matching(data, angles, order, shifts, tilt_axis_deg, factor, thickness_px,
                                          settings.fft_workers)
        shifts[order] += corrections
        residuals[order] = np.hypot(corrections[:, 0], corrections[:, 1])

    aligned = np.stack([to_axis_frame(data[i], tilt_axis_deg, shifts[i], binning=settings.binning)
                        for i in order])
    stack_index = {tilt: position for position, tilt in enumerate(order)}
    tilts = [TiltAlignment(nominal_tilt_angle_deg=float(angles[i]), refined_tilt_angle_deg=float(angles[i]),
                           shift_px=(float(shifts[i, 0]), float(shifts[i, 1])),
                           residual_px=None if np.isnan(residuals[i]) else float(residuals[i]),
                           excluded=reasons[i] is not None, exclusion_reason=reasons[i],
                           stack_index=stack_index.get(i))
             for i in range(angles.size)]
    measured = residuals[~np.isnan(residuals)]
    result = TiltAlignmentResult(
        tilts=tilts, nominal_tilt_axis_deg=settings.tilt_axis_deg, tilt_axis_deg=float(tilt_axis_deg),
        aligned_tilt_angles_deg=[float(angles[i]) for i in order],
        aligned_pixel_size_a=settings.pixel_size_a * settings.binning,
        mean_residual_px=float(measured.mean()) if measured.size else None)
    return result, aligned


def exclusion_reasons(stack: np.ndarray, dark_fraction: float, blank_fraction: float) -> list[str | None]:
    """Why each tilt cannot be used (None if it can): not finite, dark (beam blocked), or blank (no contrast).

    Compared with the series median, so a series that is dim overall still aligns; thicker ice at high tilt
    dims a tilt by tens of percent, far above the default 25 % limit.
    """
    finite = np.array([bool(np.isfinite(image).all()) for image in stack])
    means = np.array([float(image.mean()) if ok else np.nan for image, ok in zip(stack, finite)])
    spreads = np.array([float(image.std()) if ok else np.nan for image, ok in zip(stack, finite)])
    median_mean = float(np.median(means[finite])) if finite.any() else 0.0
    median_spread = float(np.median(spreads[finite])) if finite.any() else 0.0
    reasons: list[str | None] = []
    for ok, mean, spread in zip(finite, means, spreads):
        if not ok:
            reasons.append("contains NaN or infinite values")
        elif median_mean > 0 and mean < dark_fraction * median_mean:
            reasons.append(f"dark: mean {mean:.4g} is {100 * mean / median_mean:.0f}% of the series median "
                           f"{median_mean:.4g}")
        elif spread < blank_fraction * median_spread:
            reasons.append(f"blank: standard deviation {spread:.4g} is {100 * spread / median_spread:.0f}% of "
                           f"the series median {median_spread:.4g}")
        else:
            reasons.append(None)
    return reasons


def _band_pass(shape: tuple[int, int]) -> np.ndarray:
    """Gaussian band-pass on an rfft2 grid (cycles per pixel)."""
    fy = scipy.fft.fftfreq(shape[0])[:, None]
    fx = scipy.fft.rfftfreq(shape[1])[None, :]
    f2 = fx * fx + fy * fy
    return ((1.0 - np.exp(-f2 / (2 * _HIGH_PASS_CYCLES**2))) * np.exp(-f2 / (2 * _LOW_PASS_CYCLES**2))
            ).astype(np.float32)


def _taper(shape: tuple[int, int]) -> np.ndarray:
    """Separable cosine edge taper: 1 in the middle, falling to 0 over `_TAPER_FRACTION` of each side."""
    def ramp(n: int) -> np.ndarray:
        width = max(1, int(n * _TAPER_FRACTION))
        window = np.ones(n)
        edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(width) + 0.5) / width)
        window[:width], window[n - width:] = edge, edge[::-1]
        return window
    return np.outer(ramp(shape[0]), ramp(shape[1])).astype(np.float32)


class _Correlator:
    """Band-passed, tapered cross-correlation with a sub-pixel peak, for one working image size."""

    def __init__(self, shape: tuple[int, int], workers: int) -> None:
        self.shape = shape
        self.band = _band_pass(shape)
        self.window = _taper(shape)
        self.workers = workers

    def spectrum(self, image: np.ndarray) -> np.ndarray:
        prepared = (image - image.mean()) * self.window
        return scipy.fft.rfft2(prepared, workers=self.workers) * self.band

    def peak(self, moving: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
        """(dx, dy) by which `moving` is displaced from `reference`, searched up to a quarter of the size."""
        reach = max(2, int(min(self.shape) * _MAX_SHIFT_FRACTION))
        dx, dy, _ = self.peak_with_strength(moving, reference, reach)
        return dx, dy

    def peak_with_strength(self, moving: np.ndarray, reference: np.ndarray, reach: int
                           ) -> tuple[float, float, float]:
        """(dx, dy, strength) within ± `reach` px: sub-pixel (parabola through the peak); strength is the
        peak's height over the correlation map's standard deviation (a few = noise)."""
        correlation = scipy.fft.irfft2(self.spectrum(moving) * np.conj(self.spectrum(reference)), s=self.shape,
                                       workers=self.workers)
        correlation = scipy.fft.fftshift(correlation)
        cy, cx = self.shape[0] // 2, self.shape[1] // 2
        window = correlation[cy - reach:cy + reach + 1, cx - reach:cx + reach + 1]
        py, px = np.unravel_index(int(np.argmax(window)), window.shape)
        strength = float((window[py, px] - correlation.mean()) / (correlation.std() + 1e-30))
        return (px - reach + _parabola_vertex(window[py, max(px - 1, 0):px + 2], px),
                py - reach + _parabola_vertex(window[max(py - 1, 0):py + 2, px], py), strength)


def _parabola_vertex(values: np.ndarray, index: int) -> float:
    """Sub-pixel offset of a maximum from three samples around it (0 at an edge of the search window)."""
    if values.size != 3 or index == 0:
        return 0.0
    left, centre, right = (float(v) for v in values)
    curvature = left - 2.0 * centre + right
    return 0.0 if curvature >= 0 else float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


def _axis_to_image(delta_axis: Sequence[float], tilt_axis_deg: float) -> np.ndarray:
    """A displacement measured in the axis frame, as (dx, dy) in the recorded image (rotate by +α)."""
    alpha = np.deg2rad(tilt_axis_deg)
    dx, dy = delta_axis
    return np.array([np.cos(alpha) * dx - np.sin(alpha) * dy, np.sin(alpha) * dx + np.cos(alpha) * dy])


def refine_tilt_axis(stack: np.ndarray, angles_deg: np.ndarray, shifts_px: np.ndarray, nominal_deg: float,
                     factor: int) -> float:
    """Tilt axis (degrees) from the direction in which patches move between the zero tilt and its
    moderately tilted neighbours.

    Tilting about the true axis moves every feature across the axis only: by x (cos θ - 1) + z sin θ,
    which differs from patch to patch with its position and height, and never along the axis. Seen in a
    frame whose axis is off by δ, each displacement D picks up D tan δ along the "axis". So, over many
    patches of tilts 10-35° (stretched by the cosine ratio, so they still correlate), the slope of the
    along-axis against the across-axis displacement is tan δ, one common intercept per tilt absorbing its
    remaining shift. The parallax of a thick specimen, which biases methods that compare whole views
    (common lines, re-projection agreement), here only spreads the displacements and sharpens the slope.
    Two rounds, the second in the frame of the first's answer.
    """
    radians = np.deg2rad(angles_deg)
    start = int(np.argmin(np.abs(angles_deg)))
    pairs = [k for k in range(angles_deg.size)
             if _AXIS_PAIR_MIN_DEG <= abs(angles_deg[k] - angles_deg[start]) <= _AXIS_PAIR_MAX_DEG]
    if not pairs:
        return nominal_deg
    axis_deg = nominal_deg
    for _ in range(2):
        views = {k: to_axis_frame(stack[k], axis_deg, shifts_px[k], binning=factor, order=_WORKING_ORDER)
                 for k in [start, *pairs]}
        rows: list[tuple[int, float, float]] = []
        for pair_index, k in enumerate(pairs):
            stretch = math.cos(radians[start]) / math.cos(radians[k])
            for across, along in _displacements(views[start], views[k], stretch):
                rows.append((pair_index, across, along))
        slope = _robust_common_slope(np.array(rows), len(pairs))
        if slope is None:
            return nominal_deg
        axis_deg += math.degrees(math.atan(slope))
    return axis_deg


def _displacements(reference: np.ndarray, moving: np.ndarray, stretch: float) -> list[tuple[float, float]]:
    """(across, along) displacement of each patch of `reference` in `moving`, both axis-frame views; `moving`
    is sampled stretched across the axis about each patch's predicted position. Patches whose peak sits
    at the edge of the search, or is weak, are left out."""
    ny, nx = reference.shape
    size = _AXIS_PATCH_PX
    reach = size // 4
    correlator = _Correlator((size, size), workers=1)
    half_u = (nx - 1) / 2.0 - size / 2.0 * stretch - reach
    half_v = (ny - 1) / 2.0 - size / 2.0 - reach
    found = []
    for v in np.arange(-half_v, half_v + 1e-9, size / 2.0):
        for u in np.arange(-half_u / stretch, half_u / stretch + 1e-9, size / 2.0):
            predicted_u = u / stretch
            patch = _patch(reference, u, v, size, 1.0)
            if patch.std() == 0:
                continue
            du, dv, strength = correlator.peak_with_strength(_patch(moving, predicted_u, v, size, stretch),
                                                             patch, reach)
            if strength < _AXIS_MIN_PEAK_SNR or max(abs(du), abs(dv)) >= reach - 1:
                continue
            found.append((predicted_u - u + du / stretch, dv))
    return found


def _patch(image: np.ndarray, u: float, v: float, size: int, stretch: float) -> np.ndarray:
    """A `size`² patch around (u, v) (from the image centre), sampled `stretch`× expanded across the axis."""
    ny, nx = image.shape
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    rows = v + (ny - 1) / 2.0 + offsets
    columns = u + (nx - 1) / 2.0 + offsets / stretch
    grid_rows, grid_columns = np.meshgrid(rows, columns, indexing="ij")
    return map_coordinates(image, [grid_rows, grid_columns], order=1, mode="nearest").astype(np.float32)


def _robust_common_slope(rows: np.ndarray, n_pairs: int) -> float | None:
    """Least-squares slope t of along = c_pair + t · across over all patches, refitted without points
    beyond 3 robust standard deviations; None if too few points."""
    if rows.shape[0] < _AXIS_MIN_PATCHES:
        return None
    keep = np.ones(rows.shape[0], dtype=bool)
    slope = 0.0
    for _ in range(3):
        design = np.zeros((int(keep.sum()), n_pairs + 1))
        design[np.arange(design.shape[0]), rows[keep, 0].astype(np.intp)] = 1.0
        design[:, -1] = rows[keep, 1]
        solution, *_ = np.linalg.lstsq(design, rows[keep, 2], rcond=None)
        slope = float(solution[-1])
        full = np.zeros((rows.shape[0], n_pairs + 1))
        full[np.arange(rows.shape[0]), rows[:, 0].astype(np.intp)] = 1.0
        full[:, -1] = rows[:, 1]
        residual = rows[:, 2] - full @ solution
        spread = 1.4826 * float(np.median(np.abs(residual[keep]))) + 1e-6
        keep = np.abs(residual) <= 3.0 * spread
        if keep.sum() < _AXIS_MIN_PATCHES:
            return None
    return slope


def coarse_shifts(stack: np.ndarray, angles_deg: np.ndarray, order: Sequence[int], tilt_axis_deg: float,
                  factor: int, workers: int) -> np.ndarray:
    """Shifts (dx, dy) in input pixels by neighbour cross-correlation, chained outwards from zero tilt.

    `order` lists the included tilts sorted by angle; excluded tilts keep (0, 0). Each tilt is stretched
    perpendicular to the axis by cos(θ_neighbour)/cos(θ) so that specimen features at the axis height
    line up with the neighbour's.
    """
    shifts = np.zeros((angles_deg.size, 2))
    shape = (stack.shape[1] // factor, stack.shape[2] // factor)
    correlator = _Correlator(shape, workers)
    start = int(np.argmin(np.abs(angles_deg[list(order)])))
    for direction in (1, -1):
        chain = order[start::direction] if direction == 1 else order[start::-1]
        for reference, moving in zip(chain[:-1], chain[1:]):
            stretch = math.cos(math.radians(angles_deg[reference])) / math.cos(math.radians(angles_deg[moving]))
            fixed = to_axis_frame(stack[reference], tilt_axis_deg, shifts[reference], binning=factor,
                                  order=_WORKING_ORDER)
            moved = to_axis_frame(stack[moving], tilt_axis_deg, shifts[reference], binning=factor,
                                  stretch_x=stretch, order=_WORKING_ORDER)
            dx, dy = correlator.peak(moved, fixed)
            shifts[moving] = shifts[reference] + _axis_to_image((dx * factor / stretch, dy * factor),
                                                                tilt_axis_deg)
    return shifts


def _aligned_working_stack(stack: np.ndarray, order: Sequence[int], shifts: np.ndarray, tilt_axis_deg: float,
                           factor: int) -> np.ndarray:
    """The tilts in `order`, aligned into the axis frame at the working binning, each with zero mean."""
    aligned = np.stack([to_axis_frame(stack[i], tilt_axis_deg, shifts[i], binning=factor, order=_WORKING_ORDER)
                        for i in order])
    return aligned - aligned.mean(axis=(1, 2), keepdims=True)


def leave_one_out_reprojections(aligned: np.ndarray, angles_deg: np.ndarray, thickness_px: int,
                                workers: int) -> np.ndarray:
    """Re-projection of a quick reconstruction at each tilt, without that tilt's own contribution.

    Reconstruction is linear, so leaving tilt k out is subtracting what its own back-projection
    re-projects to along its own direction: its filtered image times the length of each ray inside the
    reconstructed box (the box's projection), no second reconstruction needed. Using the slab thickness
    / cos θ for every ray instead is wrong near the edges at high tilt, where rays leave through the sides.
    Without this, each tilt would largely match itself.
    """
    filtered = filter_projections(aligned, "sirt", workers=workers)
    weights = tilt_weights(angles_deg)
    reprojections = project_volume(backproject(filtered, angles_deg, thickness_px, weights), angles_deg)
    ray_lengths = project_volume(np.ones((thickness_px, 1, aligned.shape[2]), np.float32), angles_deg)
    return reprojections - (weights[:, None, None] * ray_lengths).astype(np.float32) * filtered


def projection_matching(stack: np.ndarray, angles_deg: np.ndarray, order: Sequence[int], shifts: np.ndarray,
                        tilt_axis_deg: float, factor: int, thickness_px: int, workers: int) -> np.ndarray:
    """Corrections (dx, dy) in input pixels for the tilts in `order`, from cross-correlating each aligned
    tilt with its leave-one-out re-projection."""
    aligned = _aligned_working_stack(stack, order, shifts, tilt_axis_deg, factor)
    reprojections = leave_one_out_reprojections(aligned, angles_deg[list(order)], thickness_px, workers)
    correlator = _Correlator(aligned.shape[1:], workers)
    corrections = np.zeros((len(order), 2))
    for k, (image, reference) in enumerate(zip(aligned, reprojections)):
        dx, dy = correlator.peak(image, reference)
        corrections[k] = _axis_to_image((dx * factor, dy * factor), tilt_axis_deg)
    return corrections
