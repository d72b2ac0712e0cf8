"""The tomogram stage: one complete tilt series in, aligned stack, tomogram, images, rows and Relion 5 files out.

The built-in path aligns (engines/tomo_align) and reconstructs (engines/tomo_reconstruct) on this worker;
`aretomo2` and `imod` run the program where the recipe places it (pipeline/tomo_external). A series that
cannot be aligned (too few usable tilts, unreadable images, a program failing) is recorded as a failed step
and skipped by run_or_skip, like a particle batch; the session goes on.

With `half_tomograms` (built-in path), the tilts' even- and odd-frame sums are moved by the same alignment and
reconstructed with the same settings into two half tomograms (Relion 5's split tomograms, the pair noise2noise
denoising trains on); their noise is independent, their signal the tomogram's.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import SessionConfig
from ..engines.motion import half_sum_paths
from ..engines.tomo_align import TiltAlignmentInputs, TiltAlignmentResult, align_tilt_series, apply_alignment
from ..engines.tomo_images import alignment_plot, tilt_series_montage, tilt_series_movie, tomogram_views
from ..engines.tomo_reconstruct import TomogramInputs, TomogramResult, reconstruct_tomogram
from ..io import read_mrc
from ..relion_project import ALIGNER_KINDS, OpticsGroup, RelionProject, TiltAlignmentValues
from ..recipes.stages import TomogramParams
from .batch_outcome import run_or_skip
from .stages import available_cores
from .stores import relion_project, results_store
from .tomo_external import program_tomogram

log = logging.getLogger(__name__)


def aligner_of(tool: str, params: TomogramParams) -> str:
    """The aligner a tomogram tool is recorded as in the Relion project (AlignTiltSeries job type)."""
    if tool == "imod":
        return "imod_patchtrack" if params.imod_alignment == "patch" else "imod_fiducial"
    return {"builtin": "builtin", "aretomo2": "aretomo"}[tool]


def make_tomogram(config: SessionConfig, params: TomogramParams, tool: str, runs_on: str | dict[str, Any],
                  item: dict[str, Any]) -> dict[str, Any]:
    """Align and reconstruct the item's tilt series, record it; `skipped` with the reason if it fails."""
    series = item["tilt_series"]
    aligner = aligner_of(tool, params)

    def work() -> dict[str, Any]:
        project = relion_project(item["relion_dir"], OpticsGroup.from_session(config), item["relion_dialect"],
                                 "tomography")
        halves = None
        if tool == "builtin":
            alignment = _align(config, params, project, series, aligner)
            tomogram = _reconstruct(config, params, series, alignment, alignment.aligned_stack_path,
                                    project.tomogram_path(series["name"]))
            if params.half_tomograms:
                halves = _half_tomograms(config, params, project, series, alignment)
        else:
            alignment, tomogram = program_tomogram(config, params, project, series, tool, ALIGNER_KINDS[aligner],
                                                   runs_on)
            if params.half_tomograms:
                log.warning("%s: half tomograms are reconstructed on the built-in path only, not with %s",
                            series["name"], tool)
        images = _images(alignment, tomogram, Path(tomogram.tomogram_path).parent / "images" / series["name"])
        # the Relion files first: a results row stands for a series whose files are all written
        _write_relion_files(project, item, series, alignment, tomogram, config.motion_corrected_pixel_size_a,
                            aligner, halves)
        _record(item, series, alignment, tomogram, images)
        return item | {"tomogram": {"path": tomogram.tomogram_path, "shape": list(tomogram.shape),
                                    "tilt_axis_deg": alignment.tilt_axis_deg,
                                    "mean_residual_px": alignment.mean_residual_px,
                                    **({"half_paths": halves} if halves else {})}}

    return run_or_skip(item, f"tomogram {series['name']}", work)


def _align(config: SessionConfig, params: TomogramParams, project: RelionProject, series: dict[str, Any],
           aligner: str) -> TiltAlignmentResult:
    job = project.job(ALIGNER_KINDS[aligner])
    tilts = series["tilts"]
    return align_tilt_series(TiltAlignmentInputs(
        micrograph_paths=[t["micrograph"] for t in tilts], tilt_angles_deg=[t["tilt_angle_deg"] for t in tilts],
        aligned_stack_path=str(job.path / "stacks" / f"{series['name']}_aligned.mrc"),
        pixel_size_a=config.motion_corrected_pixel_size_a, tilt_axis_deg=series["tilt_axis_deg"],
        binning=config.tomogram_binning, tilt_axis_search_deg=params.tilt_axis_search_deg,
        projection_matching_iterations=params.projection_matching_iterations, thickness_nm=config.thickness_nm,
        alignment_size_px=params.alignment_size_px, fft_workers=available_cores()))


def _reconstruct(config: SessionConfig, params: TomogramParams, series: dict[str, Any],
                 alignment: TiltAlignmentResult, stack_path: str, tomogram_path: Path) -> TomogramResult:
    """Reconstruct the aligned stack at `stack_path` (the series' tilts as `alignment` placed them)."""
    kept = [(tilt, aligned) for tilt, aligned in zip(series["tilts"], alignment.tilts) if not aligned.excluded]
    kept.sort(key=lambda pair: pair[1].stack_index)
    defocus = [(tilt["defocus_u_a"] + tilt["defocus_v_a"]) / 2 for tilt, _ in kept]
    return reconstruct_tomogram(TomogramInputs(
        aligned_stack_path=stack_path, tilt_angles_deg=alignment.aligned_tilt_angles_deg,
        tomogram_path=str(tomogram_path), pixel_size_a=alignment.aligned_pixel_size_a,
        thickness_nm=config.thickness_nm, weighting=params.weighting, sirt_iterations=params.sirt_iterations,
        defocus_a=defocus if params.ctf_correction else None, voltage_kv=config.voltage_kv, cs_mm=config.cs_mm,
        amplitude_contrast=config.amplitude_contrast, fft_workers=available_cores()))


