"""Movie/image I/O: round trips per format and dtype, gain and defect conventions, and clear errors on bad files."""
from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import tifffile

from airflow_provider_cryoem import simulate
from airflow_provider_cryoem.io import (
    ImageFileError,
    apply_gain,
    check_frames_finite,
    correct_defects,
    load_defect_map,
    load_gain,
    movie_shape,
    read_movie,
    read_mrc,
    read_mrc_pixel_size_a,
    read_mrc_shape,
    read_star,
    write_eer,
    write_mrc,
    write_star,
    write_tiff,
)
from airflow_provider_cryoem.io import star as star_module
from airflow_provider_cryoem.io.eer import encode_eer_frame

RNG = np.random.default_rng(7)


def counts(shape: tuple[int, ...], dtype: type = np.uint16) -> np.ndarray:
    """Poisson counts like a counting-mode camera records, in the given dtype."""
    return RNG.poisson(3.0, shape).astype(dtype)


def events(shape: tuple[int, ...], rate: float = 0.05) -> np.ndarray:
    """0/1 electron events as one EER frame holds them."""
    return (RNG.random(shape) < rate).astype(np.uint8)


def cut(path: Path, keep_bytes: int) -> Path:
    """A truncated copy of a real written file, as an interrupted transfer leaves it."""
    out = path.with_name("cut_" + path.name)
    out.write_bytes(path.read_bytes()[:keep_bytes])
    return out


# --- MRC ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float32, np.uint8])
def test_mrc_stack_round_trip_keeps_values_and_pixel_size(tmp_path: Path, dtype: type) -> None:
    frames = counts((5, 40, 56), dtype)
    path = write_mrc(tmp_path / "movie.mrcs", frames, pixel_size_a=0.83, is_stack=True)
    np.testing.assert_array_equal(read_movie(path), frames)
    assert read_mrc_pixel_size_a(path) == pytest.approx(0.83)
    with mrcfile.open(path, header_only=True) as mrc:
        assert int(mrc.header.ispg) == 0  # image stack, not a volume
        assert (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (56, 40, 5)
    assert movie_shape(path) == (5, 40, 56)


def test_mrc_single_image_is_a_one_frame_movie_and_reads_are_memory_mapped(tmp_path: Path) -> None:
    image = counts((32, 48), np.float32)
    path = write_mrc(tmp_path / "micrograph.mrc", image, pixel_size_a=1.5)
    assert isinstance(read_mrc(path), np.memmap)
    assert movie_shape(path) == (1, 32, 48)
    np.testing.assert_array_equal(read_movie(path)[0], image)


def test_mrc_frame_range_returns_only_those_frames(tmp_path: Path) -> None:
    frames = counts((6, 16, 16))
    path = write_mrc(tmp_path / "movie.mrc", frames, pixel_size_a=1.0, is_stack=True)
    np.testing.assert_array_equal(read_movie(path, frame_range=(2, 5)), frames[2:5])


def test_mrc_write_refuses_unsupported_dtype_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageFileError, match="int64.*MRC"):
        write_mrc(tmp_path / "bad.mrc", np.zeros((4, 4), np.int64), pixel_size_a=1.0)
    assert not list(tmp_path.iterdir()), "a failed write must leave neither the file nor its temp file"


# --- TIFF --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_lzw_round_trip_each_dtype(tmp_path: Path, dtype: type) -> None:
    frames = counts((4, 40, 56), dtype)
    path = write_tiff(tmp_path / "movie.tif", frames)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 4
        assert all(page.compression == tifffile.COMPRESSION.LZW for page in tif.pages)
    read = read_movie(path)
    assert read.dtype == dtype
    np.testing.assert_array_equal(read, frames)


def test_tiff_frame_range_decodes_only_the_frames_asked_for(tmp_path: Path) -> None:
    frames = counts((6, 24, 24), np.uint8)
    path = write_tiff(tmp_path / "movie.tiff", frames)
    np.testing.assert_array_equal(read_movie(path, frame_range=(1, 3)), frames[1:3])
    # garble the compressed data of the last frame: the first frames and the shape still read
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[-1].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    assert movie_shape(path) == (6, 24, 24)
    np.testing.assert_array_equal(read_movie(path, frame_range=(0, 2)), frames[:2])
    with pytest.raises(ImageFileError, match=r"frames \[0, 6\)"):
        read_movie(path)


