"""One DAG per recipe in the recipes folder (CRYOEM_RECIPES_DIR, default ../recipes beside this file)."""
import os
from pathlib import Path

from airflow_provider_cryoem.recipes.dag_factory import build_dags

_RECIPES_DIR = Path(os.environ.get("CRYOEM_RECIPES_DIR", Path(__file__).resolve().parent.parent / "recipes"))

globals().update(build_dags(_RECIPES_DIR))
