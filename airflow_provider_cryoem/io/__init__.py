"""Readers and writers for the files microscopes and Relion write: movies, gain and defect maps, STAR."""
from .defects import correct_defects, load_defect_map
from .eer import read_eer, write_eer
from .errors import ImageFileError
from .gain import apply_gain, load_gain, orient_gain
from .image import read_image_2d
from .mdoc import MdocSeries, MdocTilt, read_mdoc
from .movie import MOVIE_SUFFIXES, check_frames_finite, movie_shape, read_movie
from .mrc import read_mrc, read_mrc_pixel_size_a, read_mrc_shape, write_mrc
from .star import read_star, write_star
from .tiff import read_tiff, write_tiff

__all__ = [
    "MOVIE_SUFFIXES",
    "ImageFileError",
    "apply_gain",
    "check_frames_finite",
    "correct_defects",
    "load_defect_map",
    "load_gain",
    "movie_shape",
    "orient_gain",
    "read_eer",
    "read_image_2d",
    "read_movie",
    "read_mrc",
    "read_mrc_pixel_size_a",
    "read_mrc_shape",
    "read_star",
    "read_tiff",
    "write_eer",
    "write_mrc",
    "write_star",
    "write_tiff",
]
