"""Particle extraction as cryoem-services and Relion do it: box, downscale, normalise, invert, write a stack.

Per micrograph: optional phase flip of the whole micrograph with its CTF (one FFT, no box-edge artefacts),
boxes of `box_px` centred on the rounded coordinates (centre at index box/2, Relion's convention), Fourier
cropping to `downscaled_box_px`, then Relion's normalisation: a plane fitted to the pixels outside the
background circle (radius `bg_radius_px`, default round(0.375 × box) of the final box) is subtracted and the
image divided by the background std, so the background has mean 0 and std 1; contrast is inverted so
particles are white. Particles whose box leaves the micrograph are skipped (`edge_handling="skip"`, the
default: a partly empty box biases 2D classes) or completed by mirroring the micrograph (`"pad"`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.fft
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..io import ImageFileError, read_star, write_mrc, write_star
from .ctf_model import ctf_2d
from .picking import fourier_crop, read_micrograph


class ExtractionInputs(BaseModel):
    """A micrograph, its picks and CTF, and where the stack and STAR go."""

    model_config = ConfigDict(extra="forbid")

    micrograph_path: str = Field(min_length=1)
    coordinates_star_path: str | None = Field(None, description="Relion coordinate STAR (rlnCoordinateX/Y).")
    coordinates_px: list[list[float]] | None = Field(None, description="[x, y] picks, instead of a STAR file.")
    pixel_size_a: float = Field(gt=0, description="Micrograph pixel size (Å).")
    box_px: int = Field(ge=16, le=4096, description="Extraction box in micrograph pixels (even).")
    downscaled_box_px: int | None = Field(None, ge=16, le=4096, description="Box after Fourier cropping.")
    bg_radius_px: float | None = Field(None, gt=0, description="Background circle radius in the final box; "
                                                               "default round(0.375 × box).")
    invert_contrast: bool = True
    normalise: bool = True
    phase_flip: bool = False
    edge_handling: Literal["skip", "pad"] = "skip"
    min_figure_of_merit: float | None = Field(None, description="Drop picks whose rlnAutopickFigureOfMerit is "
                                                                "below this (STAR input only).")
    voltage_kv: float = Field(300.0, ge=60, le=400)
    cs_mm: float = Field(2.7, ge=0)
    amplitude_contrast: float = Field(0.1, ge=0, le=0.5)
    defocus_u_a: float = 0.0
    defocus_v_a: float = 0.0
    defocus_angle_deg: float = 0.0
    phase_shift_deg: float = 0.0
    ctf_max_resolution_a: float = 0.0
    ctf_figure_of_merit: float = 0.0
    optics_group: int = Field(1, ge=1)
    micrograph_name: str | None = Field(None, description="rlnMicrographName; default the micrograph path.")
    output_stack_path: str = Field(min_length=1, description="The .mrcs stack to write.")
    output_star_path: str = Field(min_length=1, description="The per-micrograph _extract.star to write.")
    relion_project_dir: str | None = Field(None, description="rlnImageName paths are written relative to this.")

    @model_validator(mode="after")
    def _consistent(self) -> "ExtractionInputs":
        if (self.coordinates_star_path is None) == (self.coordinates_px is None):
            raise ValueError("give exactly one of coordinates_star_path and coordinates_px")
        if self.box_px % 2:
            raise ValueError(f"box_px must be even, got {self.box_px}")
        if self.downscaled_box_px is not None and (self.downscaled_box_px % 2 or self.downscaled_box_px > self.box_px):
            raise ValueError(f"downscaled_box_px ({self.downscaled_box_px}) must be even and at most box_px "
                             f"({self.box_px})")
        if self.phase_flip and self.defocus_u_a <= 0:
            raise ValueError("phase_flip needs the micrograph's defocus_u_a (> 0)")
        return self

    @property
    def final_box_px(self) -> int:
        return self.downscaled_box_px or self.box_px


class ExtractionResult(BaseModel):
    """What was written: the stack, the STAR file, and the particle rows (Relion columns)."""

    particle_count: int
    skipped_at_edge: int
    stack: str
    star: str
    image_pixel_size_a: float
    box_px: int
    particles: list[dict[str, str | float | int]]


def read_coordinates(path: str | Path, min_figure_of_merit: float | None = None) -> np.ndarray:
    """`[x, y]` rows from a Relion coordinate STAR, optionally only picks at or above a figure of merit."""
    blocks = [block for block in read_star(path).values()
              if {"rlnCoordinateX", "rlnCoordinateY"} <= set(block.columns)]
    if not blocks:
        raise ImageFileError(path, "no data block with rlnCoordinateX and rlnCoordinateY")
    block = blocks[0]
    if min_figure_of_merit is not None and "rlnAutopickFigureOfMerit" in block.columns:
        block = block[block["rlnAutopickFigureOfMerit"] >= min_figure_of_merit]
    return block[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=np.float64).reshape(-1, 2)


def phase_flip_micrograph(image: np.ndarray, inputs: ExtractionInputs) -> np.ndarray:
    """Multiply the micrograph's spectrum by sign(CTF), undoing the CTF's contrast reversals."""
    return phase_flip(image, inputs.pixel_size_a, inputs.defocus_u_a, inputs.defocus_v_a, inputs.defocus_angle_deg,
                      inputs.voltage_kv, inputs.cs_mm, inputs.amplitude_contrast, inputs.phase_shift_deg)


def phase_flip(image: np.ndarray, pixel_size_a: float, defocus_u_a: float, defocus_v_a: float,
               defocus_angle_deg: float, voltage_kv: float, cs_mm: float, amplitude_contrast: float,
               phase_shift_deg: float = 0.0) -> np.ndarray:
    """`image` with its spectrum multiplied by sign(CTF) of the given parameters (see phase_flip_micrograph)."""
    ctf = ctf_2d(image.shape, pixel_size_a, defocus_u_a, defocus_v_a, defocus_angle_deg, voltage_kv, cs_mm,
                 amplitude_contrast, np.deg2rad(phase_shift_deg), rfft=True)
    # CTF < 0 at low frequency for underfocus: flip to keep the recorded (dark-protein) contrast.
    spectrum = scipy.fft.rfft2(image, workers=-1) * -np.sign(ctf)
    return scipy.fft.irfft2(spectrum, s=image.shape, workers=-1).astype(np.float32)


def cut_boxes(image: np.ndarray, coordinates_px: np.ndarray, box_px: int,
              edge_handling: str) -> tuple[np.ndarray, np.ndarray]:
    """Boxes `(n, box, box)` with each rounded coordinate at index box/2; returns (boxes, kept-row mask)."""
    centres = np.rint(coordinates_px).astype(np.int64)
    half = box_px // 2
    ny, nx = image.shape
    inside = ((centres[:, 0] - half >= 0) & (centres[:, 0] + half <= nx)
              & (centres[:, 1] - half >= 0) & (centres[:, 1] + half <= ny))
    keep = inside if edge_handling == "skip" else np.ones(len(centres), dtype=bool)
    source, offset = image, 0
    if edge_handling == "pad" and not inside.all():
        source, offset = np.pad(image, half, mode="symmetric"), half
    boxes = np.empty((int(keep.sum()), box_px, box_px), dtype=np.float32)
    for index, (x, y) in enumerate(centres[keep] + offset):
        boxes[index] = source[y - half: y + half, x - half: x + half]
    return boxes, keep


def normalise_boxes(boxes: np.ndarray, bg_radius_px: float) -> np.ndarray:
    """Relion normalisation: remove a plane fitted to the background ring, scale the background to std 1."""
    box = boxes.shape[-1]
    y, x = np.indices((box, box), dtype=np.float64) - box // 2
    background = np.hypot(x, y) > bg_radius_px
    if np.count_nonzero(background) < 10:
        raise ValueError(f"background radius {bg_radius_px} px leaves no background in a {box}-px box")
    design = np.stack([x[background], y[background], np.ones(np.count_nonzero(background))], axis=1)
    values = boxes[:, background].astype(np.float64)
    plane_coefficients = np.linalg.lstsq(design, values.T, rcond=None)[0]  # (3, n)
    planes = (plane_coefficients[0][:, None, None] * x + plane_coefficients[1][:, None, None] * y
              + plane_coefficients[2][:, None, None])
    flattened = boxes - planes
    std = flattened[:, background].std(axis=1)
    return (flattened / np.where(std > 0, std, 1.0)[:, None, None]).astype(np.float32)


def _relative(path: Path, project_dir: str | None) -> str:
    if project_dir is None:
        return str(path)
    return os.path.relpath(path.resolve(), Path(project_dir).resolve())


def _optics_table(inputs: ExtractionInputs, image_pixel_size_a: float) -> pd.DataFrame:
    return pd.DataFrame({
        "rlnOpticsGroupName": [f"opticsGroup{inputs.optics_group}"],
        "rlnOpticsGroup": [inputs.optics_group],
        "rlnMicrographOriginalPixelSize": [inputs.pixel_size_a],
        "rlnVoltage": [inputs.voltage_kv],
        "rlnSphericalAberration": [inputs.cs_mm],
        "rlnAmplitudeContrast": [inputs.amplitude_contrast],
        "rlnImagePixelSize": [image_pixel_size_a],
        "rlnImageSize": [inputs.final_box_px],
        "rlnImageDimensionality": [2],
        "rlnCtfDataAreCtfPremultiplied": [0],
        **({"rlnCtfDataArePhaseFlipped": [1]} if inputs.phase_flip else {}),
    })


def particle_table(inputs: ExtractionInputs, coordinates_px: np.ndarray, stack_path: Path) -> pd.DataFrame:
    """The Relion particle rows (cryoem-services' columns) for particles stored in order in `stack_path`."""
    count = len(coordinates_px)
    stack_name = _relative(stack_path, inputs.relion_project_dir)
    micrograph_name = inputs.micrograph_name or _relative(Path(inputs.micrograph_path), inputs.relion_project_dir)
    return pd.DataFrame({
        "rlnCoordinateX": np.round(coordinates_px[:, 0], 2),
        "rlnCoordinateY": np.round(coordinates_px[:, 1], 2),
        "rlnImageName": [f"{index:06d}@{stack_name}" for index in range(1, count + 1)],
        "rlnMicrographName": [micrograph_name] * count,
        "rlnOpticsGroup": [inputs.optics_group] * count,
        "rlnDefocusU": [inputs.defocus_u_a] * count,
        "rlnDefocusV": [inputs.defocus_v_a] * count,
        "rlnDefocusAngle": [inputs.defocus_angle_deg] * count,
        "rlnCtfMaxResolution": [inputs.ctf_max_resolution_a] * count,
        "rlnCtfFigureOfMerit": [inputs.ctf_figure_of_merit] * count,
        "rlnCtfBfactor": [0.0] * count,
        "rlnCtfScalefactor": [1.0] * count,
        "rlnPhaseShift": [inputs.phase_shift_deg] * count,
    })


def run_extraction(inputs: ExtractionInputs) -> ExtractionResult:
    """Extract, downscale, normalise and invert the particles of one micrograph; write .mrcs + _extract.star."""
    image = read_micrograph(inputs.micrograph_path)
    coordinates = (read_coordinates(inputs.coordinates_star_path, inputs.min_figure_of_merit)
                   if inputs.coordinates_star_path else np.asarray(inputs.coordinates_px, dtype=np.float64))
    if coordinates.ndim != 2 or coordinates.shape[1] != 2:
        raise ValueError(f"coordinates_px must be a list of [x, y], got shape {coordinates.shape}")
    if inputs.phase_flip:
        image = phase_flip_micrograph(image, inputs)
    boxes, kept = cut_boxes(image, coordinates, inputs.box_px, inputs.edge_handling)
    final_box = inputs.final_box_px
    boxes = fourier_crop(boxes, (final_box, final_box))
    if inputs.normalise and len(boxes):
        boxes = normalise_boxes(boxes, inputs.bg_radius_px or round(0.375 * final_box))
    if inputs.invert_contrast:
        boxes = -boxes
    image_pixel_size_a = inputs.pixel_size_a * inputs.box_px / final_box
    stack_path = write_mrc(inputs.output_stack_path, boxes.reshape(-1, final_box, final_box), image_pixel_size_a,
                           is_stack=True)
    particles = particle_table(inputs, coordinates[kept], stack_path)
    star_path = write_star(inputs.output_star_path,
                           {"optics": _optics_table(inputs, image_pixel_size_a), "particles": particles})
    return ExtractionResult(
        particle_count=len(particles),
        skipped_at_edge=int(np.count_nonzero(~kept)),
        stack=str(stack_path),
        star=str(star_path),
        image_pixel_size_a=image_pixel_size_a,
        box_px=final_box,
        particles=particles.to_dict(orient="records"),
    )
