"""Automatic 2D class selection: score each class average, keep the classes above a threshold.

Relion 3.1 has no class ranker, so this is our own scorer. A good class average shows a compact,
centred, contrasted object of about the particle's size and reaches a good resolution; junk
classes show empty noise (low contrast), ice or carbon edges (mass near the mask edge), off-centre
blobs (centre of mass far from the box centre), far more or less total signal than the batch's
typical class (aggregates, empty ice), or hold a sliver of the particles. Each feature is mapped to
[0, 1]. The class score is the product of two weighted means: shape (mass inside the disc, centring) and
quality (contrast, resolution, population, intensity). After alignment nearly every class of LoG picks is a
compact, centred blob, aggregates included, so shape can only reject a class, never vouch for it: as one
weighted mean with the rest it gave any blob 0.35 of the score, and the demo session's pure-aggregate class
passed min score 0.7 at 0.76-0.80 (issue 19, BENCHMARKS.md). Contrast, resolution and intensity are judged
against the classes that pass the shape test, so a carbon-edge class (strong contrast) does not set the bar
for the particles.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

# weights of the features within their group's weighted mean (shape or quality)
WEIGHTS = {"contrast": 0.2, "mass_inside": 0.2, "centring": 0.15, "resolution": 0.2, "population": 0.1,
           "intensity": 0.15}
SHAPE_FEATURES = ("mass_inside", "centring")
QUALITY_FEATURES = ("contrast", "resolution", "population", "intensity")
# Classes whose shape score reaches this set the batch's reference contrast, resolution and intensity.
REFERENCE_MIN_SHAPE = 0.5
# A class whose total signal is this factor above or below the batch's typical class scores 0 on intensity.
INTENSITY_TOLERANCE_FACTOR = 1.5


class ClassSelectionSettings(BaseModel):
    min_score: float = Field(0.7, ge=0, le=1, description="SessionConfig.class_selection_min_score.")
    particle_diameter_a: float = Field(gt=0)
    pixel_size_a: float = Field(gt=0, description="Pixel size of the class averages (Å).")
    min_particles_per_class: int = Field(1, ge=0, description="Classes with fewer particles are never selected.")


class ClassFeatures(BaseModel):
    """What the score is made of, for one class."""

    class_number: int
    particles: int
    particle_fraction: float
    resolution_a: float | None
    contrast: float = Field(description="Std of the average inside the particle disc (the average's units).")
    mass_inside_fraction: float = Field(description="Share of |average| energy inside the particle disc.")
    centre_offset_fraction: float = Field(description="Centre-of-mass offset over the particle radius.")
    intensity: float = Field(0.0, description="Background-subtracted sum of the average inside the particle disc: "
                                              "the class's total signal (the average's units).")


class ClassScore(BaseModel):
    class_number: int
    score: float
    selected: bool
    features: ClassFeatures


class SelectionQuality(BaseModel):
    """Selection against planted truth, per particle: a particle is kept when its class is selected."""

    precision: float = Field(description="Kept particles that are real (not junk).")
    recall: float = Field(description="Real particles that were kept.")
    junk_rejected: float = Field(description="Junk particles that were rejected.")
    kept: int
    total: int


def _radius_map(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    yy -= shape[0] // 2
    xx -= shape[1] // 2
    return xx, yy, np.hypot(xx, yy)


def class_features(average: np.ndarray, class_number: int, particles: int, particle_fraction: float,
                   resolution_a: float | None, settings: ClassSelectionSettings) -> ClassFeatures:
    """The features of one class average `(ny, nx)`, centred on the box centre as Relion writes them."""
    image = np.asarray(average, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < 8:
        raise ValueError(f"class {class_number}: average must be a 2D image of at least 8×8 px, got {image.shape}")
    xx, yy, radius = _radius_map(image.shape)
    particle_radius_px = 0.5 * settings.particle_diameter_a / settings.pixel_size_a
    box_radius_px = 0.5 * min(image.shape)
    inside = radius <= particle_radius_px
    ring = (radius > particle_radius_px) & (radius <= box_radius_px)
    if not inside.any() or not ring.any():
        raise ValueError(f"particle diameter {settings.particle_diameter_a} Å does not fit a "
                         f"{image.shape[1]}-px box at {settings.pixel_size_a} Å/px")
    background = float(np.median(image[ring])) if ring.any() else 0.0
    signal = image - background
    energy = signal**2
    total_energy = float(energy[inside | ring].sum())
    mass_inside = float(energy[inside].sum()) / total_energy if total_energy > 0 else 0.0
    positive = np.clip(signal, 0.0, None) * (radius <= box_radius_px)
    mass = float(positive.sum())
    if mass > 0:
        offset_px = float(np.hypot((positive * xx).sum() / mass, (positive * yy).sum() / mass))
    else:
        offset_px = particle_radius_px
    return ClassFeatures(class_number=class_number, particles=particles, particle_fraction=particle_fraction,
                         resolution_a=resolution_a, contrast=float(signal[inside].std()),
                         mass_inside_fraction=mass_inside, centre_offset_fraction=offset_px / particle_radius_px,
                         intensity=float(signal[inside].sum()))


def _shape_parts(f: ClassFeatures) -> dict[str, float]:
    return {
        # an equal share of the particle energy inside and outside the disc scores 0, all inside 1
        "mass_inside": float(np.clip((f.mass_inside_fraction - 0.5) / 0.45, 0.0, 1.0)),
        # centred within a tenth of the radius scores 1, off by half the radius or more scores 0
        "centring": float(np.clip((0.5 - f.centre_offset_fraction) / 0.4, 0.0, 1.0)),
    }


def _weighted_mean(parts: dict[str, float], names: Sequence[str]) -> float:
    return sum(WEIGHTS[k] * min(parts[k], 1.0) for k in names) / sum(WEIGHTS[k] for k in names)


def score_features(features: Sequence[ClassFeatures], settings: ClassSelectionSettings) -> list[ClassScore]:
    """Scores in [0, 1]: shape × quality; contrast, resolution and intensity relative to the particle-like
    classes (shape ≥ REFERENCE_MIN_SHAPE; all populated classes where none is), the rest absolute."""
    if not features:
        return []
    shapes = [_weighted_mean(_shape_parts(f), SHAPE_FEATURES) for f in features]
    reference = ([f for f, shape in zip(features, shapes) if f.particles > 0 and shape >= REFERENCE_MIN_SHAPE]
                 or [f for f in features if f.particles > 0])
    best_contrast = max((f.contrast for f in reference), default=0.0)
    resolutions = [f.resolution_a for f in reference if f.resolution_a and f.resolution_a < 900]
    best_resolution = min(resolutions) if resolutions else None
    typical_intensity = _typical_intensity(reference)
    n_classes = len(features)
    scores = []
    for f, shape in zip(features, shapes):
        parts = {
            "contrast": f.contrast / best_contrast if best_contrast > 0 else 0.0,
            "resolution": (best_resolution / f.resolution_a
                           if best_resolution and f.resolution_a and f.resolution_a < 900 else 0.0),
            # at least a fair share (1/K) of the particles scores 1
            "population": float(np.clip(f.particle_fraction * n_classes, 0.0, 1.0)),
            # the batch's typical total signal scores 1; INTENSITY_TOLERANCE_FACTOR times more or less scores 0
            "intensity": (float(np.clip(1 - abs(np.log(f.intensity / typical_intensity))
                                        / np.log(INTENSITY_TOLERANCE_FACTOR), 0.0, 1.0))
                          if typical_intensity and f.intensity > 0 else 0.0),
        }
        score = 0.0 if f.particles == 0 else shape * _weighted_mean(parts, QUALITY_FEATURES)
        selected = score >= settings.min_score and f.particles >= max(settings.min_particles_per_class, 1)
        scores.append(ClassScore(class_number=f.class_number, score=round(score, 4), selected=selected, features=f))
    return scores


def _typical_intensity(features: Sequence[ClassFeatures]) -> float | None:
    """The particle-weighted median of the classes' total signal: what most particles' classes hold.

    Aggregates (denser than protein), empty ice and carbon hold more or less signal than the particle,
    which the other features miss when such a class is compact, centred and contrasted (RELION 4's class
    ranker likewise uses a relative signal intensity; Kimanius et al. 2021, Biochem J 478:4169).
    """
    weighted = sorted((f.intensity, f.particles) for f in features if f.particles > 0 and f.intensity > 0)
    if not weighted:
        return None
    cumulative = np.cumsum([n for _, n in weighted])
    return weighted[int(np.searchsorted(cumulative, cumulative[-1] / 2))][0]


def score_classes(averages: np.ndarray, particles: Sequence[int], particle_fractions: Sequence[float],
                  resolutions_a: Sequence[float | None], settings: ClassSelectionSettings) -> list[ClassScore]:
    """Score a class-average stack `(K, ny, nx)`; class numbers are 1..K in stack order."""
    stack = np.asarray(averages)
    if stack.ndim != 3 or not (len(stack) == len(particles) == len(particle_fractions) == len(resolutions_a)):
        raise ValueError(f"averages {stack.shape} and per-class lists ({len(particles)}, {len(particle_fractions)}, "
                         f"{len(resolutions_a)}) must describe the same K classes")
    features = [class_features(stack[k], k + 1, int(particles[k]), float(particle_fractions[k]), resolutions_a[k],
                               settings) for k in range(len(stack))]
    return score_features(features, settings)


def fraction_threshold(scores: Sequence[ClassScore], fraction_to_remove: float) -> float:
    """cryoem-services' fallback threshold: the `fraction_to_remove` quantile of the class scores."""
    if not scores or not 0 <= fraction_to_remove <= 1:
        raise ValueError("need scores and a fraction_to_remove in [0, 1]")
    return float(np.quantile([s.score for s in scores], fraction_to_remove))


def selection_quality(particle_classes: Sequence[int], selected_classes: Sequence[int],
                      is_junk: Sequence[bool]) -> SelectionQuality:
    """Precision/recall of keeping real particles, from each particle's class and its junk label."""
    classes = np.asarray(particle_classes)
    junk = np.asarray(is_junk, dtype=bool)
    if classes.shape != junk.shape:
        raise ValueError(f"{len(classes)} class numbers for {len(junk)} junk labels")
    kept = np.isin(classes, list(selected_classes))
    real = ~junk
    return SelectionQuality(precision=float((kept & real).sum() / kept.sum()) if kept.any() else 0.0,
                            recall=float((kept & real).sum() / real.sum()) if real.any() else 0.0,
                            junk_rejected=float((~kept & junk).sum() / junk.sum()) if junk.any() else 1.0,
                            kept=int(kept.sum()), total=len(classes))
