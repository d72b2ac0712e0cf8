"""Recipes choosing AreTomo2 or IMOD for the tomogram stage: the stack and angle file they get, and their
numbers landing on the right tilts, in the results store and the Relion 5 project.

The programs themselves cannot be installed here; tests/fake_tomo_programs.py stands in for them, reading
the pipeline's inputs and writing output in each program's own layout with known numbers.
"""
from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import starfile
from sqlalchemy import select

from airflow_provider_cryoem.io import read_mrc_shape
from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.results import schema
from airflow_provider_cryoem.simulate import GAIN_REFERENCE_NAME, TomoSimulationSettings, write_tomo_session
from airflow_provider_cryoem.simulate.session import END_MARKER_NAME

from . import fake_tomo_programs as fake
from .conftest import AIRFLOW

SETTINGS = TomoSimulationSettings(n_series=1, image_size_px=128, n_frames=2, tilt_min_deg=-30, tilt_max_deg=30,
                                  tilt_step_deg=10, seed=8)
BINNING = 2


def _run(tmp_path: Path, airflow_env: dict[str, str], tool: str, program: str) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / program
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(fake.__file__)} {program} \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tomo_prog.yaml").write_text(textwrap.dedent(f"""\
        name: tomo_prog
        mode: live
        session_defaults: {{movie_glob: "*.tif"}}
        stages:
          motioncorr: {{tool: builtin, params: {{patches_x: 1, patches_y: 1}}}}
          ctf: {{tool: builtin, after: [motioncorr]}}
          tilt_series: {{after: [ctf]}}
          tomogram: {{tool: {tool}, after: [tilt_series]}}
        """))
    watch_dir = tmp_path / "visit" / "raw"
    truth = write_tomo_session(SETTINGS, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    conf = {"session_name": f"prog_{tool}", "watch_dir": str(watch_dir), "pixel_size_a": SETTINGS.pixel_size_a,
            "dose_per_frame_e_a2": SETTINGS.dose_per_frame_e_a2, "tilt_axis_deg": SETTINGS.tilt_axis_deg,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME), "thickness_nm": SETTINGS.thickness_nm,
            "tilt_range_deg": 30, "tomogram_binning": BINNING}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(tmp_path), "CRYOEM_RECIPES_DIR": str(recipes),
           "PATH": f"{bin_dir}:{airflow_env.get('PATH', '/usr/bin:/bin')}"}
    run = subprocess.run([AIRFLOW, "dags", "test", "tomo_prog", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-6000:]
    processing = tmp_path / "visit" / "processing"
    store = results_store(None, str(processing))
    with store.engine.connect() as connection:
        tomograms = connection.execute(select(schema.tomogram)).mappings().all()
        alignments = connection.execute(
            select(schema.tilt_image_alignment, schema.movie.c.movie_full_path, schema.tilt.c.tilt_angle_deg)
            .join(schema.movie, schema.movie.c.movie_id == schema.tilt_image_alignment.c.movie_id)
            .join(schema.tilt, schema.tilt.c.movie_id == schema.tilt_image_alignment.c.movie_id)).mappings().all()
    return {"truth": truth, "tomograms": tomograms, "alignments": alignments, "relion": processing / "relion",
            "summary": store.session_summary(conf["session_name"])}


def _assert_program_numbers_on_their_tilts(result: dict, lowest_tilt_dark: bool) -> None:
    assert len(result["tomograms"]) == 1 and result["summary"].tomography.series_reconstructed == 1
    rows = result["alignments"]
    assert len(rows) == len(SETTINGS.tilt_angles_deg())
    lowest = min(row["tilt_angle_deg"] for row in rows)
    for row in rows:
        angle = round(row["tilt_angle_deg"], 2)  # as the angle file gives it to the program
        if lowest_tilt_dark and row["tilt_angle_deg"] == lowest:
            assert row["excluded"] and "AreTomo2" in row["exclusion_reason"]
            continue
        assert not row["excluded"], row["exclusion_reason"]
        assert row["shift_x_px"] == pytest.approx(fake.SHIFT_X_PER_DEG * angle, abs=2e-3)
        assert row["shift_y_px"] == pytest.approx(fake.SHIFT_Y_PER_DEG * angle, abs=2e-3)
        assert row["refined_tilt_angle_deg"] == pytest.approx(angle + fake.TILT_OFFSET_DEG, abs=0.01)
        assert row["refined_tilt_axis_deg"] == pytest.approx(fake.TILT_AXIS_DEG, abs=0.01)
    tomogram = result["tomograms"][0]
    assert Path(tomogram["volume_file"]).is_file() and "Tomograms/job" in tomogram["volume_file"]
    thickness_px = round(SETTINGS.thickness_nm * 10 / SETTINGS.pixel_size_a) // BINNING
    assert read_mrc_shape(tomogram["volume_file"]) == (thickness_px, SETTINGS.image_size_px // BINNING,
                                                  SETTINGS.image_size_px // BINNING)
    for column in ("central_slice_image", "alignment_plot", "tilt_series_movie"):
        assert Path(tomogram[column]).is_file(), column


def _aligned_star(relion: Path, job_type: str) -> object:
    pipeline = (relion / "default_pipeline.star").read_text()
    assert job_type in pipeline
    (star,) = relion.glob("AlignTiltSeries/job*/tilt_series/*.star")
    return starfile.read(star)


def test_aretomo2_alignment_lands_on_its_tilts_and_its_dark_tilt_is_recorded(tmp_path, airflow_env):
    result = _run(tmp_path, airflow_env, "aretomo2", "AreTomo2")
    _assert_program_numbers_on_their_tilts(result, lowest_tilt_dark=True)
    aligned = _aligned_star(result["relion"], "relion.aligntiltseries.aretomo")
    assert len(aligned) == len(SETTINGS.tilt_angles_deg()) - 1  # the dark tilt is left out
    for _, row in aligned.iterrows():  # Relion 5 reads TX × pixel size as rlnTomoXShiftAngst
        angle = row["rlnTomoYTilt"] - fake.TILT_OFFSET_DEG
        assert row["rlnTomoXShiftAngst"] == pytest.approx(fake.SHIFT_X_PER_DEG * angle * SETTINGS.pixel_size_a,
                                                          abs=0.02)


def test_imod_alignment_lands_on_its_tilts_with_residuals_in_pixels(tmp_path, airflow_env):
    result = _run(tmp_path, airflow_env, "imod", "batchruntomo")
    _assert_program_numbers_on_their_tilts(result, lowest_tilt_dark=False)
    for row in result["alignments"]:
        assert row["residual_error_px"] == pytest.approx(fake.RESIDUAL_NM * 10 / SETTINGS.pixel_size_a, rel=1e-3)
    assert result["tomograms"][0]["residual_error_mean_px"] == pytest.approx(
        fake.RESIDUAL_NM * 10 / SETTINGS.pixel_size_a, rel=1e-3)
    aligned = _aligned_star(result["relion"], "relion.aligntiltseries.imod_patchtrack")
    assert len(aligned) == len(SETTINGS.tilt_angles_deg())
    assert aligned["rlnTomoZRot"].tolist() == pytest.approx([fake.TILT_AXIS_DEG] * len(aligned), abs=0.01)


def test_every_tomogram_tool_a_recipe_may_choose_is_implemented():
    from airflow_provider_cryoem.pipeline.tomo_external import PROGRAMS
    from airflow_provider_cryoem.recipes.stages import STAGES

    assert STAGES["tomogram"].tools == {"builtin", *PROGRAMS}


def test_program_output_for_another_stack_is_refused_naming_the_file(tmp_path):
    from airflow_provider_cryoem.io.errors import ImageFileError
    from airflow_provider_cryoem.pipeline.tomo_external import _check_sections

    aln = tmp_path / "TS_01.aln"
    stack_angles = [-20.0, -10.0, 0.0, 10.0, 20.0]
    _check_sections(aln, [1, 2, 3], [-9.7, 0.3, 10.3], stack_angles)  # one offset for all: accepted
    with pytest.raises(ImageFileError, match=r"TS_01\.aln.*not this stack"):
        _check_sections(aln, [0, 1, 3], [-9.7, 0.3, 10.3], stack_angles)  # rows of another stack
    with pytest.raises(ImageFileError, match=r"TS_01\.aln.*outside the stack"):
        _check_sections(aln, [1, 5], [-10.0, 30.0], stack_angles)
