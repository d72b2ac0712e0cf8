"""Recipe files: validation errors name the file and field; broken recipes never hide the good DAGs."""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from airflow_provider_cryoem.recipes.schema import (
    RecipeError,
    load_recipe,
    recipe_json_schema,
)
from airflow_provider_cryoem.recipes.stages import STAGES

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("path", sorted(RECIPES.glob("**/*.yaml")), ids=lambda p: str(p.relative_to(RECIPES)))
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    order = recipe.stage_order()
    last = "extract" if recipe.experiment == "spa" else "tomogram"
    assert order.index("motioncorr") < order.index("ctf") < order.index(last)
    assert recipe.experiment == ("tomography" if path.name.startswith("tomo_") else "spa")


def test_unknown_tool_names_the_file_stage_and_choices(tmp_path):
    path = _write(tmp_path, "bad_tool.yaml", """
        name: bad_tool
        stages:
          motioncorr: {tool: motioncor3}
        """)
    with pytest.raises(RecipeError, match=r"bad_tool.yaml: .*stages.motioncorr.tool: unknown tool 'motioncor3'"):
        load_recipe(path)


def test_unknown_stage_is_named(tmp_path):
    path = _write(tmp_path, "bad_stage.yaml", """
        name: bad_stage
        stages:
          motioncorr: {}
          denoise_everything: {}
        """)
    with pytest.raises(RecipeError, match="stages.denoise_everything: unknown stage"):
        load_recipe(path)


def test_dependency_cycle_is_reported(tmp_path):
    path = _write(tmp_path, "cycle.yaml", """
        name: cycle
        stages:
          motioncorr: {after: [extract]}
          ctf: {after: [motioncorr]}
          pick: {after: [motioncorr]}
          extract: {after: [pick, ctf]}
        """)
    with pytest.raises(RecipeError, match="cycle.yaml: .*dependency cycle"):
        load_recipe(path)


def test_stage_missing_its_input_stage_is_refused(tmp_path):
    path = _write(tmp_path, "no_pick.yaml", """
        name: no_pick
        stages:
          motioncorr: {}
          ctf: {after: [motioncorr]}
          extract: {after: [ctf]}
        """)
    with pytest.raises(RecipeError, match="stages.extract.after: stage 'extract' needs the results of 'pick'"):
        load_recipe(path)


def test_bad_stage_parameter_value_is_named(tmp_path):
    path = _write(tmp_path, "bad_param.yaml", """
        name: bad_param
        stages:
          motioncorr: {params: {patches_x: 0}}
        """)
    with pytest.raises(RecipeError, match="stages.motioncorr.params.patches_x"):
        load_recipe(path)


def test_bad_session_default_is_named(tmp_path):
    path = _write(tmp_path, "bad_default.yaml", """
        name: bad_default
        session_defaults: {voltage_kv: 5000}
        stages:
          motioncorr: {}
        """)
    with pytest.raises(RecipeError, match="session_defaults: .*voltage_kv"):
        load_recipe(path)


def test_reprocess_recipe_needs_a_schedule(tmp_path):
    path = _write(tmp_path, "no_schedule.yaml", """
        name: no_schedule
        mode: reprocess
        stages:
          motioncorr: {}
        """)
    with pytest.raises(RecipeError, match="schedule"):
        load_recipe(path)


def test_malformed_yaml_names_the_file(tmp_path):
    path = _write(tmp_path, "broken.yaml", "name: [unclosed\n")
    with pytest.raises(RecipeError, match="broken.yaml: cannot read recipe"):
        load_recipe(path)


def test_json_schema_is_exported_for_editors():
    schema = recipe_json_schema()
    json.dumps(schema)
    assert "stages" in schema["properties"] and "batching" in schema["properties"]