def test_frame_range_outside_the_movie_names_the_file(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "movie.tif", counts((3, 8, 8)))
    with pytest.raises(ImageFileError, match=r"movie\.tif.*\[2, 5\).*3 frames"):
        read_movie(path, frame_range=(2, 5))


# --- EER ---------------------------------------------------------------------------------------------------------

def test_eer_fractions_sum_grouped_frames_and_drop_the_remainder(tmp_path: Path) -> None:
    eer_frames = events((47, 32, 40))
    path = write_eer(tmp_path / "movie.eer", eer_frames, pixel_size_a=0.9)
    fractions = read_movie(path, eer_grouping=10)
    assert fractions.shape == (4, 32, 40) == movie_shape(path, eer_grouping=10)
    np.testing.assert_array_equal(fractions, eer_frames[:40].reshape(4, 10, 32, 40).sum(axis=1))
    np.testing.assert_array_equal(read_movie(path, frame_range=(2, 4), eer_grouping=10), fractions[2:4])
    np.testing.assert_array_equal(read_movie(path, eer_grouping=1), eer_frames)


def test_eer_written_here_decodes_identically_with_eerfile(tmp_path: Path) -> None:
    eerfile = pytest.importorskip("eerfile")
    eer_frames = events((6, 48, 40), rate=0.2)
    path = write_eer(tmp_path / "movie.eer", eer_frames, pixel_size_a=1.1)
    np.testing.assert_array_equal(eerfile.read(path), eer_frames)
    assert eerfile.data_models.EERHeader.from_file(path).pixel_spacing_width_angstroms == pytest.approx(1.1)


@pytest.mark.parametrize("case", ["empty", "first_and_last_pixel", "gaps_of_exact_127_multiples", "dense"])
def test_eer_encoder_round_trips_edge_cases_through_imagecodecs(case: str) -> None:
    imagecodecs = pytest.importorskip("imagecodecs")
    frame = np.zeros((20, 32), np.uint8)
    if case == "first_and_last_pixel":
        frame.flat[[0, frame.size - 1]] = 1
    elif case == "gaps_of_exact_127_multiples":
        frame.flat[[127, 127 + 128, 127 + 128 + 254 + 1]] = 1
    elif case == "dense":
        frame[:] = events(frame.shape, rate=0.7)
    decoded = imagecodecs.eer_decode(encode_eer_frame(frame), frame.shape, 7, 2, 2)
    np.testing.assert_array_equal(decoded, frame.astype(bool))


def test_eer_grouping_larger_than_the_movie_is_an_error(tmp_path: Path) -> None:
    path = write_eer(tmp_path / "movie.eer", events((5, 8, 8)), pixel_size_a=1.0)
    with pytest.raises(ImageFileError, match="eer_grouping 20 exceeds the 5 EER frames"):
        read_movie(path, eer_grouping=20)


def test_tiff_renamed_to_eer_is_rejected_as_not_eer(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "movie.eer", counts((2, 8, 8)))
    with pytest.raises(ImageFileError, match="not an EER movie"):
        read_movie(path)


# --- gain --------------------------------------------------------------------------------------------------------

GAIN_2X3 = np.array([[1, 2, 3], [4, 5, 6]], np.float32)


@pytest.mark.parametrize(("rotation", "flip", "expected"), [
    (1, 0, [[3, 6], [2, 5], [1, 4]]),          # a quarter turn counter-clockwise: the top-right corner goes top-left
    (3, 0, [[4, 1], [5, 2], [6, 3]]),          # three quarter turns = one turn clockwise
    (2, 0, [[6, 5, 4], [3, 2, 1]]),
    (0, 1, [[4, 5, 6], [1, 2, 3]]),            # upside down
    (0, 2, [[3, 2, 1], [6, 5, 4]]),            # left-right
    (1, 1, [[1, 4], [2, 5], [3, 6]]),          # rotate first, then flip (flip first would give [[6,3],[5,2],[4,1]])
])
def test_gain_rotation_is_counter_clockwise_and_applied_before_flip(
        tmp_path: Path, rotation: int, flip: int, expected: list[list[int]]) -> None:
    path = write_mrc(tmp_path / "gain.mrc", GAIN_2X3, pixel_size_a=1.0)
    expected_array = np.array(expected, np.float32)
    gain = load_gain(path, rotation=rotation, flip=flip, expected_shape=expected_array.shape)
    np.testing.assert_array_equal(gain, expected_array)


