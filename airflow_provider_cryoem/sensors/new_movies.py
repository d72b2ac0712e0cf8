"""The live-session sensor: hands the run the movies that arrived since the last run took its share."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue

from ..triggers.new_movies import NewMoviesTrigger

if TYPE_CHECKING:
    from ..pipeline.watch import WatchSettings


class NewMoviesSensor(BaseSensorOperator):
    """Waits for complete, never-taken movies of the session and claims them for this DAG run.

    The claim is recorded in the results store under the run id, so a retried sensor returns the same
    movies and no other run ever gets them. Returns `{"movies": [...], "session_over": bool, "reason": str}`.
    Deferrable by default: while nothing arrives the wait costs a triggerer coroutine, not a worker slot.
    """

    template_fields = ("watch",)

    def __init__(self, *, watch: dict[str, Any] | str, deferrable: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", 2.0)
        super().__init__(**kwargs)
        self.watch = watch
        self.deferrable = deferrable

    def _settings(self) -> WatchSettings:
        # The results store behind the watcher is imported when the sensor runs, not when the DAG file
        # is parsed: every task process of a live run parses the DAG file.
        from ..pipeline.watch import WatchSettings

        return WatchSettings.model_validate(self.watch)

    def poke(self, context: Context) -> PokeReturnValue:
        from ..pipeline.watch import take_new_movies

        taken = take_new_movies(self._settings(), claimed_by=context["run_id"])
        return PokeReturnValue(is_done=taken is not None, xcom_value=taken)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        return self.execute_complete(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Take what is there, or go back to waiting in the triggerer (also after a false alarm)."""
        from ..pipeline.watch import take_new_movies, wake_up_plan

        settings = self._settings()
        taken = take_new_movies(settings, claimed_by=context["run_id"])
        if taken is not None:
            return taken
        plan = wake_up_plan(settings)
        self.defer(trigger=NewMoviesTrigger(settings.watch_dir, settings.movie_glob, settings.end_marker,
                                            settings.stable_for_s, plan["snapshot"], plan["idle_deadline_s"],
                                            self.poke_interval),
                   method_name="execute_complete")
