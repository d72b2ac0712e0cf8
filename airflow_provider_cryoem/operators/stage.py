"""One operator for every per-movie stage: a thin adapter from a mapped task instance to the stage runner."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from ..config import stage_config
from ..recipes.stages import STAGES

log = logging.getLogger(__name__)


class CryoemStageOperator(BaseOperator):
    """Runs one stage (motion correction, CTF, picking, extraction ...) over a micro-batch of movies.

    Each movie is processed, recorded in the results store and the Relion project, and reported in the
    returned list. A movie that fails (unreadable file, engine error) is recorded as failed with its
    reason and the rest of the batch goes on; an infrastructure failure (database down) fails the task
    so Airflow retries it, and the idempotent writes make the retry safe.
    """

    template_fields: Sequence[str] = ("movies",)
    ui_color = "#cfe8ff"

    def __init__(self, *, stage: str, tool: str, stage_params: dict[str, Any], runs_on: str | dict[str, Any],
                 input_stages: list[str], movies: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.tool = tool
        self.stage_params = stage_params
        self.runs_on = runs_on
        self.input_stages = input_stages
        self.movies = movies

    def _upstream_results(self, context: Context) -> dict[str, dict[str, dict[str, Any]]]:
        """Results of the input stages for the same micro-batch (same map index), by stage and movie."""
        ti = context["ti"]
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for stage in self.input_stages:
            entries = ti.xcom_pull(task_ids=stage, map_indexes=ti.map_index) or []
            results[stage] = {entry["movie"]: entry for entry in entries}
        return results

    def execute(self, context: Context) -> list[dict[str, Any]]:
        # Imported here, not at module level: every task process parses the DAG file, and the engines'
        # numpy/scipy imports would add seconds to each bookkeeping task of a live run.
        from ..pipeline.movie_batch import process_batch

        names = [item["movie"] for item in self.movies]
        context["movie_label"] = names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1})"
        config = stage_config(context["params"])
        params = STAGES[self.stage].params_model.model_validate(self.stage_params)
        outcomes = process_batch(self.stage, self.tool, self.runs_on, self.movies, config, params,
                                 self._upstream_results(context), context["run_id"])
        failed = [o for o in outcomes if o["status"] == "failed"]
        log.info("%s: %d movies, %d failed", self.stage, len(outcomes), len(failed))
        for outcome in failed:
            log.warning("%s failed for %s: %s", self.stage, outcome["movie"], outcome["error"])
        return outcomes
