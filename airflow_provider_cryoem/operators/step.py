"""What every processing-step operator shares: its tool, its typed settings and where it runs, checked when
the DAG file is parsed so a wrong tool or setting is an import error naming the operator and the argument."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from airflow.sdk import BaseOperator, Context
from pydantic import BaseModel, ValidationError

from ..recipes.stages import STAGES, tool_settings_problem

log = logging.getLogger(__name__)
Result = TypeVar("Result")


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
    """Base of the processing-step operators: `step` names the stage, its tools and settings model.

    :param deferrable: with a Slurm placement, a step that runs through `run_deferring` submits its jobs and
        waits in the triggerer (``SlurmJobTrigger``, or the REST one) instead of in a worker slot, then runs
        again and reads the finished jobs back (default True).
    """

    step: ClassVar[str]
    # The tool when none is given: the built-in engine, or the one program a step has.
    default_tool: ClassVar[str] = "builtin"
    # What the grid shows for each mapped instance (the operator puts the label in its context).
    map_index_label: ClassVar[str | None] = None
    ui_color = "#cfe8ff"

    def __init__(self, *, tool: str | None = None, settings: dict[str, Any] | BaseModel | None = None,
                 runs_on: str | dict[str, Any] | BaseModel = "local", deferrable: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deferrable = deferrable
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

    def waits_in_triggerer(self) -> bool:
        """Whether this task defers while its Slurm jobs queue and run (deferrable, placed on Slurm)."""
        return self.deferrable and isinstance(self.runs_on, dict)

    def run_deferring(self, context: Context, work: Callable[[dict[str, Any]], Result],
                      initial: dict[str, Any] | None = None) -> Result:
        """`work(state)`, deferring to the triggerer while one of its Slurm jobs has not ended.

        `state` is this try's: "jobs" (job name -> id of every Slurm job submitted), plus whatever `work` keeps
        there (`initial`, e.g. the movies already done); it lives in XCom as `slurm_wait_try<N>`. When a job has
        not ended, SlurmJobPending leaves `work`; the state is saved and the task defers on that job. Back from
        the trigger, execute_complete runs the step again and `work` replays: jobs in the state are read back by
        id (a finished one's output used, a failed one failing as it would have), never submitted again, the
        next ones submitted, until none waits. Not on Slurm or not deferrable: `work` waits here as it did."""
        from ..execution import SlurmJobPending
        from ..pipeline.external import waiting_in_triggerer

        fresh = {**(initial or {}), "jobs": {}}
        if not self.waits_in_triggerer():
            return work(fresh)
        ti = context["ti"]
        key = f"slurm_wait_try{ti.try_number}"
        state = ti.xcom_pull(task_ids=self.task_id, key=key, map_indexes=ti.map_index) or fresh
        try:
            with waiting_in_triggerer(state["jobs"]):
                return work(state)
        except SlurmJobPending as waiting:
            from ..triggers.slurm_rest import slurm_job_trigger  # SSH or REST, only where a stage waits on Slurm

            ti.xcom_push(key=key, value=state)
            log.info("%s: %s; deferring on job %s", self.step, waiting, waiting.job["job_id"])
            self.defer(trigger=slurm_job_trigger(waiting.conn_id, waiting.job["job_id"], waiting.job["stderr_path"],
                                                 jobcomp_file=waiting.jobcomp_file,
                                                 poll_interval_s=waiting.poll_interval_s),
                       method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """A Slurm job waited for has ended: run the step again; its jobs already submitted are read back (a
        failed one fails as it would have), the others submitted, until none waits."""
        return self.execute(context)

    def step_settings(self) -> Any:
        """The settings as the step's pydantic model."""
        return STAGES[self.step].params_model.model_validate(self.settings)