def test_gain_shape_mismatch_names_the_file_and_spots_a_transposed_gain(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "gain.mrc", np.ones((40, 60), np.float32), pixel_size_a=1.0)
    with pytest.raises(ImageFileError, match=r"gain\.mrc.*\(40, 60\).*\(60, 40\).*transposed shape would match"):
        load_gain(path, expected_shape=(60, 40))
    with pytest.raises(ImageFileError) as unrelated:
        load_gain(path, expected_shape=(64, 64))
    assert "transposed" not in str(unrelated.value)
    assert load_gain(path, rotation=1, expected_shape=(60, 40)).shape == (60, 40)


def test_gain_from_a_tiff_gain_file_multiplies_into_frames(tmp_path: Path) -> None:
    gain_values = RNG.uniform(0.8, 1.2, (16, 24)).astype(np.float32)
    path = write_tiff(tmp_path / "reference.gain", gain_values, compression=None)
    gain = load_gain(path, expected_shape=(16, 24))
    frames = counts((3, 16, 24))
    corrected = apply_gain(frames, gain)
    assert corrected.dtype == np.float32
    np.testing.assert_allclose(corrected[2], frames[2] * gain_values, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_gain_with_nan_is_rejected_naming_the_file(tmp_path: Path) -> None:
    values = np.ones((8, 8), np.float32)
    values[3, 4] = np.nan
    path = write_mrc(tmp_path / "gain.mrc", values, pixel_size_a=1.0)
    with pytest.raises(ImageFileError, match=r"gain\.mrc.*1 NaN"):
        load_gain(path)


# --- defects -----------------------------------------------------------------------------------------------------

def test_defect_text_file_rectangles_use_x_as_column_and_y_as_row(tmp_path: Path) -> None:
    path = tmp_path / "defects.txt"
    path.write_text("# x y w h\n5 2 1 3\n\n0 9 4 1\n")
    mask = load_defect_map(path, frame_shape=(10, 8))
    expected = np.zeros((10, 8), bool)
    expected[2:5, 5] = True        # a bad column segment at x = 5, rows 2-4
    expected[9, 0:4] = True        # a bad row segment at y = 9
    np.testing.assert_array_equal(mask, expected)


def test_defect_text_file_with_a_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "defects.txt"
    path.write_text("1 1 1 1\n3 4 five 1\n")
    with pytest.raises(ImageFileError, match=r"defects\.txt.*line 2"):
        load_defect_map(path, frame_shape=(10, 10))


def test_defect_mrc_mask_nonzero_marks_bad_pixels(tmp_path: Path) -> None:
    values = np.zeros((12, 10), np.int8)
    values[4, 7] = 1
    values[:, 2] = 3
    path = write_mrc(tmp_path / "defects.mrc", values, pixel_size_a=1.0)
    np.testing.assert_array_equal(load_defect_map(path, frame_shape=(12, 10)), values != 0)
    with pytest.raises(ImageFileError, match="does not match"):
        load_defect_map(path, frame_shape=(10, 12))


def test_correct_defects_fills_bad_columns_and_clusters_from_good_neighbours() -> None:
    rows, cols = np.mgrid[0:48, 0:64]
    ramp = (2.0 * cols + 0.5 * rows).astype(np.float32)       # a locally linear image: symmetric means are exact
    stack = np.stack([ramp, ramp + 100])
    mask = np.zeros((48, 64), bool)
    mask[:, 30] = True                                         # a dead column
    mask[20:27, 10:17] = True                                  # a 7 x 7 cluster: needs windows wider than 3
    hot = stack.copy()
    hot[:, mask] = 60000
    hot[1, 22, 12] = np.nan                                    # a NaN bad pixel must not spread
    corrected = correct_defects(hot, mask)
    np.testing.assert_allclose(corrected[:, 1:-1, 30], stack[:, 1:-1, 30], atol=1e-3)  # symmetric neighbours
    cluster_error = corrected[:, 20:27, 10:17] - stack[:, 20:27, 10:17]
    assert np.abs(cluster_error).max() < 8.0       # within a few pixels' worth of the 2 counts/px slope
    assert abs(cluster_error.mean()) < 0.5         # one-sided fills at opposite edges cancel: no bias
    np.testing.assert_array_equal(corrected[:, ~mask], stack[:, ~mask])
    assert hot[0, 0, 30] == 60000, "the input is not modified"


def test_correct_defects_rejects_a_mask_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="mask shape"):
        correct_defects(np.zeros((4, 8, 8)), np.zeros((8, 9), bool))


