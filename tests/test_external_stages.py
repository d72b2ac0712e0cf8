"""Recipes that choose external programs: Relion runs for real, a missing program is named with its setting."""
from __future__ import annotations

import json
import shutil
import subprocess
import textwrap

import pytest

from airflow_provider_cryoem.pipeline.external import EXTERNAL_STEPS
from airflow_provider_cryoem.pipeline.stages import BUILTIN_RUNNERS
from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.recipes.stages import STAGES
from airflow_provider_cryoem.simulate import (
    END_MARKER_NAME,
    GAIN_REFERENCE_NAME,
    SpaSimulationSettings,
    write_spa_session,
)

from .conftest import AIRFLOW

SETTINGS = SpaSimulationSettings(n_movies=2, image_size_px=384, n_frames=8, particle_diameter_a=80,
                                 particles_per_micrograph=8, seed=5)


def test_every_tool_a_recipe_may_choose_for_a_movie_stage_is_implemented():
    for name, definition in STAGES.items():
        if definition.scope != "movie":
            continue  # particle-batch stages have one implementation each (pipeline/particle_stages.py)
        for tool in definition.tools:
            assert (tool == "builtin" and name in BUILTIN_RUNNERS) or (name, tool) in EXTERNAL_STEPS, (name, tool)


def _run_recipe(tmp_path, airflow_env, stages_yaml: str) -> tuple[subprocess.CompletedProcess, object]:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "ext_live.yaml").write_text("name: ext_live\nmode: live\nstages:\n" + textwrap.indent(
        textwrap.dedent(stages_yaml), "  "))
    watch_dir = tmp_path / "session" / "raw"
    write_spa_session(SETTINGS, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    conf = {"session_name": "ext", "watch_dir": str(watch_dir), "particle_diameter_a": SETTINGS.particle_diameter_a,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME)}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(tmp_path), "CRYOEM_RECIPES_DIR": str(recipes)}
    run = subprocess.run([AIRFLOW, "dags", "test", "ext_live", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True)
    return run, results_store(None, str(tmp_path / "session" / "processing"))


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_run_motioncorr") is None, reason="needs the Debian relion package")
def test_relion_motion_correction_and_log_picking_feed_the_builtin_stages(tmp_path, airflow_env):
    run, store = _run_recipe(tmp_path, airflow_env, """
        motioncorr: {tool: relion, params: {patches_x: 1, patches_y: 1}}
        ctf: {after: [motioncorr]}
        pick: {tool: relion_autopick, after: [motioncorr]}
        extract: {after: [pick, ctf]}
        """)
    assert run.returncode == 0, run.stdout[-4000:]
    summary = store.session_summary("ext")
    assert summary.failures == []
    assert summary.stages["motion_correction"].succeeded == SETTINGS.n_movies
    assert summary.stages["particle_picking"].succeeded == SETTINGS.n_movies
    assert summary.median_particles_per_micrograph >= 1
    assert summary.median_total_motion_a > 0


def test_missing_program_fails_naming_it_and_the_recipe_setting(tmp_path, airflow_env):
    run, _ = _run_recipe(tmp_path, airflow_env, """
        motioncorr: {}
        ctf: {tool: ctffind4, after: [motioncorr], retries: 0}
        pick: {after: [motioncorr]}
        extract: {after: [pick, ctf]}
        """)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "ctffind" in output and "stages.ctf.tool: ctffind4" in output
