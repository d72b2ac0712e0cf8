"""Checks every reader makes before opening a file, so a missing or empty file gets the same clear error."""
from __future__ import annotations

from pathlib import Path

from .errors import ImageFileError


def require_file(path: str | Path, suffixes: tuple[str, ...] | None = None) -> Path:
    """Return `path` as a Path if it is a non-empty regular file (with one of `suffixes`), else raise."""
    path = Path(path)
    if not path.exists():
        raise ImageFileError(path, "file does not exist")
    if not path.is_file():
        raise ImageFileError(path, "is not a regular file")
    if path.stat().st_size == 0:
        raise ImageFileError(path, "file is empty (0 bytes)")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ImageFileError(path, f"unsupported file type {path.suffix or '(no suffix)'!r}; "
                                   f"expected one of {', '.join(suffixes)}")
    return path


def check_frame_range(path: Path, frame_range: tuple[int, int] | None, n_frames: int) -> tuple[int, int]:
    """Resolve a half-open `[start, stop)` frame range against a movie of `n_frames` frames."""
    if frame_range is None:
        return 0, n_frames
    start, stop = (int(v) for v in frame_range)
    if not 0 <= start < stop <= n_frames:
        raise ImageFileError(path, f"frame range [{start}, {stop}) is outside the movie's {n_frames} frames")
    return start, stop
