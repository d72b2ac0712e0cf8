"""Every planted value of a tilt-series session, as pydantic models written to `ground_truth.json`.

Frames (those of `engines/tomo_projection.py`): the phantom is `(nz, ny, nx)` with its centre on the tilt axis;
positions `[x, y, z]` are in Å from that centre, y along the tilt axis, z up (towards the source). A tilt θ
moves a point to x' = x cos θ + z sin θ, height z' = -x sin θ + z cos θ; the recorded image is that projection
rotated CCW by the tilt-axis angle α (from the image y axis) about the image centre ((n - 1) / 2), then moved
by the tilt's `shift_px`. Defocus is Å or µm, positive = underfocus; a point higher up (z' > 0) is closer
to the underfocused focal plane, so its defocus is the tilt's defocus minus z'.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from .files import write_atomically
from .tomo_settings import TomoSimulationSettings
from .truth import LocalMotionTruth, StructureTruth


class TomoObjectTruth(BaseModel):
    """One object in the phantom: a vesicle (lipid bilayer shell), a macromolecule or a gold bead."""

    kind: Literal["vesicle", "particle", "gold"]
    centre_a: list[float] = Field(description="[x, y, z] in Å from the phantom centre (see module frames)")
    radius_a: float = Field(description="vesicle: bilayer mid-plane radius; particle / gold: outer radius")
    rot_deg: float = 0.0
    tilt_deg: float = 0.0
    psi_deg: float = 0.0
    inside_vesicle: int | None = Field(None, description="index (in `objects`) of the vesicle holding a particle")


class TiltTruth(BaseModel):
    """One tilt as collected: its movie, where its image sits and its true optics."""

    z_value: int = Field(description="section index in the mdoc ([ZValue = N]) = acquisition order from 0")
    acquisition_order: int = Field(description="1-based number in the movie file name")
    tilt_angle_deg: float = Field(description="nominal (and true) tilt angle")
    movie_name: str
    acquisition_time: str
    shift_px: list[float] = Field(description="[dx, dy]: the ideal rotated projection sits moved by this in frame 0")
    frame_shifts_px: list[list[float]] = Field(description="[dx, dy] per frame relative to frame 0 (drift)")
    local_motion: LocalMotionTruth
    defocus_um: float = Field(description="true mean underfocus at the tilt axis (image centre before shift)")
    pre_exposure_e_a2: float = Field(description="dose received before this tilt (PriorRecordDose)")
    accumulated_dose_e_a2: float = Field(description="dose received up to the end of this tilt")
    path_length_nm: float = Field(description="thickness / cos(tilt): electron path through the slab")
    transmission: float = Field(description="fraction of electrons kept by the energy filter, exp(-path / λ)")


class TiltSeriesTruth(BaseModel):
    """A tilt series: its files, geometry, the phantom and its objects, and every tilt in acquisition order."""

    index: int = Field(description="0-based position of the series in the session")
    name: str
    mdoc_name: str
    phantom_name: str = Field(description="MRC of the phantom (phase per voxel, rad), relative to the session folder")
    phantom_shape: list[int] = Field(description="(nz, ny, nx)")
    voxel_size_a: float
    pixel_size_a: float
    image_size_px: int
    tilt_axis_deg: float
    thickness_nm: float
    astigmatism_a: float = Field(description="defocus U - V of every tilt (Å)")
    astigmatism_angle_deg: float
    area_offset_um: float = Field(description="distance of the imaged area from the tilt axis, along x (µm)")
    eucentric_offset_um: float = Field(description="height of the imaged area above the eucentric height (µm)")
    objects: list[TomoObjectTruth]
    tilts: list[TiltTruth]

    def tilt(self, angle_deg: float) -> TiltTruth:
        """The tilt at the nominal angle `angle_deg` (KeyError if there is none)."""
        for tilt in self.tilts:
            if abs(tilt.tilt_angle_deg - angle_deg) < 1e-6:
                return tilt
        raise KeyError(f"{self.name} has no tilt at {angle_deg}°")

    def project_point_px(self, xyz_a: list[float], tilt: TiltTruth) -> tuple[float, float]:
        """Where a phantom point `[x, y, z]` (Å) appears in frame 0 of `tilt`, as image `[x, y]` pixels."""
        theta = math.radians(tilt.tilt_angle_deg)
        x_axis = (xyz_a[0] * math.cos(theta) + xyz_a[2] * math.sin(theta)) / self.pixel_size_a
        y_axis = xyz_a[1] / self.pixel_size_a
        alpha = math.radians(self.tilt_axis_deg)
        centre = (self.image_size_px - 1) / 2.0
        return (centre + x_axis * math.cos(alpha) - y_axis * math.sin(alpha) + tilt.shift_px[0],
                centre + x_axis * math.sin(alpha) + y_axis * math.cos(alpha) + tilt.shift_px[1])

    def defocus_um_at(self, x_px: float, y_px: float, tilt: TiltTruth) -> float:
        """True mean underfocus (µm) of the specimen mid-plane seen at image pixel (x, y) of frame 0 of `tilt`.

        The mid-plane point at distance x' (perpendicular to the axis, in the untilted-axis frame) sits at
        height z' = -x' tan θ, and its defocus is the tilt's minus z'.
        """
        centre = (self.image_size_px - 1) / 2.0
        alpha = math.radians(self.tilt_axis_deg)
        dx, dy = x_px - centre - tilt.shift_px[0], y_px - centre - tilt.shift_px[1]
        x_axis_a = (dx * math.cos(alpha) + dy * math.sin(alpha)) * self.pixel_size_a
        height_a = -x_axis_a * math.tan(math.radians(tilt.tilt_angle_deg))
        return tilt.defocus_um - height_a * 1e-4


class TomoSessionTruth(BaseModel):
    """A whole simulated tilt-series session: settings, the macromolecule, the gain file and every series."""

    settings: TomoSimulationSettings
    structure: StructureTruth
    gain_reference_name: str
    series: list[TiltSeriesTruth]

    def write(self, path: str | Path) -> Path:
        """Write as JSON atomically (temp file + rename), so a reader never sees half a file."""
        return write_atomically(Path(path), self.model_dump_json(indent=1).encode())

    @classmethod
    def read(cls, path: str | Path) -> "TomoSessionTruth":
        return cls.model_validate_json(Path(path).read_text())
