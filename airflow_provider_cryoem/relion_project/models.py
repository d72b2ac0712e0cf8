"""What the project writer needs to know about the optics and about a micrograph's CTF."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import SessionConfig


class OpticsGroup(BaseModel):
    """One Relion optics group; the particle fields describe the Extract job's (downscaled) boxes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("opticsGroup1", pattern=r"^\S+$")
    number: int = Field(1, ge=1)
    movie_pixel_size_a: float = Field(gt=0)
    micrograph_pixel_size_a: float = Field(gt=0)
    voltage_kv: float = Field(gt=0)
    cs_mm: float = Field(ge=0)
    amplitude_contrast: float = Field(ge=0, le=1)
    particle_box_px: int | None = Field(None, ge=2)
    particle_pixel_size_a: float | None = Field(None, gt=0)
    # rlnTomoHand: slope of defocus over the tomogram's z. Relion's import defaults to -1 ("invert defocus
    # handedness", as EMPIAR-10164 needs); cryoem-services writes -1 too (its `invert_hand`).
    tomo_hand: Literal[-1, 1] = -1

    @classmethod
    def from_session(cls, config: SessionConfig) -> "OpticsGroup":
        """Optics of a session: movie and micrograph pixels, extraction box after downscaling."""
        box = config.downscaled_box_px
        return cls(movie_pixel_size_a=config.pixel_size_a,
                   micrograph_pixel_size_a=config.motion_corrected_pixel_size_a,
                   voltage_kv=config.voltage_kv, cs_mm=config.cs_mm,
                   amplitude_contrast=config.amplitude_contrast, particle_box_px=box,
                   particle_pixel_size_a=config.motion_corrected_pixel_size_a * config.extraction_box_px / box)


class CtfValues(BaseModel):
    """A micrograph's fitted CTF; reads any result object with these attribute names."""

    model_config = ConfigDict(from_attributes=True, extra="ignore", frozen=True)

    defocus_u_a: float
    defocus_v_a: float
    astigmatism_angle_deg: float
    figure_of_merit: float
    max_resolution_a: float