# --- STAR --------------------------------------------------------------------------------------------------------

def test_star_round_trip_loops_and_key_value_blocks(tmp_path: Path) -> None:
    micrographs = pd.DataFrame({"rlnMicrographName": ["a.mrc", "b.mrc"], "rlnDefocusU": [12000.5, 15000.25]})
    path = write_star(tmp_path / "Movies" / "micrographs.star",
                      {"general": {"rlnJobIsContinue": 0}, "micrographs": micrographs})
    blocks = read_star(path)
    assert list(blocks) == ["general", "micrographs"]
    assert blocks["general"].loc[0, "rlnJobIsContinue"] == 0
    pd.testing.assert_frame_equal(blocks["micrographs"], micrographs)
    assert [p.name for p in path.parent.iterdir()] == ["micrographs.star"], "no temp file is left behind"


def test_star_write_interrupted_midway_keeps_the_previous_file(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_star(tmp_path / "a.star", {"data": pd.DataFrame({"rlnA": [1]})})
    before = path.read_text()

    def crash_after_half_a_file(data: object, filename: Path, **kwargs: object) -> None:
        Path(filename).write_text("data_data\nloop_\n_rlnA #1\n")
        raise OSError("disk full")

    monkeypatch.setattr(star_module.starfile, "write", crash_after_half_a_file)
    with pytest.raises(OSError, match="disk full"):
        write_star(path, {"data": pd.DataFrame({"rlnA": [2]})})
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.star"]


def test_star_write_refuses_a_block_that_is_neither_table_nor_mapping(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="block 'data'"):
        write_star(tmp_path / "a.star", {"data": [1, 2]})  # type: ignore[dict-item]


@pytest.mark.parametrize(("text", "problem"), [
    ("this is not a star file\n", "no STAR data blocks"),
    ("data_particles\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n10 20\n30\n", "truncated"),
    ("data_general\n_rlnJobType 1\n_rlnJobIsContinue\n", "malformed STAR"),
])
def test_malformed_star_names_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "broken.star"
    path.write_text(text)
    with pytest.raises(ImageFileError, match=rf"broken\.star.*{problem}"):
        read_star(path)


# --- bad files ---------------------------------------------------------------------------------------------------

def _written(tmp_path: Path, kind: str) -> Path:
    """A real file of each movie kind, to damage."""
    if kind == "mrc":
        return write_mrc(tmp_path / "movie.mrc", counts((4, 32, 32)), pixel_size_a=1.0, is_stack=True)
    if kind == "tiff":
        return write_tiff(tmp_path / "movie.tif", counts((4, 32, 32)))
    return write_eer(tmp_path / "movie.eer", events((4, 32, 32)), pixel_size_a=1.0)


@pytest.mark.parametrize(("kind", "keep", "problem"), [
    ("mrc", 0.9, "truncated"),
    ("mrc", 0.1, "malformed MRC header"),
    ("tiff", 0.99, "truncated|corrupt"),
    ("tiff", 0.5, "truncated|corrupt"),
    ("tiff", 0.001, "malformed or truncated"),
    ("tiff", 8, "no readable frame"),  # the header alone: a page table with no page (found by hypothesis)
    ("tiff", 822, "truncated|corrupt"),  # cut inside the second page's IFD (found by hypothesis)
    ("eer", 0.7, "truncated|corrupt"),
])
def test_truncated_movie_raises_naming_the_file(tmp_path: Path, kind: str, keep: float, problem: str) -> None:
    path = _written(tmp_path, kind)
    size = keep if keep >= 1 else max(int(path.stat().st_size * keep), 1)  # bytes kept, or a fraction
    broken = cut(path, int(size))
    with pytest.raises(ImageFileError, match=problem) as error:
        read_movie(broken, eer_grouping=2)
    assert error.value.path == str(broken)
    with pytest.raises(ImageFileError):
        movie_shape(broken, eer_grouping=2)


def test_mrc_with_a_corrupt_header_is_rejected(tmp_path: Path) -> None:
    path = _written(tmp_path, "mrc")
    raw = bytearray(path.read_bytes())
    raw[208:212] = b"XXXX"  # the MAP identifier
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageFileError, match=r"movie\.mrc.*not an MRC file"):
        read_movie(path)


