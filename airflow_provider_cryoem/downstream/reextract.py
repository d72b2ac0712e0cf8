"""Class re-extraction before refinement (cryoem-services' ExtractClass): the particles of the chosen 3D class
cut again from the motion-corrected micrographs at the micrograph's pixel size, recentred, and the class map
rescaled to match, so the refinement is no longer held to the binned particles' Nyquist.

What Relion's re-extraction with recentring does (`relion_preprocess --reextract_data_star --recenter`):
the particle's centre in the micrograph is its box centre minus its refined origin, so each box moves by
the origin rounded to whole micrograph pixels (coordinate − round(rlnOriginXAngst / micrograph pixel)) and
only the sub-pixel rest stays as the particle's origin. Every other column of the classification's rows is
kept: each particle's CTF (defocus, astigmatism, phase shift, B, scale), its angles and class. The boxes
are cut with the built-in extraction engine (engines/extract.py: boxes centred at index box/2, optional
Fourier cropping, Relion's background plane + normalisation, contrast inversion; a box crossing the
micrograph's edge is completed by mirroring, so no particle of the class is lost to recentring), and
phase-flipped first when the classified particles were (rlnCtfDataArePhaseFlipped).

The job is a Relion Extract job (`relion.extract.reextract`, ccpem-pipeliner's and cryoem-services' label
for a re-extraction; Relion 3.1 type 5) with do_reextract/do_recenter in its job.star; its particles.star
and the rescaled reference (`relion_image_handler --rescale_angpix --new_box`, the command in note.txt)
are its outputs, next to per-micrograph stacks under Movies/ as the first extraction writes them.
"""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, model_validator

from ..engines.extract import cut_boxes, normalise_boxes, phase_flip
from ..engines.picking import fourier_crop, read_micrograph
from ..execution import CommandSpec, Execute, run_output
from ..io import read_mrc_shape, read_star, write_mrc
from ..io.star import write_star
from ..relion_project import NodeType, RelionJob, RelionProject

REFERENCE_NAME = "refinement_reference_class{:03d}.mrc"
# Relion 3.1 job numbers its pipeline jobs by folder: a job under MotionCorr/jobNNN/ keeps the rest of its path.
_JOB_PATH = re.compile(r"^[A-Za-z0-9]+/job\d{3,}/(.+)$")


class ReextractGeometry(BaseModel):
    """The boxes of a re-extraction: `cut_box_px` micrograph pixels, Fourier-cropped to `box_px`."""

    micrograph_pixel_size_a: float = Field(gt=0)
    cut_box_px: int = Field(ge=16, le=8192)
    box_px: int = Field(ge=16, le=8192)

    @model_validator(mode="after")
    def _even(self) -> "ReextractGeometry":
        if self.cut_box_px % 2 or self.box_px % 2:
            raise ValueError(f"re-extraction boxes must be even, got {self.cut_box_px} → {self.box_px}")
        if self.box_px > self.cut_box_px:
            raise ValueError(f"re-extraction box {self.box_px} px is larger than the box cut "
                             f"({self.cut_box_px} px)")
        return self

    @property
    def pixel_size_a(self) -> float:
        return self.micrograph_pixel_size_a * self.cut_box_px / self.box_px


def reextraction_geometry(micrograph_pixel_size_a: float, extraction_box_px: int,
                          reextract_box_px: int | None) -> ReextractGeometry:
    """Boxes for a re-extraction (Refine3DParams.reextract_box_px's rule).

    None: the session's extraction box at the micrograph's pixel size (no downscaling). Smaller than the
    extraction box: that box Fourier-cropped to `reextract_box_px` (a coarser pixel, still finer than the
    classification's if larger than its box). Larger: a wider field cut at the micrograph's pixel size.
    """
    if reextract_box_px is None or reextract_box_px >= extraction_box_px:
        box = reextract_box_px or extraction_box_px
        return ReextractGeometry(micrograph_pixel_size_a=micrograph_pixel_size_a, cut_box_px=box, box_px=box)
    return ReextractGeometry(micrograph_pixel_size_a=micrograph_pixel_size_a, cut_box_px=extraction_box_px,
                             box_px=reextract_box_px)


class ReextractSettings(BaseModel):
    geometry: ReextractGeometry
    invert_contrast: bool = True
    normalise: bool = True
    bg_radius_px: float | None = Field(None, gt=0, description="In the final box; default round(0.375 × box).")
    threads: int = Field(1, ge=1)
    timeout_s: float | None = Field(None, gt=0)


