"""Synthetic cryo-EM sessions with ground truth: movies, gain, metadata and every planted value.

Modules, one step of image formation each, so a tilt-series simulator can reuse them:
structure (particle, orientations, 3D map) → specimen (placement, ice, carbon, phase) → optics (CTF,
envelope, dose damage) → motion (drift, local warp) → detector (gain, counts) → movie (one movie)
→ files / session (what lands on disk, at once or live). Tilt series: tomo_settings → tomo_phantom (the
volume) → engines.tomo_projection → tomo_image (one tilt) → tilt_series (series, mdoc, live), with tomo_truth.
"""
from ..io.gain import orient_gain
from .detector import gain_as_written
from .movie import SimulatedMovie, simulate_movie
from .session import (
    END_MARKER_NAME,
    GAIN_REFERENCE_NAME,
    GROUND_TRUTH_NAME,
    prepare_session_folder,
    run_live_session,
    write_spa_session,
)
from .settings import SpaSimulationSettings
from .structure import euler_matrix, make_structure, render_volume
from .tilt_series import SimulatedTilt, TiltSeriesSimulation, run_live_tomo_session, write_tomo_session
from .tomo_settings import TomoSimulationSettings
from .tomo_truth import TiltSeriesTruth, TiltTruth, TomoObjectTruth, TomoSessionTruth
from .truth import (
    CarbonEdgeTruth,
    ContaminantTruth,
    LocalMotionTruth,
    MovieTruth,
    ParticleTruth,
    SessionTruth,
    StructureTruth,
)

__all__ = [
    "END_MARKER_NAME", "GAIN_REFERENCE_NAME", "GROUND_TRUTH_NAME", "CarbonEdgeTruth", "ContaminantTruth",
    "LocalMotionTruth",
    "MovieTruth", "ParticleTruth", "SessionTruth", "SimulatedMovie", "SpaSimulationSettings", "StructureTruth",
    "euler_matrix", "gain_as_written", "make_structure", "orient_gain", "prepare_session_folder", "render_volume",
    "run_live_session",
    "simulate_movie", "write_spa_session",
    "SimulatedTilt", "TiltSeriesSimulation", "TiltSeriesTruth", "TiltTruth", "TomoObjectTruth", "TomoSessionTruth",
    "TomoSimulationSettings", "run_live_tomo_session", "write_tomo_session",
]