def test_mrc_declaring_a_negative_size_fails_naming_the_file(tmp_path: Path) -> None:
    """Found by the hypothesis fuzz test: the top byte of nx flipped, so the memory map's length went negative."""
    path = _written(tmp_path, "mrc")
    raw = bytearray(path.read_bytes())
    raw[3] ^= 128  # nx (little-endian int32 at byte 0) becomes negative
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageFileError, match=r"movie\.mrc.*(malformed|negative|positive)"):
        read_movie(path)
    with pytest.raises(ImageFileError, match=r"movie\.mrc.*positive"):
        read_mrc_shape(path)


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("missing.tif", None, "does not exist"),
    ("empty.mrc", b"", "empty"),
    ("movie.avi", b"RIFF....", "unsupported file type '.avi'"),
    ("movie.tiff", b"not a tiff at all" * 10, "malformed or truncated TIFF"),
])
def test_unusable_file_raises_naming_file_and_problem(tmp_path: Path, name: str, content: bytes | None,
                                                      problem: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageFileError, match=problem) as error:
        read_movie(path)
    assert str(path) in str(error.value)


def test_check_frames_finite_names_the_first_bad_frame() -> None:
    frames = np.ones((5, 8, 8), np.float32)
    check_frames_finite(frames, "ok.mrc")
    check_frames_finite(counts((2, 4, 4)), "ints.tif")
    frames[3, 2, 2] = np.nan
    frames[4, 0, 0] = np.inf
    with pytest.raises(ImageFileError, match=r"bad\.mrc: frame 3 .*2 of 5 frames"):
        check_frames_finite(frames, "bad.mrc")


# --- with the project's simulator --------------------------------------------------------------------------------


def small_session(movie_format: str, **overrides: object) -> simulate.SpaSimulationSettings:
    """A 128 px, few-frame session: enough to check files and gain orientation in well under a second."""
    settings = dict(n_movies=1, image_size_px=128, n_frames=6, particles_per_micrograph=0, particle_diameter_a=40,
                    movie_format=movie_format, pixel_size_a=1.25)
    return simulate.SpaSimulationSettings(**(settings | overrides))


@pytest.mark.parametrize("movie_format", ["tiff", "mrc"])
def test_simulated_session_movies_read_back_frame_for_frame(tmp_path: Path, movie_format: str) -> None:
    settings = small_session(movie_format)
    truth = simulate.write_spa_session(settings, tmp_path)
    path = tmp_path / truth.movies[0].movie_name
    expected = simulate.simulate_movie(settings, 0).frames
    assert movie_shape(path) == expected.shape
    np.testing.assert_array_equal(read_movie(path), expected)
    np.testing.assert_array_equal(read_movie(path, frame_range=(4, 6)), expected[4:6])


def test_simulated_gain_flattens_frames_only_with_the_declared_rotation_and_flip(tmp_path: Path) -> None:
    settings = small_session("mrc", gain_variation=0.3, gain_rotation=1, gain_flip=2, dose_per_frame_e_a2=20)
    truth = simulate.write_spa_session(settings, tmp_path)
    frames = read_movie(tmp_path / truth.movies[0].movie_name)

    def relative_spread(rotation: int, flip: int) -> float:
        gain = load_gain(tmp_path / truth.gain_reference_name, rotation, flip, expected_shape=frames.shape[1:])
        total = apply_gain(frames, gain).sum(axis=0)
        return float(total.std() / total.mean())

    declared = relative_spread(1, 2)
    assert declared < 0.2
    for rotation, flip in [(3, 2), (1, 0), (1, 1), (0, 0), (2, 2)]:  # clockwise, flip missing, wrong flip, ...
        assert relative_spread(rotation, flip) > 2 * declared


def test_eer_built_from_simulated_counts_groups_back_to_them(tmp_path: Path) -> None:
    counts_per_frame = simulate.simulate_movie(small_session("tiff", n_frames=3), 0).frames.astype(np.int64)
    depth = int(counts_per_frame.max())
    # frame i becomes `depth` EER frames; EER frame k holds an event where the count exceeds k
    eer_frames = (counts_per_frame[:, None] > np.arange(depth)[None, :, None, None]).reshape(-1, 128, 128)
    path = write_eer(tmp_path / "movie.eer", eer_frames.astype(np.uint8), pixel_size_a=1.25)
    np.testing.assert_array_equal(read_movie(path, eer_grouping=depth), counts_per_frame)