def test_broken_recipe_is_an_import_error_and_good_dags_still_load(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copy(RECIPES / "spa_live.yaml", recipes)
    _write(recipes, "zz_broken.yaml", """
        name: zz_broken
        stages:
          motioncorr: {tool: nonsense}
        """)
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(RECIPES.parent / "dags" / "cryoem_recipes.py", dags)
    monkeypatch.setenv("CRYOEM_RECIPES_DIR", str(recipes))
    bag = DagBag(dag_folder=str(dags))
    assert "spa_live" in bag.dags
    assert "cryoem_recipe_errors" not in bag.dags
    (message,) = bag.import_errors.values()
    assert "zz_broken.yaml" in message and "stages.motioncorr.tool" in message


def test_every_recipe_dag_shows_the_session_form(monkeypatch):
    """The trigger form of each DAG lists every session field with its section, bounds and description."""
    from airflow.dag_processing.dagbag import DagBag

    from airflow_provider_cryoem.config import SessionConfig

    monkeypatch.setenv("CRYOEM_RECIPES_DIR", str(RECIPES))
    bag = DagBag(dag_folder=str(RECIPES.parent / "dags"))
    assert not bag.import_errors
    assert {"spa_live", "spa_reprocess"} <= set(bag.dags)
    for dag in bag.dags.values():
        params = dag.params
        assert set(params.keys()) == set(SessionConfig.model_fields), dag.dag_id
        voltage = params.get_param("voltage_kv")
        assert voltage.schema["section"] == "Microscope" and voltage.schema["maximum"] == 400
        assert voltage.description


def test_live_dag_is_built_from_one_step_operator_per_stage(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("CRYOEM_RECIPES_DIR", str(RECIPES))
    dag = DagBag(dag_folder=str(RECIPES.parent / "dags")).dags["spa_live"]
    recipe = load_recipe(RECIPES / "spa_live.yaml")
    operators = {"motioncorr": "MotionCorrectionOperator", "ctf": "CtfEstimationOperator",
                 "pick": "ParticlePickingOperator", "extract": "ParticleExtractionOperator",
                 "select_particles": "ParticleRebatchOperator", "class2d": "Class2DOperator",
                 "select_classes": "ClassSelectionOperator", "class3d": "Class3DOperator",
                 "reextract": "ClassReextractionOperator", "refine3d": "Refine3DOperator",
                 "bfactor": "BFactorOperator"}
    assert set(recipe.stages) == set(operators)
    for stage in recipe.stages:
        task = dag.get_task(stage)
        assert task.operator_name == operators[stage], stage  # what the grid shows
        if STAGES[stage].scope == "movie":
            assert type(task).__name__ == "MappedOperator", stage
            assert task.map_index_template == "{{ movie_label }}"
    assert dag.get_task("select_particles").upstream_task_ids == {"extract", "wait_for_movies"}
    assert type(dag.get_task("class2d")).__name__ == "MappedOperator"
    assert dag.get_task("class2d").map_index_template == "{{ batch_label }}"
    assert dag.get_task("wait_for_movies").upstream_task_ids == set()
    assert dag.get_task("extract").upstream_task_ids == {"pick", "ctf", "wait_for_movies"}
    # 3D is decided once per run (also when no 2D batch was classified), then mapped per 3D round
    class3d = dag.get_task("class3d")
    assert type(class3d).__name__ == "Class3DOperator" and class3d.trigger_rule == "none_failed"
    assert class3d.upstream_task_ids == {"select_classes", "wait_for_movies"}
    for name, upstream in (("reextract", "class3d"), ("refine3d", "reextract"), ("bfactor", "refine3d")):
        assert type(dag.get_task(name)).__name__ == "MappedOperator"
        assert dag.get_task(name).upstream_task_ids == {upstream}


def test_demo_recipe_has_the_stages_of_the_live_recipe_with_smaller_settings():
    live, demo = load_recipe(RECIPES / "spa_live.yaml"), load_recipe(RECIPES / "demo" / "spa_live.yaml")
    assert demo.name == live.name and demo.mode == live.mode
    optional = {"ice"}  # commented out in spa_live.yaml (it needs the [icebreaker] extra), on in the demo
    assert {n: (s.tool, s.after) for n, s in demo.stages.items() if n not in optional} == \
        {n: (s.tool, s.after) for n, s in live.stages.items()}
    assert demo.stages["ice"].tool == "icebreaker" and "ice" not in live.stages


def test_particle_stage_cannot_feed_a_per_movie_stage(tmp_path):
    path = _write(tmp_path, "backwards.yaml", """
        name: backwards
        stages:
          motioncorr: {}
          ctf: {after: [motioncorr]}
          pick: {after: [motioncorr]}
          extract: {after: [pick, ctf]}
          select_particles: {after: [extract]}
          class2d: {tool: relion, after: [select_particles]}
          select_classes: {after: [class2d]}
          zz: {}
        """)
    with pytest.raises(RecipeError, match="stages.zz: unknown stage"):
        load_recipe(path)
    path.write_text(path.read_text().replace("  zz: {}\n", "").replace("ctf: {after: [motioncorr]}",
                                                                      "ctf: {after: [motioncorr, class2d]}"))
    with pytest.raises(RecipeError, match="stages.ctf.after: a per-movie stage cannot wait for particle-batch"):
        load_recipe(path)


def test_builtin_engine_cannot_be_placed_on_slurm(tmp_path):
    path = _write(tmp_path, "slurm_builtin.yaml", """
        name: slurm_builtin
        stages:
          motioncorr: {tool: builtin, runs_on: {slurm_conn_id: cluster, gpus: 1}}
        """)
    with pytest.raises(RecipeError, match="stages.motioncorr.runs_on: the built-in engines run on the Airflow worker"):
        load_recipe(path)
    path.write_text(path.read_text().replace("tool: builtin", "tool: relion"))
    assert load_recipe(path).stages["motioncorr"].runs_on.slurm_conn_id == "cluster"


def test_queues_route_stages_and_session_tasks_and_bad_names_are_refused(tmp_path):
    from airflow_provider_cryoem.recipes.dag_factory import build_dag

    body = (RECIPES / "spa_live.yaml").read_text()
    recipe = load_recipe(_write(tmp_path, "spa_live.yaml", body))
    data = recipe.model_dump()
    data["session_queue"] = "session"
    for stage in ("motioncorr", "ctf", "class2d"):
        data["stages"][stage]["queue"] = "compute"
    dag = build_dag(type(recipe).model_validate(data))
    assert dag.get_task("motioncorr").partial_kwargs["queue"] == "compute"
    assert dag.get_task("class2d").partial_kwargs["queue"] == "compute"
    assert dag.get_task("pick").partial_kwargs.get("queue", "default") == "default"  # no queue: Airflow's default
    for task_id in ("wait_for_movies", "start_next_batch", "close_batch"):
        assert dag.get_task(task_id).queue == "session", task_id
    assert dag.get_task("class3d").queue == "default"
    bad = _write(tmp_path, "bad.yaml", body.replace("  motioncorr:\n", "  motioncorr:\n    queue: 'compute; rm -rf /'\n"))
    with pytest.raises(RecipeError, match=r"bad.yaml: stages.motioncorr.queue"):
        load_recipe(bad)
