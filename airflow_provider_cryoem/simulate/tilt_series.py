"""A whole tilt-series session on disk, written at once or live (tilt by tilt, as SerialEM or Tomo5 collect).

Layout of the output folder (names in `tomo_files`):
  TS_01.mdoc / Position_1.mdoc       one per series, rewritten after each tilt with one more [ZValue = N]
  TS_01_001_0.0.tif ...              the tilt movies, in collection (dose-symmetric) order
  gain/gain_reference.mrc            gain reference, as the SPA simulator writes it
  truth/TS_01_phantom.mrc            the phantom volume of each series (phase per voxel, rad)
  ground_truth.json                  TomoSessionTruth of the tilts written so far
  END_OF_SESSION                     live mode only, written last
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from ..engines.tomo_projection import project_volume
from ..io.mrc import write_mrc
from .detector import counts_dtype
from .files import movie_bytes, write_atomically
from .motion import global_shifts_px, local_motion, max_displacement_px
from .movie import _canvas_margin_px
from .session import END_MARKER_NAME, GAIN_REFERENCE_NAME, GROUND_TRUTH_NAME, prepare_session_folder
from .settings import SpaSimulationSettings
from .specimen import ICE_INELASTIC_MFP_A
from .structure import make_structure
from .tomo_files import mdoc_text, movie_name, series_name
from .tomo_image import TiltMotion, TiltOptics, path_length_a, record_tilt
from .tomo_phantom import Phantom, build_phantom
from .tomo_settings import TomoSimulationSettings
from .tomo_truth import TiltSeriesTruth, TiltTruth, TomoSessionTruth
from .truth import StructureTruth

PHANTOM_FOLDER = "truth"


@dataclass
class SimulatedTilt:
    """One recorded tilt in memory: raw frames, the noise-free image, the projected phantom and the truth."""

    frames: np.ndarray               # (n_frames, ny, nx) raw counts, uint8/uint16 (float32 without noise)
    clean: np.ndarray                # noise-free gain-corrected frame sum, tracking shift and drift removed
    projected_potential: np.ndarray  # projected phase of the phantom (rad), same frame as `clean`
    truth: TiltTruth


class TiltSeriesSimulation:
    """Series `index` of a session: its truth (every tilt planned up front), its phantom, and its tilts on demand."""

    def __init__(self, settings: TomoSimulationSettings, index: int, structure: StructureTruth | None = None) -> None:
        self.settings = settings
        self.index = index
        spa = settings.as_spa_settings()
        structure = structure or make_structure(spa)
        rng = np.random.default_rng([settings.seed, 10, index])
        astigmatism_a = float(rng.uniform(0.0, settings.astigmatism_max_a))
        astigmatism_angle = float(rng.uniform(0.0, 180.0)) if astigmatism_a > 0 else 0.0
        area_offset_um = float(rng.uniform(-settings.area_offset_um, settings.area_offset_um))
        eucentric_um = float(rng.normal(0.0, settings.eucentric_error_um))

        angles = settings.acquisition_order()
        self._motions = [self._draw_motion(spa, k) for k in range(len(angles))]
        reach = max(max_displacement_px(m.frame_shifts_px, spa) + float(np.abs(m.tracking_px).max())
                    for m in self._motions)
        self.margin_px = _canvas_margin_px(spa, reach)
        self.phantom: Phantom = build_phantom(settings, index, structure,
                                              settings.image_size_px + 2 * self.margin_px)
        name = series_name(settings, index)
        self.truth = TiltSeriesTruth(
            index=index, name=name, mdoc_name=f"{name}.mdoc", phantom_name=f"{PHANTOM_FOLDER}/{name}_phantom.mrc",
            phantom_shape=list(self.phantom.volume.shape), voxel_size_a=settings.voxel_size_a,
            pixel_size_a=settings.pixel_size_a, image_size_px=settings.image_size_px,
            tilt_axis_deg=settings.tilt_axis_deg, thickness_nm=settings.thickness_nm,
            astigmatism_a=round(astigmatism_a, 3), astigmatism_angle_deg=round(astigmatism_angle, 4),
            area_offset_um=round(area_offset_um, 4), eucentric_offset_um=round(eucentric_um, 4),
            objects=self.phantom.objects,
            tilts=[self._tilt_truth(k, angle, area_offset_um, eucentric_um) for k, angle in enumerate(angles)])

    def _draw_motion(self, spa: SpaSimulationSettings, order: int) -> TiltMotion:
        rng = np.random.default_rng([self.settings.seed, 11, self.index, order])
        shifts = global_shifts_px(rng, spa)
        local = local_motion(rng, spa, shifts)
        tracking = np.round(rng.normal(0.0, self.settings.tracking_error_px, 2), 4)
        return TiltMotion(frame_shifts_px=shifts, local=local, tracking_px=tracking)

    def _tilt_truth(self, order: int, angle_deg: float, area_offset_um: float, eucentric_um: float) -> TiltTruth:
        """The planted values of the tilt collected `order`-th (from 0).

        The imaged area sits `area_offset_um` from the axis and `eucentric_um` above it; tilting moves it
        up by Δz = -x sin θ + z (cos θ - 1) (the projector's rotation), which lowers the underfocus by Δz,
        on top of a random focus error.
        """
        settings = self.settings
        rng = np.random.default_rng([settings.seed, 13, self.index, order])
        theta = math.radians(angle_deg)
        height_um = -area_offset_um * math.sin(theta) + eucentric_um * (math.cos(theta) - 1.0)
        defocus_um = settings.defocus_um - height_um + rng.normal(0.0, settings.focus_error_um)
        acquired = settings.session_start + timedelta(
            seconds=(self.index * len(self._motions) + order) * settings.tilt_interval_s)
        motion = self._motions[order]
        path_a = path_length_a(settings, angle_deg)
        return TiltTruth(
            z_value=order, acquisition_order=order + 1, tilt_angle_deg=angle_deg,
            movie_name=movie_name(settings, series_name(settings, self.index), order + 1, angle_deg, acquired),
            acquisition_time=acquired.isoformat(), shift_px=motion.tracking_px.tolist(),
            frame_shifts_px=motion.frame_shifts_px.tolist(), local_motion=motion.local,
            defocus_um=round(defocus_um, 5), pre_exposure_e_a2=round(order * settings.dose_per_tilt_e_a2, 6),
            accumulated_dose_e_a2=round((order + 1) * settings.dose_per_tilt_e_a2, 6),
            path_length_nm=round(path_a / 10.0, 4), transmission=round(math.exp(-path_a / ICE_INELASTIC_MFP_A), 6))

    def tilts(self) -> Iterator[SimulatedTilt]:
        """Record the tilts one by one in acquisition order (the projections are computed once, first)."""
        angles = [t.tilt_angle_deg for t in self.truth.tilts]
        projections = project_volume(self.phantom.volume, angles)
        gold = project_volume(self.phantom.gold_occupancy, angles) if self.phantom.gold_occupancy is not None else None
        for order, tilt in enumerate(self.truth.tilts):
            optics = TiltOptics(tilt_angle_deg=tilt.tilt_angle_deg, defocus_a=tilt.defocus_um * 1e4,
                                astigmatism_a=self.truth.astigmatism_a,
                                astigmatism_angle_deg=self.truth.astigmatism_angle_deg,
                                pre_exposure_e_a2=tilt.pre_exposure_e_a2)
            rng = np.random.default_rng([self.settings.seed, 12, self.index, order])
            recorded = record_tilt(rng, self.settings, projections[order], None if gold is None else gold[order],
                                   optics, self._motions[order], self.margin_px)
            yield SimulatedTilt(frames=counts_dtype(recorded.frames), clean=recorded.clean,
                                projected_potential=recorded.projected_potential, truth=tilt)


def write_tomo_session(settings: TomoSimulationSettings, watch_dir: str | Path) -> TomoSessionTruth:
    """Simulate every series into `watch_dir` (each file appears complete); returns the truth."""
    return _write_session(settings, Path(watch_dir), write_atomically, lambda: None)


def run_live_tomo_session(settings: TomoSimulationSettings, watch_dir: str | Path, interval_s: float,
                          chunk_delay_s: float = 0.05, n_chunks: int = 4) -> TomoSessionTruth:
    """Act like SerialEM: a tilt every `interval_s`, its movie growing in `n_chunks` pieces under its final
    name (`chunk_delay_s` apart), then the series' mdoc rewritten with that tilt's section; `END_OF_SESSION`
    comes last.
    """
    watch_dir = Path(watch_dir)
    next_start = time.monotonic()

    def pace() -> None:
        nonlocal next_start
        time.sleep(max(0.0, next_start - time.monotonic()))
        next_start = time.monotonic() + interval_s

    def write_growing(path: Path, content: bytes) -> None:
        with open(path, "wb") as handle:
            for piece in np.array_split(np.frombuffer(content, dtype=np.uint8), n_chunks):
                handle.write(piece.tobytes())
                handle.flush()
                time.sleep(chunk_delay_s)

    truth = _write_session(settings, watch_dir, write_growing, pace)
    (watch_dir / END_MARKER_NAME).write_text("")
    return truth


def _write_session(settings: TomoSimulationSettings, out_dir: Path, write_movie: Callable[[Path, bytes], object],
                   before_tilt: Callable[[], None]) -> TomoSessionTruth:
    """Gain first, then per series: the phantom, then each tilt's movie followed by the mdoc and the truth."""
    spa = settings.as_spa_settings()
    prepare_session_folder(spa, out_dir)
    structure = make_structure(spa)
    session = TomoSessionTruth(settings=settings, structure=structure, gain_reference_name=GAIN_REFERENCE_NAME,
                               series=[])
    for index in range(settings.n_series):
        simulation = TiltSeriesSimulation(settings, index, structure)
        write_mrc(out_dir / simulation.truth.phantom_name, simulation.phantom.volume, settings.voxel_size_a)
        series = simulation.truth.model_copy(update={"tilts": []})
        session.series.append(series)
        for tilt in simulation.tilts():
            before_tilt()
            write_movie(out_dir / tilt.truth.movie_name,
                        movie_bytes(tilt.frames, settings.movie_format, settings.pixel_size_a))
            series.tilts.append(tilt.truth)
            write_atomically(out_dir / series.mdoc_name, mdoc_text(settings, series, series.tilts).encode())
            session.write(out_dir / GROUND_TRUTH_NAME)
    return session
