"""Tilt-series ingest decisions: tilt names, matching movies to series, and when a series is complete."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_cryoem.ingest import MovieFile
from airflow_provider_cryoem.io import ImageFileError, MdocSeries, MdocTilt, read_mdoc
from airflow_provider_cryoem.tomo_ingest import DUPLICATE_ANGLE, TiltName, plan_series, tilt_of_movie

FIXTURES = Path(__file__).parent / "fixtures" / "mdoc"
T0 = 1_700_000_000.0
RULES = {"stable_for_s": 30.0, "tilt_series_idle_s": 600.0}


def mdoc(name: str, angles: list[float], *, mtime_s: float = T0, pixel: float = 1.5, names: bool = True,
         pending: int = 0, pixels: list[float] | None = None) -> MdocSeries:
    tilts = [MdocTilt(z_value=z, tilt_angle_deg=a, movie_name=f"{name}_{z + 1:03d}_{a:.1f}.tif" if names else None,
                      exposure_dose_e_a2=3.0, pixel_spacing_a=(pixels[z] if pixels else pixel))
             for z, a in enumerate(angles)]
    return MdocSeries(path=f"/visit/{name}.mdoc", name=name, pixel_spacing_a=pixel, voltage_kv=300.0,
                      tilt_axis_deg=85.0, tilts=tilts, pending_sections=pending, mtime_s=mtime_s)


def movies_for(series: MdocSeries, mtime_s: float = T0, folder: str = "frames/") -> list[MovieFile]:
    return [MovieFile(folder + t.movie_name, 1000, mtime_s) for t in series.tilts if t.movie_name]


def movie(name: str, mtime_s: float = T0) -> MovieFile:
    return MovieFile(name, 1000, mtime_s)


def only(plan):
    assert len(plan.series) == 1
    return plan.series[0]


# --- tilt names -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("TS_01_001_0.0.tif", TiltName("TS_01", 1, 0.0)),
    ("TS_01_003_-3.0_Dec02_12.01.33.tif", TiltName("TS_01", 3, -3.0)),
    ("frames/TS_01_040_60.0.mrc", TiltName("TS_01", 40, 60.0)),  # EMPIAR-10064 SubFramePath names
    ("chrom_07_ts_010_167_000_-0.0.mrc", TiltName("chrom_07_ts_010_167", 0, 0.0)),  # eBIC 2022
    ("lamella3_TS_12_007_-12.00.eer", TiltName("lamella3_TS_12", 7, -12.0)),
])
def test_serialem_names_give_series_tilt_number_and_angle(name, expected):
    assert tilt_of_movie(name) == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("Position_1_2_001_-3.00_20231003_102030_fractions.tiff", TiltName("Position_1_2", 1, -3.0)),
    ("Position_1_001_0.0_20250715_012434_fractions.tiff", TiltName("Position_1", 1, 0.0)),
    ("Position_1_2_002_3.0_20250715_012434_Fractions.mrc", TiltName("Position_1_2", 2, 3.0)),
    ("D:\\User\\Position_1_1_001_0.00_22220202_090000_EER.eer", TiltName("Position_1_1", 1, 0.0)),
    ("name1_004_9.0_20250715_012434_fractions.tiff", TiltName("name1", 4, 9.0)),
])
def test_tomo5_names_give_series_tilt_number_and_angle(name, expected):
    assert tilt_of_movie(name) == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("Position_1_001[30.00]-123.eer", TiltName("Position_1", 1, 30.0)),
    ("Position_1_001[10.00]_EER.eer", TiltName("Position_1", 1, 10.0)),
    ("Position_1_002_[-30.0]_date_time_fractions.tiff", TiltName("Position_1", 2, -30.0)),
    ("Position_12_015[-45]_fractions.tiff", TiltName("Position_12", 15, -45.0)),
])
def test_old_tomo_bracketed_names_give_series_tilt_number_and_angle(name, expected):
    assert tilt_of_movie(name) == expected


@pytest.mark.parametrize("name", [
    "gain.mrc", "FoilHole_25598436_Data_25597084_25597086_20210625_171939_fractions.tiff", "TS_01.tif",
    "TS_01_001_0.0.tif.mdoc", "TS_01_001_0.0.jpg", "TS_01_001_91.0.tif", "_001_3.0.tif", ".tif", "",
    "TS_01_001_x3.0.tif", "TS_01_abc_3.0.tif", "Position_1_001[abc].eer", "a/b/",
])
def test_names_that_are_not_tilt_movies_give_none(name):
    assert tilt_of_movie(name) is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("TS_01.-[]/\\9x ")) | st.characters(), max_size=40),
       st.sampled_from([".tif", ".eer", ".mrc", ".tiff", ""]))
def test_any_name_gives_a_tilt_within_90_degrees_or_none(stem, suffix):
    tilt = tilt_of_movie(stem + suffix)
    assert tilt is None or (abs(tilt.angle_deg) <= 90 and tilt.series and tilt.tilt_number >= 0)


# --- completion ---------------------------------------------------------------------------------------------

def test_real_serialem_series_completes_when_all_listed_tilts_arrived_and_range_covered():
    series = read_mdoc(FIXTURES / "TS_01.mrc.mdoc")
    plan = plan_series({"TS_01.mrc.mdoc": series}, movies_for(series, series.mtime_s),
                       now_s=series.mtime_s + 31, expected_range_deg=(-60, 60), **RULES)
    decision = only(plan)
    assert decision.series == "TS_01" and decision.status == "complete" and decision.alignable
    assert "cover the expected -60..60" in decision.reason
    assert len(decision.tilts) == 41
    assert [t.angle_deg for t in decision.tilts] == sorted(t.angle_deg for t in decision.tilts)
    lowest = decision.tilts[0]  # -60 degrees is TS_01_039_-60.0.mrc, section [ZValue = 39]
    assert lowest.movie.relative_path == "frames/TS_01_039_-60.0.mrc" and lowest.tilt_number == 39
    assert lowest.mdoc_tilt is not None and lowest.mdoc_tilt.z_value == 39 and lowest.angle_deg == pytest.approx(-59.9986)
    assert not decision.missing and not decision.excluded and not plan.unmatched


def test_growing_serialem_mdoc_waits_until_the_expected_range_is_covered():
    full = read_mdoc(FIXTURES / "TS_01.mrc.mdoc")
    growing = full.model_copy(update={"tilts": full.tilts[:21]})  # dose-symmetric: +-30 after 21 tilts
    plan = plan_series({"TS_01.mrc.mdoc": growing}, movies_for(growing, T0), now_s=growing.mtime_s + 120,
                       expected_range_deg=(-60, 60), **RULES | {"tilt_series_idle_s": 1e9})
    decision = only(plan)
    assert decision.status == "waiting" and "span -30..30 of the expected -60..60" in decision.reason
    assert not decision.alignable


def test_expected_tilt_count_completes_the_series():
    series = mdoc("TS_02", [0.0, 3.0, -3.0, 6.0, -6.0])
    kwargs = RULES | {"now_s": T0 + 60}
    assert only(plan_series({"TS_02.mdoc": series}, movies_for(series), expected_tilt_count=5, **kwargs)).status \
        == "complete"
    assert only(plan_series({"TS_02.mdoc": series}, movies_for(series), expected_tilt_count=7, **kwargs)).status \
        == "waiting"


def test_without_expectations_the_mdoc_listing_is_the_whole_series_as_in_murfey():
    series = read_mdoc(FIXTURES / "test_1.mdoc")  # SubFramePaths chrom_07_ts_010_167_000_*.mrc, mdoc test_1
    files = movies_for(series, series.mtime_s, folder="raw/frames/")
    decision = only(plan_series({"raw/test_1.mdoc": series}, files, now_s=series.mtime_s + 30, **RULES))
    assert decision.series == "test_1" and decision.status == "complete" and "Murfey" in decision.reason
    assert len(decision.tilts) == 11 and all(t.mdoc_tilt is not None for t in decision.tilts)
    assert decision.mdoc.tilt_axis_deg == 83.8 and decision.mdoc_path == "raw/test_1.mdoc"


def test_mdoc_changed_recently_waits():
    series = mdoc("TS_03", [0.0, 3.0, -3.0], mtime_s=T0 + 50)
    decision = only(plan_series({"TS_03.mdoc": series}, movies_for(series), now_s=T0 + 60, **RULES))
    assert decision.status == "waiting" and "changed less than 30 s ago" in decision.reason


def test_half_written_mdoc_waits():
    series = mdoc("TS_04", [0.0, 3.0, -3.0], pending=1)
    decision = only(plan_series({"TS_04.mdoc": series}, movies_for(series), now_s=T0 + 60, **RULES))
    assert decision.status == "waiting" and "still being written" in decision.reason


def test_listed_tilt_that_never_arrives_completes_on_idle_with_the_missing_tilt_listed():
    series = mdoc("TS_05", [0.0, 3.0, -3.0, 6.0])
    files = movies_for(series)[:-1]
    waiting = only(plan_series({"TS_05.mdoc": series}, files, now_s=T0 + 60, **RULES))
    assert waiting.status == "waiting" and "1 of 4 tilts listed in TS_05.mdoc have not arrived" in waiting.reason
    done = only(plan_series({"TS_05.mdoc": series}, files, now_s=T0 + 601, **RULES))
    assert done.status == "complete" and done.alignable and "no tilt arrived for 600 s" in done.reason
    assert [t.tilt_angle_deg for t in done.missing] == [6.0] and "never arrived" in done.reason


def test_series_without_mdoc_is_matched_by_name_and_completes_on_idle():
    files = [movie(f"Position_7_{i + 1:03d}_{a:.2f}_20231003_1020{i:02d}_fractions.tiff", T0 + i)
             for i, a in enumerate([0.0, 3.0, -3.0, 6.0])]
    waiting = only(plan_series({}, files, now_s=T0 + 100, **RULES))
    assert waiting.series == "Position_7" and waiting.status == "waiting" and "no mdoc yet" in waiting.reason
    done = only(plan_series({}, files, now_s=T0 + 3 + 600, **RULES))
    assert done.status == "complete" and done.alignable and done.mdoc is None and len(done.tilts) == 4


def test_session_end_completes_every_series():
    a, b = mdoc("TS_06", [0.0, 3.0, -3.0, 6.0]), mdoc("TS_07", [0.0, 3.0, -3.0])
    plan = plan_series({"TS_06.mdoc": a, "TS_07.mdoc": b}, movies_for(a)[:2] + movies_for(b), now_s=T0 + 1,
                       session_ended=True, expected_range_deg=(-60, 60), **RULES)
    assert [(d.series, d.status) for d in plan.series] == [("TS_06", "complete"), ("TS_07", "complete")]
    assert "session ended; 2 tilt(s) the mdoc lists never arrived" in plan.series[0].reason
    assert not plan.series[0].alignable and "only 2 tilt(s)" in plan.series[0].problems[0]
    assert plan.series[1].alignable


def test_malformed_mdoc_is_reported_and_its_series_goes_by_names():
    error = ImageFileError("/visit/TS_08.mdoc", "section 2: TiltAngle is not a valid value")
    files = [movie(f"TS_08_{i:03d}_{a:.1f}.tif") for i, a in enumerate([0.0, 3.0, -3.0])]
    waiting = only(plan_series({"TS_08.mdoc": error}, files, now_s=T0 + 60, **RULES))
    assert waiting.status == "waiting" and "mdoc cannot be used" in waiting.reason
    assert waiting.problems == ["mdoc TS_08.mdoc cannot be used: section 2: TiltAngle is not a valid value"]
    done = only(plan_series({"TS_08.mdoc": error}, files, now_s=T0 + 600, **RULES))
    assert done.status == "complete" and done.alignable and len(done.tilts) == 3 and done.problems


def test_duplicate_tilt_angle_keeps_the_newest_movie_and_excludes_the_others():
    series = mdoc("TS_09", [0.0, 3.0, -3.0, 3.0003])  # the microscopist retook +3
    files = movies_for(series)
    files[3] = MovieFile(files[3].relative_path, 1000, T0 + 5)
    decision = only(plan_series({"TS_09.mdoc": series}, files, now_s=T0 + 60, **RULES))
    assert decision.status == "complete" and len(decision.tilts) == 3
    assert [e.movie.relative_path for e in decision.excluded] == [files[1].relative_path]
    assert decision.excluded[0].reason == DUPLICATE_ANGLE
    assert files[3] in [t.movie for t in decision.tilts]


def test_duplicate_angle_from_names_without_mdoc_keeps_the_newest():
    files = [movie("TS_10_001_0.0.tif"), movie("TS_10_002_3.0.tif", T0 + 9), movie("TS_10_003_3.0.tif", T0 + 1)]
    decision = only(plan_series({}, files, now_s=T0 + 1000, **RULES))
    assert [t.movie.relative_path for t in decision.tilts] == ["TS_10_001_0.0.tif", "TS_10_002_3.0.tif"]
    assert decision.excluded[0].movie.relative_path == "TS_10_003_3.0.tif"


def test_series_of_one_tilt_is_complete_but_never_alignable():
    decision = only(plan_series({}, [movie("TS_11_001_0.0.tif")], now_s=T0 + 600, **RULES))
    assert decision.status == "complete" and not decision.alignable
    assert decision.problems == ["only 1 tilt(s): aligning a tilt series needs at least 3"]


def test_mixed_pixel_sizes_within_a_series_are_reported_and_not_aligned():
    series = mdoc("TS_12", [0.0, 3.0, -3.0], pixels=[1.5, 1.5, 3.0])
    decision = only(plan_series({"TS_12.mdoc": series}, movies_for(series), now_s=T0 + 60, **RULES))
    assert decision.status == "complete" and not decision.alignable
    assert decision.problems == ["mixed pixel sizes in one series: 1.5 A, 3 A"]


def test_tilt_arriving_after_its_series_was_completed_is_late():
    series = mdoc("TS_13", [0.0, 3.0, -3.0])
    files = movies_for(series)
    known = {"TS_13": [m.relative_path for m in files[:2]]}
    late = only(plan_series({"TS_13.mdoc": series}, files, known, now_s=T0 + 60, **RULES))
    assert late.status == "late" and late.late == [files[2]] and len(late.tilts) == 3
    done = only(plan_series({"TS_13.mdoc": series}, files, {"TS_13": {m.relative_path for m in files}},
                            now_s=T0 + 60, **RULES))
    assert done.status == "done" and not done.late


def test_movie_still_being_written_keeps_its_series_waiting():
    series = mdoc("TS_14", [0.0, 3.0, -3.0])
    files = movies_for(series)
    decision = only(plan_series({"TS_14.mdoc": series}, files[:2], now_s=T0 + 900, still_writing=files[2:],
                                **RULES))
    assert decision.status == "waiting" and decision.missing


def test_movies_no_mdoc_lists_and_no_name_explains_are_unmatched():
    plan = plan_series({}, [movie("gain.mrc"), movie("FoilHole_1_Data_2_3_20210625_171939_fractions.tiff")],
                       now_s=T0, **RULES)
    assert plan.series == [] and [m.relative_path for m in plan.unmatched] == [
        "FoilHole_1_Data_2_3_20210625_171939_fractions.tiff", "gain.mrc"]


def test_per_movie_sidecar_mdocs_and_repeated_series_names_are_ignored():
    sidecar = ImageFileError("/visit/TS_15_001_0.0.tif.mdoc", "has a [FrameSet] section (line 3)")
    series = mdoc("TS_15", [0.0, 3.0, -3.0])
    plan = plan_series({"frames/TS_15_001_0.0.tif.mdoc": sidecar, "TS_15.mdoc": series, "b/TS_15.mdoc": series},
                       movies_for(series), now_s=T0 + 60, **RULES)
    assert only(plan).status == "complete" and not only(plan).problems
    assert sorted(plan.ignored_mdocs) == ["b/TS_15.mdoc", "frames/TS_15_001_0.0.tif.mdoc"]


def test_tomo_beams_of_one_position_are_separate_series():
    one = [movie(f"Position_3_{i + 1:03d}_{a:.2f}_20231003_102030_fractions.tiff") for i, a in enumerate([0, 3, -3])]
    two = [movie(f"Position_3_2_{i + 1:03d}_{a:.2f}_20231003_102031_fractions.tiff") for i, a in enumerate([0, 3])]
    plan = plan_series({}, one + two, now_s=T0 + 600, **RULES)
    assert [(d.series, len(d.tilts)) for d in plan.series] == [("Position_3", 3), ("Position_3_2", 2)]


def test_mdoc_without_sub_frame_paths_counts_tilts_by_angle():
    series = mdoc("TS_16", [0.0, 3.0, -3.0], names=False)
    files = [movie(f"TS_16_{i:03d}_{a:.1f}.tif") for i, a in enumerate([0.0, 3.0, -3.0])]
    decision = only(plan_series({"TS_16.mdoc": series}, files, now_s=T0 + 60, **RULES))
    assert decision.status == "complete" and not decision.missing
    assert all(t.mdoc_tilt is None for t in decision.tilts)


def test_mdoc_alone_with_no_movie_completes_on_idle_without_tilts_and_is_not_aligned():
    series = mdoc("TS_17", [0.0, 3.0])
    decision = only(plan_series({"TS_17.mdoc": series}, [], now_s=T0 + 600, **RULES))
    assert decision.status == "complete" and decision.tilts == [] and not decision.alignable
    assert len(decision.missing) == 2
