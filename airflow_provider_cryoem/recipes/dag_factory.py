"""Recipe → DAG. One DAG per recipe file; per-movie stages are mapped over micro-batches of movies.

Live shape (chosen from measurements, see README): one DAG run per batch of arrivals. A run opens the
session, waits in the triggerer for new complete movies, claims them, starts the next run at once (so the
next wait overlaps this run's processing), then maps every per-movie stage over micro-batches. The session
ends by itself on its end marker, idle timeout or movie limit.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, TriggerRule, task

from ..operators.batch_steps import BATCH_STEP_OPERATORS, GATHERING_STEP_OPERATORS
from ..operators.movie_steps import MOVIE_STEP_OPERATORS
from ..operators.session import StartNextRunOperator
from ..params import session_params
from ..sensors.new_movies import NewMoviesSensor
from .schema import Recipe, RecipeError, StageSpec, load_recipe
from .stages import STAGES

# The session's own tasks (take the movies, cut the batches, start the next wait) go before any stage
# task when executor slots are short: otherwise a burst's stage tasks, weighted by their many downstream
# tasks, hold the next run's wait back by a whole stage's compute time.
_SESSION_PRIORITY: dict[str, Any] = {"priority_weight": 1000, "weight_rule": "absolute"}
# The session's own tasks are retried through an outage of the broker or a database (a task whose Celery message
# cannot be sent fails without running): 2, 4, 8, 16, 32 s, about a minute in all. Each is safe to run again.
_SESSION_RETRIES: dict[str, Any] = {"retries": 5, "retry_delay": dt.timedelta(seconds=2),
                                    "retry_exponential_backoff": True, "max_retry_delay": dt.timedelta(seconds=60)}


def _queue(queue: str | None) -> dict[str, Any]:
    """The operator's `queue` argument when the recipe names one (else Airflow's default queue)."""
    return {"queue": queue} if queue else {}


class RecipeErrorsDag(DAG):
    """Stands for recipe files that failed to load: its validation raises their errors.

    Airflow records an error raised while validating one DAG of a file as that file's import error and
    still loads the file's other DAGs, so a broken recipe shows in `airflow dags list-import-errors`
    without taking the good recipes down with it.
    """

    def __init__(self, errors: list[str]) -> None:
        super().__init__(dag_id="cryoem_recipe_errors", schedule=None, description="Recipe errors")
        self.recipe_errors = errors

    def validate(self) -> None:
        raise RecipeError("; ".join(self.recipe_errors))


def _session_tasks(recipe: Recipe, live: bool) -> tuple[Any, Any, Any]:
    """The opened session, what this run found (movies, whether the session is over) and its micro-batches.

    Live: one sensor opens the session, waits and claims. Reprocess: open the dated sessions, list
    their movies, cut batches.
    """
    if live:
        sensor = NewMoviesSensor(
            task_id="wait_for_movies",
            recipe_name=recipe.name,
            stable_for_s=recipe.batching.stable_for_s,
            relion_dialect=recipe.relion_dialect,
            experiment=recipe.experiment,
            max_movies_per_task=recipe.batching.max_movies_per_task,
            parallel_tasks=recipe.batching.parallel_tasks,
            poke_interval=recipe.batching.poll_interval_s,
            timeout=7 * 24 * 3600,
            # Retries also cover Airflow 3.3 failing a deferred task whose trigger fires within seconds: the
            # stale "success" of the deferring attempt reaches the scheduler after the resumed attempt is queued
            # (apache/airflow#67287, #72716). A retry is safe (the run gets back the movies it claimed)
            # and keeps the session's chain of runs alive.
            **_SESSION_RETRIES,
            **_SESSION_PRIORITY,
            **_queue(recipe.session_queue),
        )
        return sensor.output["opened"], sensor.output["found"], sensor.output

    @task(task_id="open_session", retries=0, **_queue(recipe.session_queue))
    def open_session_task(**context: Any) -> dict[str, Any]:
        from ..pipeline.session import open_session

        return open_session(context["params"], recipe.name, context["run_id"], reprocess=True,
                            logical_date=context.get("logical_date"), sessions_root=recipe.sessions_root,
                            stable_for_s=recipe.batching.stable_for_s, relion_dialect=recipe.relion_dialect,
                            experiment=recipe.experiment)

    @task(task_id="list_movies", **_queue(recipe.session_queue))
    def list_movies_task(opened: dict[str, Any]) -> dict[str, Any]:
        from ..pipeline.session import reprocess_movies

        return reprocess_movies(opened)

    @task(task_id="plan_batches", **_queue(recipe.session_queue))
    def plan_batches_task(opened: dict[str, Any], found_movies: dict[str, Any]) -> list[list[dict[str, Any]]]:
        from ..pipeline.session import plan_batches

        return plan_batches(opened, found_movies, recipe.batching.max_movies_per_task,
                            recipe.batching.parallel_tasks)

    session = open_session_task()
    found = list_movies_task(session)
    return session, found, plan_batches_task(session, found)


def _step_task(name: str, spec: StageSpec, recipe: Recipe, session: Any, found: Any, batches: Any,
               upstream: Any) -> Any:
    """The step's operator for this recipe stage: per-movie steps mapped over the micro-batches, gathering
    steps once per run, batch steps mapped over what the gathering step returned."""
    common = {"task_id": name, "tool": spec.tool, "settings": spec.params, "runs_on": spec.runs_on,
              "retries": spec.retries, "retry_delay": dt.timedelta(seconds=spec.retry_delay_s),
              "execution_timeout": dt.timedelta(seconds=spec.timeout_s), **_queue(spec.queue)}
    if name in MOVIE_STEP_OPERATORS:
        return MOVIE_STEP_OPERATORS[name].partial(
            input_tasks={stage: stage for stage in recipe.ancestors(name)}, **common).expand(movies=batches)
    if name in GATHERING_STEP_OPERATORS:
        return GATHERING_STEP_OPERATORS[name](opened=session, found=found, upstream=upstream.output, **common)
    if name == "bfactor":
        common["refine_settings"] = recipe.stages["refine3d"].params
    return BATCH_STEP_OPERATORS[name].partial(**common).expand(item=upstream.output)


def build_dag(recipe: Recipe) -> DAG:
    """Build the DAG of one validated recipe."""
    live = recipe.mode == "live"
    dag = DAG(
        dag_id=recipe.name,
        description=recipe.description,
        schedule=None if live else recipe.schedule,
        start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        params=session_params(recipe.session_defaults),
        max_active_runs=recipe.batching.max_active_runs if live else 1,
        max_active_tasks=64,
        render_template_as_native_obj=True,
        tags=["cryoem", recipe.mode],
        doc_md=recipe.description,
        # found through the DAG file's globals (build_dags), so a recipe whose DAG fails to build or validate
        # is not also picked up half-built by Airflow's auto-registration of `with dag:` blocks
        auto_register=False,
    )
    with dag:
        session, found, batches = _session_tasks(recipe, live)
        stage_tasks: dict[str, Any] = {}
        for name in recipe.stage_order():
            spec = recipe.stages[name]
            upstream = stage_tasks[spec.after[0]] if STAGES[name].scope != "movie" else None
            stage_tasks[name] = _step_task(name, spec, recipe, session, found, batches, upstream)
        for name, spec in recipe.stages.items():
            if STAGES[name].scope != "movie":
                continue
            for upstream in spec.after:
                stage_tasks[upstream] >> stage_tasks[name]
            if not spec.after:
                batches >> stage_tasks[name]

        # The session and what was found are pulled inside, not passed as arguments: when opening failed (a bad
        # conf) they do not exist, and an argument that cannot be resolved would fail close_batch before it runs,
        # through all its retries, instead of closing nothing.
        @task(task_id="close_batch", trigger_rule=TriggerRule.ALL_DONE, **_SESSION_RETRIES,
              **_queue(recipe.session_queue))
        def close_batch_task(**context: Any) -> dict[str, Any]:
            from ..pipeline.session import close_batch

            ti = context["ti"]
            opened, found_movies = (ti.xcom_pull(task_ids=arg.operator.task_id, key=arg.key)
                                    for arg in (session, found))
            return close_batch(context["params"], opened, found_movies)

        closing = close_batch_task()
        [session.operator, found.operator, *stage_tasks.values()] >> closing
        # close_batch runs whatever happened; this leaf makes a failed stage fail the DAG run too.
        list(stage_tasks.values()) >> EmptyOperator(task_id="all_stages_succeeded")

        if live:
            session >> StartNextRunOperator(task_id="start_next_batch", trigger_dag_id=recipe.name,
                                            sensor_task_id="wait_for_movies", **_SESSION_PRIORITY,
                                            **_SESSION_RETRIES, **_queue(recipe.session_queue))
    return dag


def build_dags(recipes_dir: str | Path) -> dict[str, DAG]:
    """Every recipe of `recipes_dir` as a DAG; broken recipes are gathered into one RecipeErrorsDag.

    Whatever goes wrong with one file, even an error no validator foresaw while building or validating its
    DAG, is that file's error: an exception escaping here would fail the whole DAG file and hide every
    recipe's DAG, and Airflow keeps one import error per DAG file, so a second failing DAG would hide these.
    """
    dags: dict[str, DAG] = {}
    errors: list[str] = []
    for path in sorted(Path(recipes_dir).glob("*.yaml")):
        try:
            recipe = load_recipe(path)
            if recipe.name in dags:
                raise RecipeError(f"{path.name}: name: DAG id {recipe.name!r} is used by another recipe")
            dag = build_dag(recipe)
            dag.validate()  # what Airflow checks when bagging (a bad cron schedule), so it joins the recipe errors
            dags[recipe.name] = dag
        except RecipeError as exc:
            errors.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure of one recipe must stay that recipe's
            errors.append(f"{path.name}: cannot build a DAG from this recipe ({type(exc).__name__}: {exc})")
    if errors:
        dags["cryoem_recipe_errors"] = RecipeErrorsDag(errors)
    return dags
