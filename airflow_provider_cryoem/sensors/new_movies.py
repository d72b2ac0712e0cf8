"""The live-session sensor: hands the run the movies that arrived since the last run took its share."""
from __future__ import annotations

from typing import Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from ..triggers.new_movies import NewMoviesTrigger


class NewMoviesSensor(BaseSensorOperator):
    """Opens the live session for this DAG run, waits for complete never-taken movies, claims them for the
    run, and hands them on already cut into micro-batches.

    Opening the session here rather than in a task of its own keeps one task hop off the path from a
    movie landing to its motion correction. What it opened is XCom key "opened" (a bad conf fails at once,
    naming the field). The claim is recorded in the results store under the run id, so a retried sensor
    returns the same movies and no other run ever gets them. Returns the micro-batches (a list of lists of
    movie items, for the mapped stages) and pushes `{"movies": [...], "session_over": bool, "reason": str}`
    as XCom key "found". Deferrable by default: while nothing arrives the wait costs a triggerer coroutine,
    not a worker slot.
    """

    def __init__(self, *, recipe_name: str, stable_for_s: float, relion_dialect: str, max_movies_per_task: int,
                 parallel_tasks: int, deferrable: bool = True, experiment: str = "spa", **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", 2.0)
        super().__init__(**kwargs)
        self.recipe_name = recipe_name
        self.stable_for_s = stable_for_s
        self.relion_dialect = relion_dialect
        self.experiment = experiment
        self.max_movies_per_task = max_movies_per_task
        self.parallel_tasks = parallel_tasks
        self.deferrable = deferrable

    def _opened(self, context: Context) -> dict[str, Any]:
        """The session as this run opened it (opened once; a resumed or retried sensor reuses it)."""
        # Imported when the sensor runs, not when the DAG file is parsed: every task process parses it.
        from ..config import ConfigError
        from ..pipeline.session import open_session
        from ..results import ResultsNotFoundError

        ti = context["ti"]
        opened = ti.xcom_pull(task_ids=self.task_id, key="opened")
        if opened is None:
            try:
                opened = open_session(context["params"], self.recipe_name, context["run_id"], reprocess=False,
                                      logical_date=None, sessions_root=None, stable_for_s=self.stable_for_s,
                                      relion_dialect=self.relion_dialect, experiment=self.experiment)
            except ConfigError as exc:
                raise AirflowFailException(str(exc)) from None  # no retry can fix a bad conf
            except ResultsNotFoundError as exc:
                # nor a session the results database does not know (ISPyB without the folder's data collection);
                # the sensor's retries with backoff are for outages
                raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None
            ti.xcom_push(key="opened", value=opened)
        return opened

    def _take(self, context: Context, opened: dict[str, Any]) -> list[list[dict[str, Any]]] | None:
        """Claim what is there: push what was found, return its micro-batches; None if nothing yet."""
        from ..pipeline.session import plan_batches
        from ..pipeline.watch import WatchSettings, take_new_movies

        settings = WatchSettings.model_validate(opened["sessions"][0]["watch"])
        taken = take_new_movies(settings, claimed_by=context["run_id"])
        if taken is None:
            return None
        context["ti"].xcom_push(key="found", value=taken)
        return plan_batches(opened, taken, self.max_movies_per_task, self.parallel_tasks)

    def poke(self, context: Context) -> PokeReturnValue:
        batches = self._take(context, self._opened(context))
        return PokeReturnValue(is_done=batches is not None, xcom_value=batches)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        return self.execute_complete(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[list[dict[str, Any]]]:
        """Take what is there, or go back to waiting in the triggerer (also after a false alarm)."""
        from ..pipeline.watch import WatchSettings, wake_up_plan

        opened = self._opened(context)
        batches = self._take(context, opened)
        if batches is not None:
            return batches
        settings = WatchSettings.model_validate(opened["sessions"][0]["watch"])
        plan = wake_up_plan(settings)
        self.defer(trigger=NewMoviesTrigger(settings.watch_dir, settings.movie_glob, settings.end_marker,
                                            settings.stable_for_s, plan["snapshot"], plan["idle_deadline_s"],
                                            self.poke_interval, settings.processing_path),
                   method_name="execute_complete")