class ReextractResult(BaseModel):
    job: str = Field(description="The Extract job, e.g. Extract/job012.")
    particles_star: str = Field(description="Project-relative STAR of the re-extracted particles.")
    reference_map: str = Field(description="Project-relative class map at the new pixel size and box.")
    class_number: int
    number_of_particles: int
    dropped_particles: int = Field(description="Particles whose recentred centre left the micrograph.")
    pixel_size_a: float
    box_px: int
    source_pixel_size_a: float
    source_box_px: int
    mean_recentring_a: float = Field(description="Mean distance the boxes moved by recentring.")
    command: str
    duration_s: float


def recentre(coordinates_px: np.ndarray, origins_a: np.ndarray,
             micrograph_pixel_size_a: float) -> tuple[np.ndarray, np.ndarray]:
    """Relion's recentring: (new box centres in micrograph pixels, remaining origins in Å).

    The particle's centre is its box centre rint(coordinate) minus its origin; the new box centre is that,
    rounded to whole pixels, and the new origin the sub-pixel rest, so centre − origin is unchanged.
    """
    shift_px = np.asarray(origins_a, dtype=np.float64) / micrograph_pixel_size_a
    whole_px = np.rint(shift_px)
    centres = np.rint(np.asarray(coordinates_px, dtype=np.float64)) - whole_px
    return centres, (shift_px - whole_px) * micrograph_pixel_size_a


def stack_name(job: RelionJob, micrograph_name: str) -> Path:
    """Where the re-extracted particles of `micrograph_name` go: the micrograph's path below its job folder
    (`MotionCorr/job002/Movies/a/x.mrc` → `<job>/Movies/a/x.mrcs`), as Relion names extraction stacks."""
    match = _JOB_PATH.match(micrograph_name)
    relative = PurePosixPath(match.group(1)) if match else PurePosixPath("Movies") / PurePosixPath(micrograph_name).name
    return job.path / relative.with_suffix(".mrcs")


