"""A whole SPA session on disk, written at once or live (movie by movie, each file growing while written).

Layout of the output folder:
  <stem>_fractions.tiff|mrc   the movies
  <stem>.xml                  EPU-like metadata, written after its movie is complete
  gain/gain_reference.mrc     gain reference (kept out of the movie folder's globs)
  ground_truth.json           SessionTruth of the movies written so far
  END_OF_SESSION              live mode only, written last
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .detector import gain_reference
from .files import epu_metadata_xml, movie_bytes, write_atomically, write_gain_reference
from .movie import SimulatedMovie, simulate_movie
from .settings import SpaSimulationSettings
from .structure import make_structure
from .truth import SessionTruth

GAIN_REFERENCE_NAME = "gain/gain_reference.mrc"
GROUND_TRUTH_NAME = "ground_truth.json"
END_MARKER_NAME = "END_OF_SESSION"


def write_spa_session(settings: SpaSimulationSettings, out_dir: str | Path) -> SessionTruth:
    """Simulate `settings.n_movies` movies into out_dir (each file appears complete); returns the truth."""
    return _write_session(settings, Path(out_dir), write_atomically)


def run_live_session(settings: SpaSimulationSettings, watch_dir: str | Path, interval_s: float,
                     chunk_delay_s: float = 0.05, n_chunks: int = 4) -> SessionTruth:
    """Act like a microscope: a new movie every `interval_s`, each written in `n_chunks` pieces under its
    final name with `chunk_delay_s` between them; the metadata XML follows the complete movie and
    `END_OF_SESSION` comes last.
    """
    def write_growing(path: Path, content: bytes) -> None:
        piece = -(-len(content) // n_chunks)
        with open(path, "wb") as handle:
            for start in range(0, len(content), piece):
                handle.write(content[start:start + piece])
                handle.flush()
                time.sleep(chunk_delay_s)

    watch_dir = Path(watch_dir)
    next_start = time.monotonic()

    def paced(path: Path, content: bytes) -> None:
        nonlocal next_start
        time.sleep(max(0.0, next_start - time.monotonic()))
        next_start = time.monotonic() + interval_s
        write_growing(path, content)

    truth = _write_session(settings, watch_dir, paced)
    (watch_dir / END_MARKER_NAME).write_text("")
    return truth


def prepare_session_folder(settings: SpaSimulationSettings, out_dir: Path) -> Path:
    """The session folder with its gain reference, as the microscope software leaves it before the first
    movie (a session is started on a folder and gain that exist); returns the gain's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_gain_reference(out_dir / GAIN_REFERENCE_NAME, gain_reference(settings), settings.pixel_size_a)


def _write_session(settings: SpaSimulationSettings, out_dir: Path,
                   write_movie: Callable[[Path, bytes], object]) -> SessionTruth:
    prepare_session_folder(settings, out_dir)
    truth = SessionTruth(settings=settings, structure=make_structure(settings),
                         gain_reference_name=GAIN_REFERENCE_NAME, movies=[])
    for index in range(settings.n_movies):
        movie = simulate_movie(settings, index)
        _write_movie_files(movie, out_dir, write_movie)
        truth.movies.append(movie.truth)
        truth.write(out_dir / GROUND_TRUTH_NAME)
    return truth


def _write_movie_files(movie: SimulatedMovie, out_dir: Path,
                       write_movie: Callable[[Path, bytes], object]) -> None:
    """Movie first, then its metadata XML, so 'metadata present' means 'movie complete'."""
    content = movie_bytes(movie.frames, movie.settings.movie_format, movie.settings.pixel_size_a)
    write_movie(out_dir / movie.truth.movie_name, content)
    write_atomically(out_dir / movie.truth.metadata_name, epu_metadata_xml(movie.truth))
