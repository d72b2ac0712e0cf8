"""One unusable recipe file is that file's error only; the other recipes' DAGs still load (issue 12, item 14)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from airflow_provider_cryoem.recipes.schema import RecipeError, load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SECRET = "s3cr3t-value"  # stands for recipe text that must not reach an error message


@pytest.mark.parametrize(("content", "problem"), [
    (b"name: a\n# \xff\xfe latin-1 comment\n", r"not UTF-8 text \(invalid byte at offset 10\)"),
    (f"name: a\n\t{SECRET}: x\n".encode(), r"not valid YAML \(ScannerError at line 2, column 1\)"),
    (f"name: [{SECRET}\n".encode(), r"not valid YAML \(ParserError at line 2, column 1\)"),
    (b"[" * 5000 + b"]" * 5000, "YAML nested too deeply"),
    (f"- {SECRET}\n- b\n".encode(), "a recipe must be a mapping of fields, not list"),
    (b"# nothing but a comment\n", "a recipe must be a mapping of fields, not NoneType"),
])
def test_unusable_recipe_file_is_a_recipe_error_naming_the_file(tmp_path: Path, content: bytes,
                                                                  problem: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_bytes(content)
    with pytest.raises(RecipeError, match=f"^broken.yaml: .*{problem}") as error:
        load_recipe(path)
    assert SECRET not in str(error.value)


def test_every_broken_recipe_is_reported_and_the_good_dags_still_load(tmp_path: Path, monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copy(RECIPES / "spa_live.yaml", recipes)
    (recipes / "a_latin1.yaml").write_bytes(b"name: a_latin1\ndescription: \xe9chantillon\n")
    (recipes / "b_list.yaml").write_text("- name\n- stages\n")
    (recipes / "c_deep.yaml").write_text("[" * 5000 + "]" * 5000)
    reprocess = (RECIPES / "spa_reprocess.yaml").read_text()
    assert 'schedule: "@daily"' in reprocess
    # valid to the schema, refused by Airflow when the DAG is validated
    (recipes / "d_bad_cron.yaml").write_text(reprocess.replace('"@daily"', '"every tuesday"'))
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(RECIPES.parent / "dags" / "cryoem_recipes.py", dags)
    monkeypatch.setenv("CRYOEM_RECIPES_DIR", str(recipes))

    bag = DagBag(dag_folder=str(dags))

    assert set(bag.dags) == {"spa_live"}  # the bad-cron recipe's DAG is not bagged half-built either
    (message,) = bag.import_errors.values()
    assert message.startswith("RecipeError: ")
    for name in ("a_latin1.yaml", "b_list.yaml", "c_deep.yaml", "d_bad_cron.yaml"):
        assert name in message
    assert "d_bad_cron.yaml: cannot build a DAG from this recipe (AirflowTimetableInvalid" in message
