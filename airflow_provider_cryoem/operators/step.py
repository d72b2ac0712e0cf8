"""What every processing-step operator shares: its tool, its typed settings and where it runs, checked when
the DAG file is parsed so a wrong tool or setting is an import error naming the operator and the argument."""
from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import BaseOperator
from pydantic import BaseModel, ValidationError

from ..recipes.stages import STAGES, tool_settings_problem


class StepConfigurationError(ValueError):
    """A step operator built with a tool, setting or placement its step does not take."""


def placement(runs_on: str | dict[str, Any] | BaseModel) -> str | dict[str, Any]:
    """`"local"` or a Slurm placement as a plain dict (what the pipeline functions take)."""
    if isinstance(runs_on, BaseModel):
        return runs_on.model_dump()
    if isinstance(runs_on, str) and runs_on != "local":
        raise StepConfigurationError(f"runs_on: {runs_on!r} is neither 'local' nor a Slurm placement")
    return runs_on


class StepOperator(BaseOperator):
    """Base of the processing-step operators: `step` names the stage, its tools and settings model."""

    step: ClassVar[str]
    # The tool when none is given: the built-in engine, or the one program a step has.
    default_tool: ClassVar[str] = "builtin"
    # What the grid shows for each mapped instance (the operator puts the label in its context).
    map_index_label: ClassVar[str | None] = None
    ui_color = "#cfe8ff"

    def __init__(self, *, tool: str | None = None, settings: dict[str, Any] | BaseModel | None = None,
                 runs_on: str | dict[str, Any] | BaseModel = "local", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tool, self.settings, self.runs_on = self.checked_arguments(self.task_id, tool or self.default_tool,
                                                                        settings, runs_on)

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        """As BaseOperator.partial, checking tool, settings and placement now (a mapped operator's __init__
        runs only when its task runs)."""
        kwargs["tool"], kwargs["settings"], kwargs["runs_on"] = cls.checked_arguments(
            kwargs.get("task_id", "?"), kwargs.get("tool") or cls.default_tool, kwargs.get("settings"),
            kwargs.get("runs_on", "local"))  # plain data: the DAG is serialised with them
        if cls.map_index_label:
            kwargs.setdefault("map_index_template", "{{ %s }}" % cls.map_index_label)
        return super().partial(**kwargs)

    @classmethod
    def checked_arguments(cls, task_id: str, tool: str, settings: dict[str, Any] | BaseModel | None,
                          runs_on: str | dict[str, Any] | BaseModel) -> tuple[str, dict[str, Any], str | dict[str, Any]]:
        """(tool, settings as plain data, placement), or StepConfigurationError naming the argument."""
        definition = STAGES[cls.step]
        where = f"{cls.__name__}(task_id={task_id!r})"
        if tool not in definition.tools:
            raise StepConfigurationError(f"{where} tool: {tool!r} is not a tool of the {cls.step} step; choose "
                                         f"from {sorted(definition.tools)}")
        if isinstance(settings, BaseModel) and not isinstance(settings, definition.params_model):
            raise StepConfigurationError(f"{where} settings: {type(settings).__name__} are not "
                                         f"{definition.params_model.__name__}")
        try:
            model = definition.params_model.model_validate(
                settings.model_dump() if isinstance(settings, BaseModel) else settings or {})
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"])
            raise StepConfigurationError(f"{where} settings.{field}: {error['msg']}") from None
        problem = tool_settings_problem(cls.step, tool, model)
        if problem:
            raise StepConfigurationError(f"{where} settings.{problem}")
        try:
            where_to_run = placement(runs_on)
        except StepConfigurationError as exc:
            raise StepConfigurationError(f"{where} {exc}") from None
        if tool == "builtin" and isinstance(where_to_run, dict):
            raise StepConfigurationError(f"{where} runs_on: the built-in engines run on the Airflow worker; "
                                         f"Slurm placement needs an external program")
        return tool, model.model_dump(mode="json"), where_to_run

    def on_kill(self) -> None:
        """The task was killed (timeout, user): cancel the Slurm jobs it was waiting on, so they do not keep
        the cluster busy for a task that is gone."""
        from ..pipeline.external import cancel_waiting_slurm_jobs

        cancel_waiting_slurm_jobs()

    def step_settings(self) -> Any:
        """The settings as the step's pydantic model."""
        return STAGES[self.step].params_model.model_validate(self.settings)
