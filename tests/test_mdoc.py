"""Reading SerialEM / Tomo 5 tilt-series mdoc files: real files, half-written files, and bad ones."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_cryoem.io import ImageFileError, MdocSeries, read_mdoc
from airflow_provider_cryoem.io import mdoc as mdoc_module
from airflow_provider_cryoem.io.mdoc import mdoc_series_name, movie_basename, parse_mdoc_bytes

FIXTURES = Path(__file__).parent / "fixtures" / "mdoc"
EMBL_2015 = FIXTURES / "TS_01.mrc.mdoc"  # SerialEM 2015, LF, no Voltage, 41 tilts
EBIC_2022 = FIXTURES / "test_1.mdoc"  # SerialEM 4.0.6, CRLF, UNC SubFramePaths, 11 tilts
SECRET = "hunter2-secret"


def small_mdoc(sections: list[dict[str, str]], header: str = "PixelSpacing = 1.5\nVoltage = 300\n") -> str:
    text = header + "\n[T = SerialEM: test scope   01-Aug-2022  18:58:31]\n\n"
    text += "[T = Tilt axis angle = -94.5, binning = 1  spot = 10  camera = 1]\n\n"
    for z, fields in enumerate(sections):
        text += f"[ZValue = {z}]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items()) + "\n"
    return text


def tilt_fields(angle: float, name: str | None = None) -> dict[str, str]:
    fields = {"TiltAngle": f"{angle}", "ExposureDose": "3.1", "PixelSpacing": "1.5", "Defocus": "-3.2"}
    fields["SubFramePath"] = f"X:\\frames\\{name or f'TS_01_{angle:.1f}.tif'}"
    fields["DateTime"] = "01-Aug-2022  18:58:35"
    return fields


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_reads_embl_2015_serialem_mdoc():
    series = read_mdoc(EMBL_2015)
    assert isinstance(series, MdocSeries)
    assert series.name == "TS_01"
    assert series.pixel_spacing_a == 5.4 and series.voltage_kv is None and series.tilt_axis_deg == 85.3
    assert series.pending_sections == 0 and len(series.tilts) == 41
    assert [t.z_value for t in series.tilts] == list(range(41))
    first, last = series.tilts[0], series.tilts[-1]
    assert first.tilt_angle_deg == pytest.approx(0.000999877) and first.movie_name == "TS_01_000_0.0.mrc"
    assert first.defocus_um == pytest.approx(2.68083) and first.exposure_dose_e_a2 == 0.0
    assert first.date_time == datetime(2015, 11, 30, 15, 21, 38)
    assert last.movie_name == "TS_01_040_60.0.mrc" and last.tilt_angle_deg == pytest.approx(60.0006)
    angles = sorted(round(t.tilt_angle_deg) for t in series.tilts)
    assert angles == list(range(-60, 61, 3))
    assert series.mtime_s == pytest.approx(EMBL_2015.stat().st_mtime) and series.size_bytes == EMBL_2015.stat().st_size


def test_reads_ebic_2022_crlf_mdoc_with_unc_sub_frame_paths():
    series = read_mdoc(EBIC_2022)
    assert series.name == "test_1" and len(series.tilts) == 11  # Murfey's own test counts 11 blocks
    assert series.voltage_kv == 300.0 and series.pixel_spacing_a == 1.94 and series.tilt_axis_deg == 83.8
    assert series.tilts[0].movie_name == "chrom_07_ts_010_167_000_-0.0.mrc"
    assert series.tilts[3].tilt_angle_deg == pytest.approx(-3.00913)
    assert series.tilts[0].date_time == datetime(2022, 8, 1, 18, 58, 35)
    assert all(t.pixel_spacing_a == 1.94 for t in series.tilts)


@pytest.mark.parametrize(("path", "name"), [
    ("TS_01.mdoc", "TS_01"), ("TS_01.mrc.mdoc", "TS_01"), ("/data/raw/Position_1_2.mdoc", "Position_1_2"),
    ("D:\\Tomo\\Position_3.mdoc", "Position_3"), ("lamella.st.mdoc", "lamella"), ("TS_01.MDOC", "TS_01"),
])
def test_series_name_is_the_file_name_without_mdoc_and_stack_suffix(path, name):
    assert mdoc_series_name(path) == name


@pytest.mark.parametrize(("sub_frame_path", "name"), [
    ("D:\\DATA\\Flo\\frames\\TS_01_000_0.0.mrc", "TS_01_000_0.0.mrc"),
    ("\\\\192.168.10.81\\Storage\\\\frames\\a_-3.0.tif", "a_-3.0.tif"),
    ("/mnt/frames/TS_01_003_-3.0_Dec02_12.01.33.tif", "TS_01_003_-3.0_Dec02_12.01.33.tif"),
    ("plain.eer", "plain.eer"),
])
def test_movie_name_is_the_basename_of_windows_or_posix_sub_frame_path(sub_frame_path, name):
    assert movie_basename(sub_frame_path) == name


def test_half_written_last_line_leaves_last_section_pending(tmp_path):
    text = small_mdoc([tilt_fields(0.0), tilt_fields(3.0), tilt_fields(-3.0)])
    cut = text.rindex("Defocus") + 4  # the microscope is writing the last section's Defocus line
    series = read_mdoc(write(tmp_path, "TS_01.mdoc", text[:cut]))
    assert [t.tilt_angle_deg for t in series.tilts] == [0.0, 3.0] and series.pending_sections == 1


def test_last_section_missing_keys_the_others_have_is_pending(tmp_path):
    text = small_mdoc([tilt_fields(0.0), tilt_fields(3.0)])
    text = text[: text.rindex("SubFramePath")]  # complete lines, but SubFramePath and DateTime not written yet
    series = read_mdoc(write(tmp_path, "TS_01.mdoc", text))
    assert len(series.tilts) == 1 and series.pending_sections == 1


def test_half_written_new_section_header_leaves_previous_section_complete(tmp_path):
    text = small_mdoc([tilt_fields(0.0), tilt_fields(3.0)]) + "[ZVal"
    series = read_mdoc(write(tmp_path, "TS_01.mdoc", text))
    assert len(series.tilts) == 2 and series.pending_sections == 1


def test_every_prefix_of_a_real_mdoc_reads_as_a_prefix_of_its_tilts():
    data = EBIC_2022.read_bytes()
    full = parse_mdoc_bytes(data, EBIC_2022).tilts
    for cut in list(range(0, len(data), 61)) + list(range(len(data) - 700, len(data) + 1)):
        prefix = data[:cut]
        series = parse_mdoc_bytes(prefix, EBIC_2022)
        assert series.tilts == full[: len(series.tilts)]
        assert len(series.tilts) >= prefix.count(b"[ZValue") - 1
    assert len(parse_mdoc_bytes(data, EBIC_2022).tilts) == 11


def test_empty_mdoc_is_a_series_without_tilts_yet(tmp_path):
    series = read_mdoc(write(tmp_path, "Position_1.mdoc", b""))
    assert series.tilts == [] and series.name == "Position_1" and series.pixel_spacing_a is None


def test_section_without_own_pixel_spacing_takes_the_header_one(tmp_path):
    fields = tilt_fields(0.0)
    del fields["PixelSpacing"]
    series = read_mdoc(write(tmp_path, "a.mdoc", small_mdoc([fields, tilt_fields(3.0)], "PixelSpacing = 2.5\n")))
    assert series.tilts[0].pixel_spacing_a == 2.5 and series.tilts[1].pixel_spacing_a == 1.5


def test_malformed_field_the_pipeline_does_not_use_is_ignored(tmp_path):
    bad = {"MinMaxMean": "a b c", "ImageShift": SECRET}
    series = read_mdoc(write(tmp_path, "a.mdoc", small_mdoc([tilt_fields(0.0) | bad, tilt_fields(3.0) | bad])))
    assert len(series.tilts) == 2


def test_section_without_sub_frame_path_has_no_movie_name(tmp_path):
    fields = [tilt_fields(0.0), tilt_fields(3.0)]
    for f in fields:
        del f["SubFramePath"]
    series = read_mdoc(write(tmp_path, "a.mdoc", small_mdoc(fields)))
    assert [t.movie_name for t in series.tilts] == [None, None]


def test_malformed_tilt_angle_names_section_and_field_never_the_value(tmp_path):
    bad = tilt_fields(3.0) | {"TiltAngle": SECRET}
    path = write(tmp_path, "a.mdoc", small_mdoc([tilt_fields(0.0), bad, tilt_fields(-3.0)]))
    with pytest.raises(ImageFileError) as info:
        read_mdoc(path)
    assert str(path) in str(info.value) and "section 2" in str(info.value) and "TiltAngle" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(("content", "problem"), [
    (small_mdoc([tilt_fields(0.0), tilt_fields(95.0), tilt_fields(3.0)]), "between -90 and 90"),
    (small_mdoc([tilt_fields(0.0) | {"PixelSpacing": "-1"}, tilt_fields(3.0)]), "PixelSpacing"),
    (small_mdoc([tilt_fields(0.0) | {"ExposureDose": "nan"}, tilt_fields(3.0)]), "ExposureDose"),
    (small_mdoc([{k: v for k, v in tilt_fields(0.0).items() if k != "TiltAngle"}, tilt_fields(3.0)]),
     "no TiltAngle"),
    (small_mdoc([tilt_fields(0.0)], header=f"PixelSpacing = {SECRET}\n"), "header"),
    ("PixelSpacing = 1\n[FrameSet = 0]\nTiltAngle = 3\n\n", "not a tilt series"),
    (f"{SECRET}\n[ZValue = 0]\nTiltAngle = 1\n", "line 1"),
    (f"PixelSpacing = 1\n[ZValue = 0]\nTiltAngle = 1\n[{SECRET}\n\n", "line 4"),
    (f"PixelSpacing = 1\n[ZValue = {SECRET}]\nTiltAngle = 1\n\n[ZValue = 1]\nTiltAngle = 2\n", "ZValue"),
])
def test_malformed_mdoc_is_an_image_file_error_without_content(tmp_path, content, problem):
    path = write(tmp_path, "Position_1.mdoc", content)
    with pytest.raises(ImageFileError) as info:
        read_mdoc(path)
    assert problem in str(info.value) and str(path) in str(info.value) and SECRET not in str(info.value)


def test_not_an_mdoc_file_missing_binary_or_huge_are_errors(tmp_path, monkeypatch):
    secret_file = write(tmp_path, "credentials.txt", f"password = {SECRET}\n")
    with pytest.raises(ImageFileError, match="not an .mdoc file"):
        read_mdoc(secret_file)
    with pytest.raises(ImageFileError, match="does not exist"):
        read_mdoc(tmp_path / "gone.mdoc")
    (tmp_path / "dir.mdoc").mkdir()
    with pytest.raises(ImageFileError, match="not a regular file"):
        read_mdoc(tmp_path / "dir.mdoc")
    with pytest.raises(ImageFileError, match="binary"):
        read_mdoc(write(tmp_path, "bin.mdoc", b"PixelSpacing = 1\x00\n"))
    monkeypatch.setattr(mdoc_module, "MAX_MDOC_BYTES", 100)
    with pytest.raises(ImageFileError, match="larger than"):
        read_mdoc(EMBL_2015)


def test_latin1_title_from_a_windows_microscope_pc_is_read(tmp_path):
    text = small_mdoc([tilt_fields(0.0)]).replace("test scope", "Krios G\xe9n\xe8ve")
    series = read_mdoc(write(tmp_path, "a.mdoc", text.encode("latin-1")))
    assert len(series.tilts) == 1 and series.tilt_axis_deg == -94.5


MDOC_LINES = st.sampled_from([
    "PixelSpacing = 1.5", "Voltage = 300", "[ZValue = 0]", "[ZValue = 1]", "[ZValue = x]", "TiltAngle = 3.0",
    "TiltAngle = -60", "TiltAngle = nan", "ExposureDose = 3", "SubFramePath = X:\\f\\a_1_3.0.tif", "",
    "[T = Tilt axis angle = 85.3, binning = 1]", "[FrameSet = 0]", "DateTime = 30-Nov-15  15:21:38",
    "FrameDosesAndNumber = 0 7  0 3", "MinMaxMean = 1 2", "Defocus = inf", "= x", "[T = broken", "ZValue = 3",
])
# Everything random carries the marker, so an error quoting any of it is caught.
SECRET_LINES = st.one_of(
    st.text(max_size=20).map(lambda s: s + SECRET),
    st.sampled_from(["TiltAngle", "PixelSpacing", "ExposureDose", "ImageShift", "ZValue", "Voltage", "DateTime",
                     "SubFramePath", "Defocus", "MinMaxMean"]).map(lambda key: f"{key} = {SECRET}"),
    st.just(f"[ZValue = {SECRET}]"), st.just(f"[{SECRET}]"), st.just(f"{SECRET} = 1"),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(MDOC_LINES, MDOC_LINES, MDOC_LINES, SECRET_LINES), max_size=25),
       line_end=st.sampled_from(["\n", "\r\n", "\r"]), cut=st.integers(min_value=0, max_value=2000),
       raw=st.binary(max_size=64))
def test_random_mdoc_text_raises_only_image_file_error_without_content(lines, line_end, cut, raw):
    text = line_end.join(lines).encode()
    for data in (text[:cut], text, raw, raw + text):
        try:
            series = parse_mdoc_bytes(data, "/visit/TS_9.mdoc")
        except ImageFileError as exc:
            assert str(exc).startswith("/visit/TS_9.mdoc: ") and SECRET not in str(exc)
        else:
            assert series.name == "TS_9" and all(abs(t.tilt_angle_deg) <= 90 for t in series.tilts)
