"""The live-session sensor: hands the run the movies that arrived since the last run took its share."""
from __future__ import annotations

from typing import Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue

from ..triggers.new_movies import NewMoviesTrigger
from ..watch import WatchSettings, take_new_movies


class NewMoviesSensor(BaseSensorOperator):
    """Waits for complete, never-taken movies of the session and claims them for this DAG run.

    The claim is recorded in the results store under the run id, so a retried sensor returns the same
    movies and no other run ever gets them. Returns `{"movies": [...], "session_over": bool, "reason": str}`.
    Deferrable by default: while nothing arrives the wait costs a triggerer coroutine, not a worker slot.
    """

    template_fields = ("watch",)

    def __init__(self, *, watch: dict[str, Any], deferrable: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", 2.0)
        super().__init__(**kwargs)
        self.watch = watch
        self.deferrable = deferrable

    def _settings(self) -> WatchSettings:
        return WatchSettings.model_validate(self.watch)

    def poke(self, context: Context) -> PokeReturnValue:
        taken = take_new_movies(self._settings(), claimed_by=context["run_id"])
        return PokeReturnValue(is_done=taken is not None, xcom_value=taken)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        return self._take_or_defer(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        return self._take_or_defer(context)

    def _take_or_defer(self, context: Context) -> dict[str, Any]:
        taken = take_new_movies(self._settings(), claimed_by=context["run_id"])
        if taken is not None:
            return taken
        self.defer(trigger=NewMoviesTrigger(self.watch, self.poke_interval), method_name="execute_complete")