def reextract_class(project: RelionProject, particles_star: str, reference_map: str, class_number: int,
                    settings: ReextractSettings, alias: str, micrographs_star: str | None = None,
                    execute: Execute = run_output) -> ReextractResult:
    """Re-extract `particles_star` (a 3D class's rows, with origins) into the Extract job `alias` (found
    again on a retry) and rescale `reference_map` to its pixel size and box."""
    started = time.monotonic()
    geometry = settings.geometry
    blocks = read_star(project.absolute(particles_star))
    optics, particles = blocks["optics"].copy(), blocks["particles"].reset_index(drop=True)
    missing = {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnOriginXAngst",
               "rlnOriginYAngst"} - set(particles.columns)
    if missing:
        raise ValueError(f"{particles_star}: re-extraction needs {sorted(missing)} in data_particles "
                         "(a Relion 3.1+ classification's particles)")
    if len(optics) != 1:
        raise ValueError(f"{particles_star}: re-extraction handles one optics group, found {len(optics)}")
    source_pixel_size_a = float(optics["rlnImagePixelSize"].iloc[0])
    source_box_px = int(optics["rlnImageSize"].iloc[0])
    phase_flipped = int(optics.get("rlnCtfDataArePhaseFlipped", pd.Series([0])).iloc[0]) == 1

    job = project.job("reextract", alias=alias, options=_job_options(particles_star, micrographs_star, settings))
    reference = f"{job.name}{REFERENCE_NAME.format(class_number)}"
    rescale = CommandSpec(program="relion_image_handler", cwd=str(project.root), args=[
        "--i", reference_map, "--o", reference, "--angpix", f"{source_pixel_size_a:.6g}",
        "--rescale_angpix", f"{geometry.pixel_size_a:.6g}", "--force_header_angpix", f"{geometry.pixel_size_a:.6g}",
        "--new_box", str(geometry.box_px)], timeout_s=settings.timeout_s, log_path=str(job.path / "run.out"))
    job.add_input(particles_star, NodeType.PARTICLES)
    if micrographs_star:
        job.add_input(micrographs_star, NodeType.MICROGRAPHS)
    job.add_input(reference_map, NodeType.MAP)
    project.add_command(job, rescale.display())
    try:
        centres, origins = recentre(particles[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(),
                                    particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(),
                                    geometry.micrograph_pixel_size_a)
        kept, names = _extract_all(project, job, particles, centres, optics, phase_flipped, settings)
        moved = np.hypot(*(np.rint(particles[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()) - centres).T)
        table = particles.copy()
        table["rlnCoordinateX"], table["rlnCoordinateY"] = centres[:, 0], centres[:, 1]
        table["rlnOriginXAngst"], table["rlnOriginYAngst"] = origins[:, 0], origins[:, 1]
        table["rlnImageName"] = names
        table = table[kept].reset_index(drop=True)
        optics["rlnImagePixelSize"] = geometry.pixel_size_a
        optics["rlnImageSize"] = geometry.box_px
        star = job.path / "particles.star"
        write_star(star, {"optics": optics, "particles": table})
        execute(rescale)
        _check_reference(project.absolute(reference), geometry.box_px)
    except BaseException:
        project.finish_job(job, success=False)
        raise
    job.add_output(star, NodeType.PARTICLES)
    job.add_output(reference, NodeType.MAP)
    project.finish_job(job, success=True)
    return ReextractResult(
        job=job.name.rstrip("/"), particles_star=project.relative(star), reference_map=reference,
        class_number=class_number, number_of_particles=len(table), dropped_particles=int(np.count_nonzero(~kept)),
        pixel_size_a=geometry.pixel_size_a, box_px=geometry.box_px, source_pixel_size_a=source_pixel_size_a,
        source_box_px=source_box_px,
        mean_recentring_a=float(moved[kept].mean() * geometry.micrograph_pixel_size_a) if kept.any() else 0.0,
        command=rescale.display(), duration_s=time.monotonic() - started)


def _job_options(particles_star: str, micrographs_star: str | None,
                 settings: ReextractSettings) -> dict[str, str | int | float]:
    """job.star as Relion's Extract job writes a re-extraction (box sizes in pixels)."""
    geometry = settings.geometry
    return {"do_reextract": "Yes", "fndata_reextract": particles_star, "star_mics": micrographs_star or "",
            "do_recenter": "Yes", "recenter_x": 0, "recenter_y": 0, "recenter_z": 0, "do_reset_offsets": "No",
            "extract_size": geometry.cut_box_px,
            "do_rescale": "Yes" if geometry.box_px != geometry.cut_box_px else "No", "rescale": geometry.box_px, "do_invert": "Yes" if settings.invert_contrast else "No",
            "do_norm": "Yes" if settings.normalise else "No",
            "bg_diameter": round(2 * settings.bg_radius_px) if settings.bg_radius_px else -1}


def _extract_all(project: RelionProject, job: RelionJob, particles: pd.DataFrame, centres: np.ndarray,
                 optics: pd.DataFrame, phase_flipped: bool,
                 settings: ReextractSettings) -> tuple[np.ndarray, list[str]]:
    """Cut every micrograph's particles into its stack; returns (rows kept, rlnImageName per row)."""
    kept = np.zeros(len(particles), dtype=bool)
    names = [""] * len(particles)
    groups = list(particles.groupby("rlnMicrographName", sort=False).indices.items())

    def one(group: tuple[str, np.ndarray]) -> None:
        micrograph, rows = group
        stack = stack_name(job, str(micrograph))
        inside = _extract_micrograph(project.absolute(str(micrograph)), stack, particles.iloc[rows], centres[rows],
                                     optics, phase_flipped, settings)
        relative = project.relative(stack)
        for index, row in enumerate(rows[inside], start=1):
            kept[row] = True
            names[row] = f"{index:06d}@{relative}"

    with ThreadPoolExecutor(max_workers=settings.threads) as pool:
        list(pool.map(one, groups))
    return kept, names


def _extract_micrograph(micrograph: Path, stack: Path, rows: pd.DataFrame, centres: np.ndarray,
                        optics: pd.DataFrame, phase_flipped: bool, settings: ReextractSettings) -> np.ndarray:
    """One micrograph's boxes (those whose centre lies on it), written to `stack`; returns that mask."""
    geometry = settings.geometry
    image = read_micrograph(micrograph)
    ny, nx = image.shape
    inside = (centres[:, 0] >= 0) & (centres[:, 0] < nx) & (centres[:, 1] >= 0) & (centres[:, 1] < ny)
    if not inside.any():
        return inside
    if phase_flipped:
        first = rows.iloc[0]
        image = phase_flip(image, geometry.micrograph_pixel_size_a, float(first["rlnDefocusU"]),
                           float(first["rlnDefocusV"]), float(first["rlnDefocusAngle"]),
                           float(optics["rlnVoltage"].iloc[0]), float(optics["rlnSphericalAberration"].iloc[0]),
                           float(optics["rlnAmplitudeContrast"].iloc[0]), float(first.get("rlnPhaseShift", 0.0)))
    boxes, _ = cut_boxes(image, centres[inside], geometry.cut_box_px, "pad")
    boxes = fourier_crop(boxes, (geometry.box_px, geometry.box_px))
    if settings.normalise:
        boxes = normalise_boxes(boxes, settings.bg_radius_px or round(0.375 * geometry.box_px))
    if settings.invert_contrast:
        boxes = -boxes
    write_mrc(stack, boxes, geometry.pixel_size_a, is_stack=True)
    return inside


def _check_reference(path: Path, box_px: int) -> None:
    shape = read_mrc_shape(path)
    if tuple(shape) != (box_px,) * 3:
        raise ValueError(f"{path}: relion_image_handler wrote a {'×'.join(map(str, shape))} map, expected "
                         f"{box_px}³")

