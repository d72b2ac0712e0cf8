"""What a tomography session leaves on disk besides the movies: file names and the SerialEM `.mdoc`.

Names, as the acquisition programs write them (tilt number = acquisition order from 1, then the angle;
cryoem-services parses both from these `_`-separated tokens, `util/tomo_output_files.py`):
- SerialEM: `TS_01.mdoc`, movies `TS_01_001_0.0.tif`, `TS_01_002_3.0.tif`, ... (the EMPIAR-10064 mdoc in
  the mdocfile test data names its frames `TS_01_000_0.0.mrc`: same tokens, counted from 0 by that script).
- Tomo5: `Position_1.mdoc`, `Position_1_2.mdoc`, ..., movies `Position_1_2_001_-3.00_20240101_090000_fractions.tiff`
  (`_Fractions.mrc` for MRC), as in Murfey's tomography test file names.

The mdoc follows SerialEM's autodoc format (frame-file keys as in IMOD's `autodoc.h`: SubFramePath,
NumSubFrames, FrameDosesAndNumber, DateTime; header and section layout as the EMPIAR-10064 `TS_01.mrc.mdoc`
in teamtomo/mdocfile's tests): global keys, two `[T = ...]` title lines, then one `[ZValue = N]` section
per tilt in acquisition order.
"""
from __future__ import annotations

from datetime import datetime

import numpy as np

from .tomo_settings import TomoSimulationSettings
from .tomo_truth import TiltSeriesTruth, TiltTruth

SERIALEM_DATE_FORMAT = "%d-%b-%y  %H:%M:%S"
FRAMES_FOLDER = "X:\\Frames"  # where the microscope PC wrote the frames (SubFramePath)
_ELECTRONS_PER_PX_PER_S = 15.0  # dose rate on the detector, typical for counting


def series_name(settings: TomoSimulationSettings, index: int) -> str:
    """Name of tilt series `index` (0-based): TS_01, TS_02, ... or Position_1, Position_1_2, ..."""
    if settings.naming == "serialem":
        return f"TS_{index + 1:02d}"
    return "Position_1" if index == 0 else f"Position_1_{index + 1}"


def movie_name(settings: TomoSimulationSettings, series: str, order: int, angle_deg: float,
               acquired: datetime) -> str:
    """Movie file name of the tilt collected `order`-th (from 1) at nominal `angle_deg`."""
    angle = angle_deg + 0.0  # no "-0.0"
    if settings.naming == "serialem":
        return f"{series}_{order:03d}_{angle:.1f}.{'tif' if settings.movie_format == 'tiff' else 'mrc'}"
    suffix = "fractions.tiff" if settings.movie_format == "tiff" else "Fractions.mrc"
    return f"{series}_{order:03d}_{angle:.2f}_{acquired:%Y%m%d_%H%M%S}_{suffix}"


def mdoc_text(settings: TomoSimulationSettings, series: TiltSeriesTruth, tilts: list[TiltTruth]) -> str:
    """The mdoc of `series` after the tilts collected so far (`tilts`, in acquisition order).

    Readouts a real scope adds are planted too: the stage reports the tilt angle to ~0.002°, the stage
    position jitters by a few nm, and `Defocus` is the scope's own readout (constant in a series, arbitrary
    zero), unrelated to the true defocus in the truth.
    """
    rng = np.random.default_rng([settings.seed, 5, series.index])
    stage_xy = rng.uniform(-400.0, 400.0, 2)
    stage_z = rng.uniform(-50.0, 50.0)
    image_shift = rng.normal(0.0, 0.1, 2)
    scope_defocus_um = -settings.defocus_um + rng.uniform(-3.0, 3.0)
    dose_px = settings.dose_per_tilt_e_a2 * settings.pixel_size_a**2
    rotation_deg = (settings.tilt_axis_deg + 90.0 + 180.0) % 360.0 - 180.0
    start = datetime.fromisoformat(tilts[0].acquisition_time) if tilts else settings.session_start
    lines = [
        f"PixelSpacing = {settings.pixel_size_a:g}",
        f"Voltage = {settings.voltage_kv:g}",
        f"ImageFile = {series.name}.mrc",
        f"ImageSize = {settings.image_size_px} {settings.image_size_px}",
        "DataMode = 1",
        "",
        f"[T = SerialEM: Digitized on cryoem-sim Krios            {start:{SERIALEM_DATE_FORMAT}}    ]",
        "",
        f"[T =     Tilt axis angle = {settings.tilt_axis_deg:.1f}, binning = 1  spot = 8  camera = 0]",
        "",
    ]
    for tilt in tilts:
        jitter = np.random.default_rng([settings.seed, 6, tilt.z_value, series.index])
        angle_readout = tilt.tilt_angle_deg + jitter.uniform(-0.002, 0.002)
        xy = stage_xy + jitter.normal(0.0, 0.005, 2)
        shift = image_shift + jitter.normal(0.0, 0.01, 2)
        acquired = datetime.fromisoformat(tilt.acquisition_time)
        lines += [
            f"[ZValue = {tilt.z_value}]",
            f"TiltAngle = {angle_readout:.6g}",
            f"StagePosition = {xy[0]:.6g} {xy[1]:.6g}",
            f"StageZ = {stage_z:.6g}",
            "Magnification = 42000",
            "Intensity = 0.0957463",
            f"ExposureDose = {settings.dose_per_tilt_e_a2:g}",
            f"PixelSpacing = {settings.pixel_size_a:g}",
            "SpotSize = 8",
            f"Defocus = {scope_defocus_um:.6g}",
            f"ImageShift = {shift[0]:.6g} {shift[1]:.6g}",
            f"RotationAngle = {rotation_deg:g}",
            f"ExposureTime = {dose_px / _ELECTRONS_PER_PX_PER_S:.4g}",
            "Binning = 1",
            "MagIndex = 29",
            "CountsPerElectron = 1",
            f"TargetDefocus = {-settings.defocus_um:g}",
            f"PriorRecordDose = {tilt.pre_exposure_e_a2:g}",
            f"SubFramePath = {FRAMES_FOLDER}\\{tilt.movie_name}",
            f"NumSubFrames = {settings.n_frames}",
            f"FrameDosesAndNumber = {settings.dose_per_frame_e_a2:g} {settings.n_frames}",
            f"DateTime = {acquired:{SERIALEM_DATE_FORMAT}}",
            "",
        ]
    return "\n".join(lines)
