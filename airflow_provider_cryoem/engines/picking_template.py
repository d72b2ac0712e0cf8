"""A reference made from the micrograph's own best blobs, and its normalised cross-correlation map.

Blob filters (LoG) see a particle as a dark disc; particles that are rings (apoferritin near focus), packed
edge to edge or barely darker than the ice are not discs, and the LoG finds as many blobs of the opposite
contrast there. The particles themselves share one projection profile: the average of the candidates the blob
filters are surest of, centred by cross-correlation and rotationally averaged (orientation-free), is a
reference for all of them, and its normalised cross-correlation (NCC) with every location scores the
micrograph by that profile rather than by a disc. It helps where the blob picks are mostly right but the
threshold is not (packed particles, EMPIAR-10059); where they are at chance (apoferritin, EMPIAR-10947 in
BENCHMARKS.md) the average is of noise. Pure numpy / scipy: the NCC is four FFTs of the padded image.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

# Box around a candidate, in particle diameters: the particle and a ring of its surroundings.
_BOX_DIAMETERS = 1.5
# Rounds of re-centring each candidate on the running average; shifts kept within this share of a diameter.
_CENTRING_ROUNDS = 3
_MAX_SHIFT_DIAMETERS = 0.2


def rotational_average(image: np.ndarray) -> np.ndarray:
    """`image` replaced by the mean over rings about its centre (linear in the radius): orientation-free."""
    ny, nx = image.shape
    y, x = np.indices(image.shape, dtype=np.float64)
    radius = np.hypot(y - (ny - 1) / 2, x - (nx - 1) / 2)
    lower = np.floor(radius).astype(np.int64)
    weight = radius - lower
    bins = lower.max() + 2
    sums = (np.bincount(lower.ravel(), (1 - weight).ravel() * image.ravel(), bins)
            + np.bincount(lower.ravel() + 1, weight.ravel() * image.ravel(), bins))
    counts = (np.bincount(lower.ravel(), (1 - weight).ravel(), bins)
              + np.bincount(lower.ravel() + 1, weight.ravel(), bins))
    profile = sums / np.maximum(counts, 1e-12)
    return (profile[lower] * (1 - weight) + profile[lower + 1] * weight).astype(np.float32)


def _boxes(image: np.ndarray, centres: np.ndarray, half_px: int) -> np.ndarray:
    """Boxes of (2 half + 1)² pixels around integer [row, col] `centres` that lie wholly inside `image`."""
    return np.stack([image[r - half_px:r + half_px + 1, c - half_px:c + half_px + 1] for r, c in centres])


def _inside(centres: np.ndarray, shape: tuple[int, ...], half_px: int) -> np.ndarray:
    return np.all((centres >= half_px) & (centres < np.array(shape) - half_px), axis=1)


def self_reference(image: np.ndarray, centres: np.ndarray, diameter_px: float) -> np.ndarray | None:
    """The rotationally averaged mean of the boxes around `centres` ([row, col]), each re-centred on the running
    mean by cross-correlation a few times (the blob filters place a ring-shaped or touching particle's centre
    only roughly). None with fewer than 8 candidates inside the image."""
    half = max(2, int(round(_BOX_DIAMETERS * diameter_px / 2)))
    max_shift = max(1, int(round(_MAX_SHIFT_DIAMETERS * diameter_px)))
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    centres = centres[_inside(centres, image.shape, half + max_shift)]
    if len(centres) < 8:
        return None
    reference = rotational_average(_boxes(image, centres, half).mean(axis=0))
    offsets = np.arange(-max_shift, max_shift + 1)
    for _ in range(_CENTRING_ROUNDS):
        # each candidate's cross-correlation with the reference over the allowed shifts, best shift taken
        wide = _boxes(image, centres, half + max_shift)
        kernel = reference - reference.mean()
        scores = np.stack([np.einsum("nij,ij->n", wide[:, max_shift + dy:max_shift + dy + 2 * half + 1,
                                                          max_shift + dx:max_shift + dx + 2 * half + 1], kernel)
                           for dy in offsets for dx in offsets], axis=1)
        best = np.argmax(scores, axis=1)
        shifts = np.stack([offsets[best // len(offsets)], offsets[best % len(offsets)]], axis=1)
        centres = centres + shifts
        centres = centres[_inside(centres, image.shape, half + max_shift)]
        if len(centres) < 8:
            return None
        reference = rotational_average(_boxes(image, centres, half).mean(axis=0))
    return reference


def normalised_cross_correlation(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """NCC of `reference` (within the disc its square box holds) with `image` at every pixel:
    the Pearson correlation of the reference with the image patch under it, so a location scores by its
    profile, not by its contrast or the local ice level. Edges mirror-padded; FFTs of the padded image."""
    size = reference.shape[0]
    centre = (size - 1) / 2
    y, x = np.indices(reference.shape)
    disc = (np.hypot(y - centre, x - centre) <= centre).astype(np.float64)
    count = disc.sum()
    kernel = (reference - (reference * disc).sum() / count) * disc
    kernel /= max(float(np.sqrt((kernel ** 2).sum())), 1e-12)
    pad = size
    padded = np.pad(image.astype(np.float64), pad, mode="symmetric")
    shape = padded.shape
    spectrum = scipy.fft.rfft2(padded, workers=-1)

    def correlate(spectrum_: np.ndarray, weights: np.ndarray) -> np.ndarray:
        flipped = np.zeros(shape)
        flipped[:size, :size] = weights[::-1, ::-1]
        result = scipy.fft.irfft2(spectrum_ * scipy.fft.rfft2(flipped, workers=-1), s=shape, workers=-1)
        shift = size // 2
        return result[pad + shift:pad + shift + image.shape[0], pad + shift:pad + shift + image.shape[1]]

    numerator = correlate(spectrum, kernel)
    local_sum = correlate(spectrum, disc)
    local_sq = correlate(scipy.fft.rfft2(padded ** 2, workers=-1), disc)
    variance = np.maximum(local_sq - local_sum ** 2 / count, 1e-12 * count)
    return (numerator / np.sqrt(variance)).astype(np.float32)


