"""Every planted value, as pydantic models written to `ground_truth.json`, so tests can score any stage."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from .settings import SpaSimulationSettings


class StructureTruth(BaseModel):
    """The synthetic particle: Gaussian pseudo-atoms (Å, centred on the origin) with their phase weights
    (rad·Å²); further conformations move the same atoms (conformation 0 is `atoms_xyz_a`)."""

    atoms_xyz_a: list[list[float]]
    weights: list[float]
    atom_sigma_a: float
    conformations_xyz_a: list[list[list[float]]] = Field(default_factory=list)

    def conformation_xyz_a(self, conformation: int) -> list[list[float]]:
        return self.atoms_xyz_a if conformation == 0 else self.conformations_xyz_a[conformation - 1]


class ParticleTruth(BaseModel):
    """One planted object; angles are Relion ZYZ Euler angles (deg), 0 for junk (it has no orientation)."""

    x_px: float
    y_px: float
    is_junk: bool = False
    diameter_a: float
    rot_deg: float = 0.0
    tilt_deg: float = 0.0
    psi_deg: float = 0.0
    conformation: int = 0
    on_carbon: bool = False


class LocalMotionTruth(BaseModel):
    """Non-rigid motion: d(x, y, frame) = amplitude_profile[frame] · Σ c_k · basis_k(u, v), in px.

    u, v = x / (nx - 1) - 0.5, y / (ny - 1) - 0.5 (pixel positions of the frame); the basis is
    [u, v, u·v, u², v²]. The specimen seen at (x, y) in frame i sits at (x, y) - shift_i - d(x, y, i)
    in frame 0.
    """

    coefficients_x_px: list[float]
    coefficients_y_px: list[float]
    amplitude_profile: list[float]

    def displacement_px(self, x_px: np.ndarray, y_px: np.ndarray, frame: int, image_size_px: int) -> tuple[
            np.ndarray, np.ndarray]:
        """Local displacement (dx, dy) in px at frame pixel positions (x, y) of `frame`."""
        basis = local_motion_basis(np.asarray(x_px, dtype=np.float32), np.asarray(y_px, dtype=np.float32),
                                   image_size_px)
        scale = self.amplitude_profile[frame]
        dx = scale * sum(c * b for c, b in zip(self.coefficients_x_px, basis))
        dy = scale * sum(c * b for c, b in zip(self.coefficients_y_px, basis))
        return dx, dy


def local_motion_basis(x_px: np.ndarray, y_px: np.ndarray, image_size_px: int) -> list[np.ndarray]:
    """The low-order polynomial basis of the local deformation (see LocalMotionTruth)."""
    u = x_px / (image_size_px - 1) - 0.5
    v = y_px / (image_size_px - 1) - 0.5
    return [u, v, u * v, u * u, v * v]


class CarbonEdgeTruth(BaseModel):
    """A carbon edge through `point_px` with normal n at `normal_deg` pointing into the carbon: straight
    (carbon where (p - point)·n > 0), or the rim of a foil hole of `hole_radius_px` centred at
    point - radius·n (carbon outside the circle)."""

    point_px: list[float]
    normal_deg: float
    carbon_area_fraction: float
    hole_radius_px: float | None = None

    def distance_into_carbon_px(self, x_px: np.ndarray | float, y_px: np.ndarray | float) -> np.ndarray:
        """Signed distance (px) from the edge, positive on the carbon."""
        normal = np.array([np.cos(np.deg2rad(self.normal_deg)), np.sin(np.deg2rad(self.normal_deg))])
        dx = np.asarray(x_px, dtype=np.float64) - self.point_px[0]
        dy = np.asarray(y_px, dtype=np.float64) - self.point_px[1]
        if self.hole_radius_px is None:
            return dx * normal[0] + dy * normal[1]
        return np.hypot(dx + self.hole_radius_px * normal[0], dy + self.hole_radius_px * normal[1]) \
            - self.hole_radius_px


class ContaminantTruth(BaseModel):
    """A crystalline-ice contaminant: a hexagonal crystal centred at (x, y) with its circumradius."""

    x_px: float
    y_px: float
    radius_px: float
    thickness_a: float


class MovieTruth(BaseModel):
    """The planted values of one movie."""

    index: int
    movie_name: str = ""
    metadata_name: str = ""
    image_size_px: int
    n_frames: int
    pixel_size_a: float
    dose_per_frame_e_a2: float
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    frame_dtype: str
    acquisition_time: str
    shifts_px: list[list[float]] = Field(description="[dx, dy] per frame, frame 0 = [0, 0]")
    local_motion: LocalMotionTruth
    defocus_target_a: float
    defocus_u_a: float
    defocus_v_a: float
    astigmatism_angle_deg: float
    ice_thickness_centre_a: float
    ice_gradient_direction_deg: float
    carbon_edge: CarbonEdgeTruth | None = None
    particles: list[ParticleTruth]
    contaminants: list[ContaminantTruth] = Field(default_factory=list)

    @property
    def defocus_mean_a(self) -> float:
        return 0.5 * (self.defocus_u_a + self.defocus_v_a)

    def particle_coordinates_px(self, include_junk: bool = False) -> list[list[float]]:
        """[x, y] centres (frame-0 pixels), real particles only unless `include_junk`."""
        return [[p.x_px, p.y_px] for p in self.particles if include_junk or not p.is_junk]


class SessionTruth(BaseModel):
    """A whole simulated session: settings, the particle structure, the gain file and every movie."""

    settings: SpaSimulationSettings
    structure: StructureTruth
    gain_reference_name: str
    movies: list[MovieTruth]

    def write(self, path: str | Path) -> Path:
        """Write as JSON atomically (temp file + rename), so a reader never sees half a file."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.model_dump_json(indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> "SessionTruth":
        return cls.model_validate_json(Path(path).read_text())
