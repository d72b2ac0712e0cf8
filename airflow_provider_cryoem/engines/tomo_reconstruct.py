"""Built-in tomogram reconstruction: weighted back-projection of an aligned tilt series, numpy/scipy only.

Input is the aligned stack that engines/tomo_align.py writes (tilt axis along y, shifts removed, sorted by
angle). Steps: optional CTF phase flipping per tilt, at the stack's own pixel size; binning; filtering
perpendicular to the axis (Hamming-windowed ramp, or the SIRT-like filter that mimics k SIRT iterations);
back-projection into a slab `thickness_nm` thick (engines/tomo_projection.py). The tomogram is written
`(nz, ny, nx)` with z the beam direction (IMOD's orientation after `trimvol -rx`), float32, pixel size =
stack pixel size × binning.

Phase flipping here is the simple version: one defocus per tilt, taken as that of the tilt axis, with
no strips, so the defocus gradient across a tilted image (x tan θ) is ignored. That holds while the
gradient moves the CTF zeros by less than one lobe over the image, i.e. for binned tomograms for
viewing and picking, not for subtomogram averaging to high resolution.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.fft
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..io import ImageFileError, read_mrc, write_mrc
from .ctf_model import ctf_phase, frequency_grid
from .tomo_projection import ProjectionFilter, filtered_backprojection, transform_image


class TomogramSettings(BaseModel):
    """How to reconstruct; shared by the file-based and the array-based entry points."""

    model_config = ConfigDict(extra="forbid")

    pixel_size_a: float = Field(gt=0, le=200, description="Pixel size of the aligned stack (Å/px): the "
                                                          "alignment result's aligned_pixel_size_a.")
    thickness_nm: float = Field(150.0, gt=0, le=5000, description="Tomogram thickness (nm).")
    binning: int = Field(1, ge=1, le=32, description="Binning of the tomogram relative to the aligned stack.")
    weighting: ProjectionFilter = Field("sirt", description="'ramp' (Hamming-windowed) or 'sirt' (SIRT-like).")
    sirt_iterations: int = Field(10, ge=1, le=100, description="Iterations the SIRT-like filter mimics.")
    defocus_a: list[float] | None = Field(None, description="Underfocus of each tilt at the tilt axis (Å); "
                                                            "given = phase-flip each tilt.")
    voltage_kv: float = Field(300.0, ge=60, le=400)
    cs_mm: float = Field(2.7, ge=0, le=10)
    amplitude_contrast: float = Field(0.1, ge=0, le=0.5)
    fft_workers: int = Field(1, ge=1, le=256)


class TomogramInputs(TomogramSettings):
    """One aligned tilt series and where its tomogram goes."""

    aligned_stack_path: str = Field(min_length=1, description="Aligned stack (MRC), tilt axis along y.")
    tilt_angles_deg: list[float] = Field(min_length=2, description="Tilt angle of each stack slice.")
    tomogram_path: str = Field(min_length=1, description="Tomogram to write (MRC).")

    @model_validator(mode="after")
    def _per_tilt_lists(self) -> "TomogramInputs":
        if self.defocus_a is not None and len(self.defocus_a) != len(self.tilt_angles_deg):
            raise ValueError(f"{len(self.defocus_a)} defocus values for {len(self.tilt_angles_deg)} tilts")
        return self


class TomogramResult(BaseModel):
    """Where the tomogram went and what it is."""

    tomogram_path: str
    shape: tuple[int, int, int] = Field(description="(nz, ny, nx), z along the beam.")
    pixel_size_a: float
    thickness_px: int
    n_tilts: int
    weighting: ProjectionFilter | Literal["sart"] = Field(description="'sart': AreTomo2's own reconstruction.")
    ctf_phase_flipped: bool


def reconstruct_tomogram(inputs: TomogramInputs) -> TomogramResult:
    """Read the aligned stack, reconstruct and write the tomogram (pixel size × binning in its header)."""
    stack = read_mrc(inputs.aligned_stack_path, mmap=False)
    if stack.ndim != 3 or stack.shape[0] != len(inputs.tilt_angles_deg):
        raise ImageFileError(inputs.aligned_stack_path, f"expected {len(inputs.tilt_angles_deg)} aligned tilt "
                                                        f"images, got an array of shape {stack.shape}")
    settings = TomogramSettings(**inputs.model_dump(include=set(TomogramSettings.model_fields)))
    tomogram = reconstruct_stack(stack, inputs.tilt_angles_deg, settings)
    output_pixel_a = settings.pixel_size_a * settings.binning
    write_mrc(inputs.tomogram_path, tomogram, output_pixel_a)
    return TomogramResult(tomogram_path=str(Path(inputs.tomogram_path)), shape=tomogram.shape,
                          pixel_size_a=output_pixel_a, thickness_px=tomogram.shape[0],
                          n_tilts=len(inputs.tilt_angles_deg), weighting=settings.weighting,
                          ctf_phase_flipped=settings.defocus_a is not None)


def thickness_px(thickness_nm: float, pixel_size_a: float) -> int:
    """Slab thickness in tomogram pixels, at least 1."""
    return max(1, round(thickness_nm * 10.0 / pixel_size_a))


def reconstruct_stack(stack: np.ndarray, tilt_angles_deg: Sequence[float], settings: TomogramSettings) -> np.ndarray:
    """Tomogram `(nz, ny, nx)` float32 from an aligned `(n_tilts, ny, nx)` stack (tilt axis along y)."""
    data = np.asarray(stack, dtype=np.float32)
    if data.ndim != 3 or data.shape[0] != len(tilt_angles_deg):
        raise ValueError(f"expected one aligned image per tilt angle, got stack {data.shape} and "
                         f"{len(tilt_angles_deg)} angles")
    if settings.defocus_a is not None:
        if len(settings.defocus_a) != data.shape[0]:
            raise ValueError(f"{len(settings.defocus_a)} defocus values for {data.shape[0]} tilts")
        data = np.stack([phase_flip(image, defocus, settings) for image, defocus in zip(data, settings.defocus_a)])
    if settings.binning > 1:
        data = np.stack([transform_image(image, binning=settings.binning) for image in data])
    data -= data.mean(axis=(1, 2), keepdims=True)
    depth_px = thickness_px(settings.thickness_nm, settings.pixel_size_a * settings.binning)
    return filtered_backprojection(data, tilt_angles_deg, depth_px, settings.weighting, settings.sirt_iterations,
                                   settings.fft_workers)


def phase_flip(image: np.ndarray, defocus_a: float, settings: TomogramSettings) -> np.ndarray:
    """Multiply the image's spectrum by the sign of sin χ (CTF = -sin χ), keeping the low-frequency contrast
    (dark protein stays dark) while every later lobe is turned the same way."""
    freq, _ = frequency_grid(image.shape, settings.pixel_size_a, rfft=True)
    chi = ctf_phase(freq, defocus_a, settings.voltage_kv, settings.cs_mm, settings.amplitude_contrast)
    spectrum = scipy.fft.rfft2(image, workers=settings.fft_workers) * np.sign(np.sin(chi)).astype(np.float32)
    return scipy.fft.irfft2(spectrum, s=image.shape, workers=settings.fft_workers).astype(np.float32)
