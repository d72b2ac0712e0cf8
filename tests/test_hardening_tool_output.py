"""Malformed tool output: a ValueError naming the file (or run) and line or row, never quoting it (issue 12, 16)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from airflow_provider_cryoem.io import write_star
from airflow_provider_cryoem.io.errors import ImageFileError
from airflow_provider_cryoem.tools import (
    aretomo,
    ctffind,
    icebreaker,
    imod,
    motioncor2,
    relion_autopick,
    relion_motioncorr,
    relion_postprocess,
    relion_preprocess,
    relion_refine,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tools"
SECRET = "s3cr3t-token"  # stands for file contents that must not reach an error message (and the task log)


# --- MotionCor2 ----------------------------------------------------------------------------------------------------

def mc2_log(line_number: int, text: str) -> str:
    lines = (FIXTURES / "motioncor2_1.6.4.log").read_text().splitlines()
    lines[line_number - 1] = text
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("row", "problem"), [
    ("    4", "line 30: shift table row has 1 value"),  # a log cut off mid-row: was an IndexError
    (f"    4   {SECRET}   1.40", "line 30: non-numeric frame shift"),
    ("    4   nan   1.40", "line 30: frame shift is NaN or infinite"),
])
def test_motioncor2_malformed_table_row_names_the_source_and_line(row: str, problem: str) -> None:
    with pytest.raises(ImageFileError, match=f"^run 7 log: {problem}") as error:
        motioncor2.parse_shifts(mc2_log(30, row), source="run 7 log")
    assert SECRET not in str(error.value)


def test_motioncor2_malformed_frame_line_names_the_movie_in_parse_result(tmp_path: Path) -> None:
    inputs = motioncor2.MotionCor2Inputs(movie_path="/d/movie_12.tiff", output_path=str(tmp_path / "mic.mrc"),
                                         pixel_size_a=0.83, dose_per_frame_e_a2=1.2)
    log = f"...... Frame (  1) shift:    0.0000      0.0000\n...... Frame (  2) shift:    {SECRET}  0.1\n"
    with pytest.raises(ImageFileError, match=r"MotionCor2 output for /d/movie_12\.tiff: line 2: non-numeric") as error:
        motioncor2.parse_result(log, inputs)
    assert SECRET not in str(error.value)


# --- text outputs --------------------------------------------------------------------------------------------------

def edited(tmp_path: Path, fixture: str, line_number: int, text: str) -> Path:
    """A copy of a fixture with one line replaced."""
    lines = (FIXTURES / fixture).read_text().splitlines()
    lines[line_number - 1] = text
    out = tmp_path / fixture
    out.write_text("\n".join(lines) + "\n")
    return out


def test_ctffind_non_numeric_line_names_file_and_line_not_content(tmp_path: Path) -> None:
    n_lines = len((FIXTURES / "ctffind4_mic.txt").read_text().splitlines())
    path = edited(tmp_path, "ctffind4_mic.txt", n_lines, f"1.0 {SECRET} 2.0 3.0 0.0 0.1 4.0")
    with pytest.raises(ImageFileError, match=rf"ctffind4_mic\.txt: line {n_lines}: non-numeric") as error:
        ctffind.parse_output_txt(path)
    assert SECRET not in str(error.value)


@pytest.mark.parametrize("text", [
    f"    3    85.3120    1.00000      2.004   {SECRET}     1.00     1.00     1.00     0.00   -15.00",
    f"# DarkFrame =     0     0   {SECRET}",
])
def test_aretomo_non_numeric_value_names_file_and_line(tmp_path: Path, text: str) -> None:
    path = edited(tmp_path, "aretomo2_position_1.aln", 12 if not text.startswith("#") else 5, text)
    with pytest.raises(ImageFileError, match=r"aretomo2_position_1\.aln: line (12|5): non-numeric value") as error:
        aretomo.parse_aln(path)
    assert SECRET not in str(error.value)


def test_imod_non_numeric_entry_is_not_quoted(tmp_path: Path) -> None:
    path = edited(tmp_path, "imod_4.11_position_1.tlt", 2, SECRET)
    with pytest.raises(ImageFileError, match=r"position_1\.tlt: line 2: non-numeric tilt angle entry$") as error:
        imod.parse_tlt(path)
    assert SECRET not in str(error.value)


def test_icebreaker_bad_summaries_name_the_line_not_the_values(tmp_path: Path) -> None:
    with pytest.raises(ImageFileError, match=r"run\.out: line 2: non-numeric five-figure summary$"):
        icebreaker.parse_five_figures(f"start\nResults: /p/mic.mrc 1 2 {SECRET} 4 5\n", source=tmp_path / "run.out")
    with pytest.raises(ImageFileError, match=r"line 1: expected a micrograph path and 5 numbers .*, got 3") as error:
        icebreaker.parse_five_figures(f"Results: /p/mic.mrc {SECRET} 2\n")
    assert SECRET not in str(error.value)
    csv_file = tmp_path / "five_figs_test.csv"
    csv_file.write_text(f"# comment\npath,min,q1,q2=median,q3,max\n/p/a,1,2,3,4,5\n/p/{SECRET},5,4,3,2,1\n")
    with pytest.raises(ImageFileError, match=r"five_figs_test\.csv: line 4: five-figure summary not in") as error:
        icebreaker.parse_five_figures_csv(csv_file)
    assert SECRET not in str(error.value)
    csv_file.write_bytes(b"path,min,q1,q2=median,q3,max\n/p/a,1,2,\xff\xfe,4,5\n")  # not UTF-8: was UnicodeDecodeError
    with pytest.raises(ImageFileError, match=r"five_figs_test\.csv: line 2: non-numeric five-figure summary"):
        icebreaker.parse_five_figures_csv(csv_file)


def test_relion_postprocess_unreadable_number_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="final resolution or B-factor is not a number"):
        relion_postprocess.parse_stdout("+ FINAL RESOLUTION: .\n")


# --- Relion STAR outputs -------------------------------------------------------------------------------------------

def test_relion_autopick_non_numeric_coordinate_names_file_column_and_row(tmp_path: Path) -> None:
    path = write_star(tmp_path / "mic_autopick.star", {"": pd.DataFrame({
        "rlnCoordinateX": ["10.0", SECRET], "rlnCoordinateY": [1.0, 2.0], "rlnAutopickFigureOfMerit": [0.5, 0.7]})})
    with pytest.raises(ImageFileError, match=r"autopick\.star: data_: non-numeric _rlnCoordinateX in row 2") as error:
        relion_autopick.parse_coordinates(path)
    assert SECRET not in str(error.value)


def test_relion_motioncorr_non_numeric_shift_names_file_and_row(tmp_path: Path) -> None:
    inputs = relion_motioncorr.RelionMotionInputs(project_dir=str(tmp_path), movie_path="Movies/m1.tiff",
                                                  pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    write_star(tmp_path / "MotionCorr/job002/Movies/m1.star", {"global_shift": pd.DataFrame({
        "rlnMicrographFrameNumber": [1, 2, 3], "rlnMicrographShiftX": [0.0, SECRET, 1.0],
        "rlnMicrographShiftY": [0.0, 0.5, 1.0]})})
    with pytest.raises(ImageFileError, match=r"m1\.star: data_global_shift: non-numeric _rlnMicrographShiftX in "
                                             r"row 2") as error:
        relion_motioncorr.parse_result(inputs)
    assert SECRET not in str(error.value)


def model_star(path: Path, resolution: object, distribution: list[object]) -> Path:
    return write_star(path, {
        "model_general": {"rlnCurrentResolution": resolution},
        "model_classes": pd.DataFrame({"rlnReferenceImage": [f"00000{i}@run_it025_classes.mrcs" for i in (1, 2)],
                                       "rlnClassDistribution": distribution,
                                       "rlnAccuracyRotations": [float("nan"), 2.5]})})


def test_relion_model_star_non_numeric_values_name_block_and_row(tmp_path: Path) -> None:
    good = relion_refine.parse_model_star(model_star(tmp_path / "run_it025_model.star", 7.5, [0.4, 0.6]))
    assert good["resolution_a"] == 7.5 and good["classes"][1]["class_distribution"] == 0.6
    assert math.isnan(good["classes"][0]["rotation_accuracy_deg"])  # NaN the file holds is kept, as before
    with pytest.raises(ImageFileError, match=r"data_model_classes: non-numeric _rlnClassDistribution in row 2") \
            as error:
        relion_refine.parse_model_star(model_star(tmp_path / "a_model.star", 7.5, [0.4, SECRET]))
    assert SECRET not in str(error.value)
    with pytest.raises(ImageFileError, match=r"data_model_general: non-numeric _rlnCurrentResolution in row 1"):
        relion_refine.parse_model_star(model_star(tmp_path / "b_model.star", SECRET, [0.4, 0.6]))


def particles_star(path: Path, image_names: list[str], optics: pd.DataFrame) -> Path:
    particles = pd.DataFrame({"rlnImageName": image_names, "rlnCoordinateX": [1.0] * len(image_names),
                              "rlnCoordinateY": [2.0] * len(image_names)})
    return write_star(path, {"optics": optics, "particles": particles})


def test_relion_extract_malformed_particles_star_names_file_and_row(tmp_path: Path) -> None:
    optics = pd.DataFrame({"rlnImagePixelSize": [1.6], "rlnImageSize": [64]})
    good = relion_preprocess.parse_particles(particles_star(tmp_path / "ok.star", ["000001@Extract/a.mrcs"], optics))
    assert good["stacks"] == ["Extract/a.mrcs"] and good["box_px"] == 64
    path = particles_star(tmp_path / "names.star", ["000001@Extract/a.mrcs", SECRET], optics)
    with pytest.raises(ImageFileError, match=r"names\.star: data_particles: _rlnImageName in row 2 is not") as error:
        relion_preprocess.parse_particles(path)  # was an IndexError
    assert SECRET not in str(error.value)
    path = particles_star(tmp_path / "optics.star", ["000001@Extract/a.mrcs"],
                          pd.DataFrame({"rlnImagePixelSize": [SECRET], "rlnImageSize": [64]}))
    with pytest.raises(ImageFileError, match=r"optics\.star: data_optics: non-numeric _rlnImagePixelSize in row 1"):
        relion_preprocess.parse_particles(path)