def _half_tomograms(config: SessionConfig, params: TomogramParams, project: RelionProject, series: dict[str, Any],
                    alignment: TiltAlignmentResult) -> list[str] | None:
    """The two half tomograms from the tilts' even- and odd-frame sums, or None (logged) when a tilt has none
    (motion correction ran without stages.motioncorr.params.even_odd_sums)."""
    sums = [half_sum_paths(tilt["micrograph"]) for tilt in series["tilts"]]
    missing = [str(path) for pair in sums for path in pair if not path.is_file()]
    if missing:
        log.warning("%s: no half tomograms: %d even/odd tilt sums missing (e.g. %s); set "
                    "stages.motioncorr.params.even_odd_sums", series["name"], len(missing), missing[0])
        return None
    stack = Path(alignment.aligned_stack_path)
    written = []
    for half, tomogram_path in enumerate(project.half_tomogram_paths(series["name"])):
        half_stack = apply_alignment(alignment, [pair[half] for pair in sums], config.tomogram_binning,
                                     stack.with_name(f"{stack.stem}_half{half + 1}.mrc"))
        written.append(_reconstruct(config, params, series, alignment, half_stack, tomogram_path).tomogram_path)
    return written


def _images(alignment: TiltAlignmentResult, tomogram: TomogramResult, stem: Path) -> dict[str, str]:
    """What a person looks at: montage and movie of the aligned tilts, the alignment plot, the tomogram's
    central slice and side projections (keys as the results store names them)."""
    stack = read_mrc(alignment.aligned_stack_path, mmap=False)
    angles = alignment.aligned_tilt_angles_deg
    xy, xz, _yz = tomogram_views(read_mrc(tomogram.tomogram_path, mmap=False), f"{stem}_xy.jpg", f"{stem}_xz.jpg",
                                f"{stem}_yz.jpg")
    by_angle = sorted(alignment.tilts, key=lambda t: t.nominal_tilt_angle_deg)  # lines join neighbouring tilts
    plot = alignment_plot([t.nominal_tilt_angle_deg for t in by_angle], [t.shift_px for t in by_angle],
                          [t.residual_px for t in by_angle], f"{stem}_alignment.png",
                          excluded=[t.excluded for t in by_angle])
    tilt_series_montage(stack, angles, f"{stem}_montage.jpg")  # written beside the others; ISPyB has no
    # column for the montage or the YZ view
    return {"central_slice": str(xy), "projection_xz": str(xz), "alignment_plot": str(plot),
            "movie": str(tilt_series_movie(stack, angles, f"{stem}_tilts.gif"))}


def _record(item: dict[str, Any], series: dict[str, Any], alignment: TiltAlignmentResult, tomogram: TomogramResult,
            images: dict[str, str]) -> None:
    nz, ny, nx = tomogram.shape
    residuals = [t.residual_px for t in alignment.tilts if t.residual_px is not None]
    mean = alignment.mean_residual_px
    sd = (sum((r - mean) ** 2 for r in residuals) / len(residuals)) ** 0.5 if residuals and mean is not None else None
    store = results_store(item["results_conn_id"], item["processing_path"])
    store.record_tomogram(item["processing_job_id"], series["tilt_series_id"], {
        "volume": tomogram.tomogram_path, "stack": alignment.aligned_stack_path, "size_x_px": nx, "size_y_px": ny,
        "size_z_px": nz, "pixel_size_a": tomogram.pixel_size_a, "tilt_axis_deg": alignment.tilt_axis_deg,
        "mean_residual_px": mean, "residual_sd_px": sd, **images}, [
        {"movie_id": tilt["movie_id"], "refined_tilt_angle_deg": aligned.refined_tilt_angle_deg,
         "tilt_axis_deg": alignment.tilt_axis_deg, "shift_x_px": aligned.shift_px[0],
         "shift_y_px": aligned.shift_px[1], "residual_px": aligned.residual_px, "excluded": aligned.excluded,
         "exclusion_reason": aligned.exclusion_reason}
        for tilt, aligned in zip(series["tilts"], alignment.tilts)])


def _write_relion_files(project: RelionProject, item: dict[str, Any], series: dict[str, Any],
                        alignment: TiltAlignmentResult, tomogram: TomogramResult, input_pixel_a: float,
                        aligner: str, halves: list[str] | None = None) -> None:
    """aligned_tilt_series.star (Relion's rotations, shifts in Å) and the tomogram (with its halves, if any) in
    tomograms.star.

    Shifts are in the tilt images' pixels (`input_pixel_a`, the motion-corrected pixel size)."""
    watch_dir = Path(item["watch_dir"])
    project.add_aligned_tilt_series(series["name"], [
        TiltAlignmentValues(movie=str(watch_dir / tilt["movie"]), y_tilt_deg=aligned.refined_tilt_angle_deg,
                            z_rot_deg=alignment.tilt_axis_deg, x_shift_a=aligned.shift_px[0] * input_pixel_a,
                            y_shift_a=aligned.shift_px[1] * input_pixel_a)
        for tilt, aligned in zip(series["tilts"], alignment.tilts) if not aligned.excluded],
        aligner=aligner)
    nz, ny, nx = tomogram.shape
    project.add_tomogram(series["name"], tomogram.tomogram_path, tomogram.pixel_size_a / input_pixel_a, [nx, ny, nz],
                         halves)
