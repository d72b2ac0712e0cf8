"""Which recorded images the dashboard serves, and the checks made before serving one.

A request names an image by its kind and the id of the result row that recorded it, never by a path:
the path is the one the results database holds for that row. It is served only when it resolves (links
followed) under the configured data roots (CRYOEM_DATA_ROOTS, see config.allowed_data_roots), has an
image suffix, and is an existing file. A relative recorded path is taken inside the session's
processing folder.

Class images are recorded as Relion records them, `NNNNNN@run_itNNN_classes.mrcs` (a 2D class average) or
a map (a 3D class): those are drawn into a PNG here (the stack's image; the map's projection along z),
under the same checks with MRC suffixes instead of image ones.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
from PIL import Image

from sqlalchemy import Connection, Table, select

from ..config import ConfigError, check_under_roots
from ..engines.thumbnails import stretch_to_uint8
from ..io import read_mrc
from ..results import schema
from ..results.errors import ResultsNotFoundError
from ..results.summary import CTF, MOTION_CORRECTION, PARTICLE_PICKING

MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}  # no SVG: it can carry scripts


@dataclass(frozen=True)
class MovieImage:
    """An image recorded with a per-movie result: its stage (queries.PER_MOVIE_TABLES), path column, row id."""

    stage: str
    column: str
    id_column: str


MOVIE_IMAGE_KINDS = {
    "micrograph": MovieImage(MOTION_CORRECTION, "micrograph_snapshot_full_path", "motion_correction_id"),
    "drift": MovieImage(MOTION_CORRECTION, "drift_plot_full_path", "motion_correction_id"),
    "ctf_fit": MovieImage(CTF, "fft_theoretical_full_path", "ctf_id"),
    "picks": MovieImage(PARTICLE_PICKING, "summary_image_full_path", "particle_picker_id"),
}
# A CTF row records its diagnostic spectrum, an MRC (what Relion's rlnCtfImage names); the picture for people
# lies beside it as `<stem>_ctf.png` (written by the built-in engine and, for CTFFIND, by the recorder).
_PICTURE_BESIDE = {"ctf_fit": "_ctf.png"}
TOMOGRAM_IMAGE_KINDS = {  # kind -> tomogram column
    "central_slice": "central_slice_image",
    "projection_xy": "projection_xy_image",
    "projection_xz": "projection_xz_image",
    "tilt_movie": "tilt_series_movie",
    "alignment_plot": "alignment_plot",
}
# kind -> (processing type, processed_tomogram column): the pictures of a denoised or segmented tomogram
PROCESSED_TOMOGRAM_IMAGE_KINDS = {
    "denoised_slice": ("Denoised", "central_slice_image"),
    "segmentation_slice": ("Segmented", "central_slice_image"),
    "segmentation_projection": ("Segmented", "projection_xy_image"),
}
_SOURCES: dict[str, tuple[Table, str]] = {  # kind -> (table, path column), looked up by the table's id
    **{kind: ({MOTION_CORRECTION: schema.motion_correction, CTF: schema.ctf,
               PARTICLE_PICKING: schema.particle_picker}[image.stage], image.column)
       for kind, image in MOVIE_IMAGE_KINDS.items()},
    **{kind: (schema.tomogram, column) for kind, column in TOMOGRAM_IMAGE_KINDS.items()},
    **{kind: (schema.processed_tomogram, column) for kind, (_, column) in PROCESSED_TOMOGRAM_IMAGE_KINDS.items()},
    **{kind: (schema.particle_classification, "class_image_full_path") for kind in ("class2d", "class3d")},
}
CLASS_IMAGE_KINDS = ("class2d", "class3d")  # drawn from the recorded MRC stack or map
MRC_SUFFIXES = (".mrcs", ".mrc")
CLASS_IMAGE_MIN_PX = 96  # small class averages are enlarged (nearest neighbour) to at least this
IMAGE_KINDS = tuple(_SOURCES)


class ImageRefusedError(ValueError):
    """The recorded path is not one the dashboard may serve (outside the data roots, not an image)."""


@dataclass(frozen=True)
class RecordedImage:
    session_id: int
    processing_directory: str
    path: str


def recorded_image(connection: Connection, kind: str, row_id: int) -> RecordedImage:
    """The path recorded for image `kind` of result row `row_id`, and its session; ResultsNotFoundError if none."""
    if kind not in _SOURCES:
        raise ResultsNotFoundError(f"no image kind {kind!r} (kinds: {', '.join(IMAGE_KINDS)})")
    table, column = _SOURCES[kind]
    job, session = schema.processing_job, schema.session
    statement = select(table.c[column], session.c.session_id, session.c.processing_directory)
    if table is schema.particle_classification:
        group = schema.particle_classification_group
        statement = statement.select_from(table.join(group).join(job).join(session))
    elif table is schema.processed_tomogram:
        statement = statement.select_from(table.join(schema.tomogram).join(job).join(session))
    else:
        statement = statement.select_from(table.join(job).join(session))
    row = connection.execute(statement.where(next(iter(table.primary_key.columns)) == row_id)).first()
    if row is None or row[0] is None:
        raise ResultsNotFoundError(f"no {kind} image recorded for row {row_id}")
    path = row[0]
    if kind in _PICTURE_BESIDE and PurePath(path).suffix.lower() not in MEDIA_TYPES:
        path = str(PurePath(path).with_name(PurePath(path).stem + _PICTURE_BESIDE[kind]))
    return RecordedImage(session_id=row.session_id, processing_directory=row.processing_directory, path=path)


def _checked_file(recorded: str, image: RecordedImage, suffixes: tuple[str, ...], roots: list[Path] | None) -> Path:
    path = Path(recorded)
    if not path.is_absolute():
        path = Path(image.processing_directory) / path
    resolved = path.resolve()
    if resolved.suffix.lower() not in suffixes:
        raise ImageRefusedError(f"not a file type the dashboard serves ({', '.join(suffixes)})")
    try:
        check_under_roots(resolved, "image", roots)
    except ConfigError:
        raise ImageRefusedError("the recorded image lies outside the data roots") from None
    if not resolved.is_file():
        raise ResultsNotFoundError("the recorded image file does not exist (any more)")
    return resolved


def servable_path(image: RecordedImage, roots: list[Path] | None = None) -> Path:
    """The file to send: resolved, an image, under the data roots (default CRYOEM_DATA_ROOTS), existing."""
    return _checked_file(image.path, image, tuple(MEDIA_TYPES), roots)


def class_image_png(image: RecordedImage, roots: list[Path] | None = None) -> bytes:
    """A class's image as PNG: image NNNNNN of the recorded stack (`NNNNNN@stack.mrcs`), or the recorded
    map projected along z; the stack or map checked as servable_path checks an image."""
    number, _, recorded = image.path.rpartition("@")
    if number and not number.isdigit():
        raise ImageRefusedError("the recorded class image is not NNNNNN@<stack>")
    path = _checked_file(recorded, image, MRC_SUFFIXES, roots)
    return _class_png(str(path), int(number) if number else 0, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=512)
def _class_png(path: str, number: int, mtime_ns: int) -> bytes:
    """Drawn once per file version (mtime in the key): a gallery's polls then cost a stat per class."""
    data = read_mrc(path)
    if number:
        stack = data.reshape(-1, *data.shape[-2:])
        if not 1 <= number <= len(stack):
            raise ResultsNotFoundError(f"class image {number} is not in its stack of {len(stack)}")
        picture = np.asarray(stack[number - 1], dtype=np.float32)
    else:
        picture = np.asarray(data, dtype=np.float32)
        picture = picture.sum(axis=0) if picture.ndim == 3 else picture
    scale = max(1, -(-CLASS_IMAGE_MIN_PX // max(picture.shape)))
    pixels = np.kron(stretch_to_uint8(picture, 0.5, 99.5), np.ones((scale, scale), dtype=np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
