"""The public step operators: usable in a hand-written DAG (docs/example_dags), and a wrong tool, setting or
placement is an error when the DAG file is parsed, naming the operator and the argument."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from airflow_provider_cryoem.operators.batch_steps import Class2DOperator, TomogramOperator
from airflow_provider_cryoem.operators.movie_steps import CtfEstimationOperator, MotionCorrectionOperator
from airflow_provider_cryoem.operators.step import StepConfigurationError
from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.recipes.stages import CtfParams
from airflow_provider_cryoem.simulate import (
    END_MARKER_NAME,
    GAIN_REFERENCE_NAME,
    SpaSimulationSettings,
    write_spa_session,
)

from .conftest import AIRFLOW

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "example_dags" / "preprocess_folder.py"


def test_every_stage_a_recipe_may_use_has_exactly_one_operator():
    from airflow_provider_cryoem.operators.batch_steps import BATCH_STEP_OPERATORS, GATHERING_STEP_OPERATORS
    from airflow_provider_cryoem.operators.movie_steps import MOVIE_STEP_OPERATORS
    from airflow_provider_cryoem.recipes.stages import STAGES

    families = (MOVIE_STEP_OPERATORS, GATHERING_STEP_OPERATORS, BATCH_STEP_OPERATORS)
    assert sorted(step for family in families for step in family) == sorted(STAGES)
    assert all((STAGES[step].scope == "movie") == (family is MOVIE_STEP_OPERATORS)
               for family in families for step in family)


def test_provider_info_names_every_step_operator():
    from airflow_provider_cryoem import STEP_OPERATORS, get_provider_info
    from airflow_provider_cryoem.operators.batch_steps import BATCH_STEP_OPERATORS, GATHERING_STEP_OPERATORS
    from airflow_provider_cryoem.operators.movie_steps import MOVIE_STEP_OPERATORS

    classes = {operator.__name__ for family in (MOVIE_STEP_OPERATORS, GATHERING_STEP_OPERATORS,
                                                BATCH_STEP_OPERATORS) for operator in family.values()}
    assert set(STEP_OPERATORS) == classes
    assert all(name in get_provider_info()["description"] for name in classes)


def test_wrong_tool_is_refused_naming_the_operator_and_the_choices():
    with pytest.raises(StepConfigurationError, match=r"MotionCorrectionOperator\(task_id='mc'\) tool: 'ctffind4' "
                                                     r"is not a tool of the motioncorr step.*motioncor2"):
        MotionCorrectionOperator(task_id="mc", tool="ctffind4", movies=[])


def test_setting_out_of_bounds_or_of_another_step_is_refused_when_mapped_too():
    with pytest.raises(StepConfigurationError, match=r"CtfEstimationOperator\(task_id='ctf'\) settings\.tile_size_px"):
        CtfEstimationOperator.partial(task_id="ctf", settings={"tile_size_px": 8})
    with pytest.raises(StepConfigurationError, match=r"settings\.patches_x: Extra inputs are not permitted"):
        CtfEstimationOperator.partial(task_id="ctf", settings={"patches_x": 5})
    with pytest.raises(StepConfigurationError, match=r"settings: CtfParams are not MotionCorrectionParams"):
        MotionCorrectionOperator(task_id="mc", settings=CtfParams(), movies=[])


def test_builtin_engines_cannot_be_placed_on_slurm_but_programs_can():
    slurm = {"slurm_conn_id": "cluster", "cpus": 8, "gpus": 1}
    with pytest.raises(StepConfigurationError, match=r"TomogramOperator\(task_id='tomo'\) runs_on: the built-in"):
        TomogramOperator(task_id="tomo", runs_on=slurm, item={})
    with pytest.raises(StepConfigurationError, match=r"runs_on: 'cluster' is neither 'local' nor a Slurm placement"):
        Class2DOperator(task_id="c2d", tool="relion", runs_on="cluster", item={})
    operator = TomogramOperator(task_id="tomo", tool="aretomo2", runs_on=slurm, item={})
    assert operator.runs_on == slurm and operator.settings["alignment_size_px"] == 512


def test_hand_written_example_dag_preprocesses_a_folder(tmp_path, airflow_env):
    watch_dir = tmp_path / "visit" / "raw"
    settings = SpaSimulationSettings(n_movies=3, image_size_px=256, n_frames=6, particle_diameter_a=80,
                                     particles_per_micrograph=5, seed=12)
    write_spa_session(settings, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    conf = {"session_name": "handwritten", "watch_dir": str(watch_dir), "particle_diameter_a": 80,
            "pixel_size_a": settings.pixel_size_a, "dose_per_frame_e_a2": settings.dose_per_frame_e_a2,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME)}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(tmp_path), "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE.parent)}
    run = subprocess.run([AIRFLOW, "dags", "test", "preprocess_folder", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    summary = results_store(None, str(tmp_path / "visit" / "processing")).session_summary("handwritten")
    assert summary.movies_registered == 3 and not summary.failures
    assert {stage: summary.stages[stage].succeeded for stage in ("motion_correction", "ctf", "particle_picking")} == \
        {"motion_correction": 3, "ctf": 3, "particle_picking": 3}
