"""What each extracted particle of a simulated session really is, for measuring class selection.

A particle row (its micrograph and centre) is matched to the nearest planted object of that movie
within half a particle diameter: a real particle, a planted junk aggregate, or nothing (a false pick
on ice or carbon). Coordinates are frame-0 pixels of the movie, as the simulator plants them and as
motion correction aligns to (super-resolution is not simulated).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath

import numpy as np
from pydantic import BaseModel

from .truth import ParticleTruth, SessionTruth

PARTICLE, JUNK, FALSE_PICK = "particle", "junk", "false_pick"


class SelectionMeasure(BaseModel):
    """Precision: share of the kept particles that are real; recall: share of the real ones kept."""

    precision: float
    recall: float
    kept: int
    real_extracted: int
    junk_or_false_extracted: int


def planted_objects(truth: SessionTruth, micrograph_names: Iterable[str], x_px: Iterable[float],
                    y_px: Iterable[float]) -> list[ParticleTruth | None]:
    """For each (micrograph, x, y): the nearest planted object of that movie within half its diameter, or
    None (a false pick on ice or carbon)."""
    movies = {PurePath(m.movie_name).stem: m for m in truth.movies}
    found: list[ParticleTruth | None] = []
    for name, x, y in zip(micrograph_names, x_px, y_px):
        movie = movies.get(PurePath(name).stem)
        if movie is None or not movie.particles:
            found.append(None)
            continue
        centres = np.array([[p.x_px, p.y_px] for p in movie.particles])
        distance = np.hypot(centres[:, 0] - x, centres[:, 1] - y)
        nearest = movie.particles[int(np.argmin(distance))]
        found.append(nearest if distance.min() <= 0.5 * nearest.diameter_a / movie.pixel_size_a else None)
    return found


def label_particles(truth: SessionTruth, micrograph_names: Iterable[str], x_px: Iterable[float],
                    y_px: Iterable[float]) -> list[str]:
    """PARTICLE, JUNK or FALSE_PICK for each (micrograph, x, y)."""
    return [FALSE_PICK if planted is None else JUNK if planted.is_junk else PARTICLE
            for planted in planted_objects(truth, micrograph_names, x_px, y_px)]


def selection_measure(extracted_labels: list[str], kept_labels: list[str]) -> SelectionMeasure:
    real = extracted_labels.count(PARTICLE)
    kept_real = kept_labels.count(PARTICLE)
    return SelectionMeasure(precision=kept_real / len(kept_labels) if kept_labels else 0.0,
                            recall=kept_real / real if real else 0.0, kept=len(kept_labels),
                            real_extracted=real, junk_or_false_extracted=len(extracted_labels) - real)
