"""Recipe files: which stages run, in what order, with which program, where, and with what settings.

A recipe is YAML validated by the pydantic models below; `recipe_json_schema()` exports the JSON Schema
for editors. Errors name the recipe file and the field (`spa_live.yaml: stages.ctf.tool: ...`).
"""
from __future__ import annotations

import graphlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..config import ConfigError, parse_session_config
from .stages import STAGES, StageDefinition, tool_settings_problem


class RecipeError(ValueError):
    """A recipe that cannot be turned into a DAG; the message names the file and the field."""


class SlurmPlacement(BaseModel):
    """Run a stage's command on a Slurm cluster reached over SSH (an Airflow SSH connection)."""

    model_config = ConfigDict(extra="forbid")
    slurm_conn_id: str = Field(min_length=1, description="Airflow SSH connection of the cluster login node.")
    partition: str | None = None
    gpus: int = Field(0, ge=0, le=16)
    cpus: int = Field(1, ge=1, le=512)
    memory_gb: float = Field(4, gt=0, le=4096)
    time_limit_min: int = Field(60, ge=1, le=7 * 24 * 60)


# A Celery queue name as `airflow celery worker --queues a,b` takes it.
QUEUE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class StageSpec(BaseModel):
    """One stage of a recipe."""

    model_config = ConfigDict(extra="forbid")
    tool: str = Field("builtin", description="Implementation: 'builtin' (our engine) or an external program.")
    after: list[str] = Field(default_factory=list, description="Stages whose results this stage needs.")
    runs_on: Literal["local"] | SlurmPlacement = Field("local", description="'local' or a Slurm placement.")
    params: dict[str, Any] = Field(default_factory=dict, description="Overrides of the stage's settings.")
    retries: int = Field(2, ge=0, le=20)
    retry_delay_s: float = Field(10, ge=0, le=3600)
    timeout_s: float = Field(3600, gt=0, le=7 * 24 * 3600)
    queue: str | None = Field(None, pattern=QUEUE_PATTERN, description="Celery queue of this stage's tasks "
                                                                       "(None: the executor's default queue).")


class BatchingSpec(BaseModel):
    """How newly arrived movies are grouped into mapped task instances."""

    model_config = ConfigDict(extra="forbid")
    max_movies_per_task: int = Field(8, ge=1, le=1000, description="Upper bound of movies in one task instance.")
    parallel_tasks: int = Field(4, ge=1, le=256, description="Aim for this many mapped task instances per batch.")
    poll_interval_s: float = Field(2.0, gt=0, le=600, description="Folder scan interval of the watcher.")
    stable_for_s: float = Field(2.0, ge=0, le=600, description="A movie is complete once its size has not "
                                                                 "changed for this long.")
    max_active_runs: int = Field(16, ge=1, le=256, description="Live: runs of this DAG active at once, over all "
                                 "its sessions (a session keeps one waiting for movies and those still processing).")


class Recipe(BaseModel):
    """A processing recipe: one DAG."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="DAG id.")
    description: str = ""
    mode: Literal["live", "reprocess"] = "live"
    schedule: str | None = Field(None, description="Cron or preset for reprocessing DAGs; live DAGs are triggered.")
    sessions_root: str | None = Field(None, description="Reprocess: folder of dated session folders "
                                                        "(YYYYMMDD_name) a scheduled run picks by its date.")
    session_defaults: dict[str, Any] = Field(default_factory=dict, description="Defaults for the trigger form.")
    relion_dialect: Literal["relion5", "relion3"] = Field("relion5", description="STAR dialect of the Relion "
                                                                                "project: Relion 5 or Relion 3.1.")
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    session_queue: str | None = Field(None, pattern=QUEUE_PATTERN, description="Celery queue of the session's own "
                                      "tasks (wait for movies, start the next run, close the batch); a queue no "
                                      "heavy stage uses keeps the next wait from queueing behind computation.")
    stages: dict[str, StageSpec]

    @field_validator("session_defaults")
    @classmethod
    def _defaults_are_session_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            parse_session_config(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _stages_are_known_and_acyclic(self) -> "Recipe":
        for name, spec in self.stages.items():
            definition = stage_definition(name)
            if spec.tool not in definition.tools:
                raise ValueError(f"stages.{name}.tool: unknown tool {spec.tool!r} for stage {name!r} "
                                 f"(choose from {sorted(definition.tools)})")
            try:
                params = definition.params_model.model_validate(spec.params)
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"stages.{name}.params.{field}: {err['msg']}") from None
            problem = tool_settings_problem(name, spec.tool, params)
            if problem:
                raise ValueError(f"stages.{name}.params.{problem}")
            for upstream in spec.after:
                if upstream not in self.stages:
                    raise ValueError(f"stages.{name}.after: {upstream!r} is not a stage of this recipe")
            for needed in definition.needs:
                if needed not in self.ancestors(name):
                    raise ValueError(f"stages.{name}.after: stage {name!r} needs the results of {needed!r}")
            if spec.tool == "builtin" and not isinstance(spec.runs_on, str):
                raise ValueError(f"stages.{name}.runs_on: the built-in engines run on the Airflow worker; Slurm "
                                 f"placement needs an external program (tool), or route the task to a worker "
                                 f"queue on the cluster")
            if definition.scope != "movie" and len(spec.after) != 1:
                raise ValueError(f"stages.{name}.after: a particle-batch or tilt-series stage follows exactly "
                                 f"one stage")
            if definition.scope == "movie" and any(STAGES[a].scope != "movie" for a in spec.after if a in STAGES):
                raise ValueError(f"stages.{name}.after: a per-movie stage cannot wait for particle-batch stages")
        if self.mode == "reprocess" and not self.schedule:
            raise ValueError("schedule: a reprocess recipe needs a schedule (e.g. '@daily') for backfills")
        try:
            self.stage_order()
        except graphlib.CycleError as exc:
            raise ValueError(f"stages: dependency cycle {' -> '.join(exc.args[1])}") from None
        return self

    @property
    def experiment(self) -> Literal["spa", "tomography"]:
        """Tomography when the recipe gathers tilt series; its per-tilt stages then write Relion 5's
        tilt-series files instead of single-particle micrograph lists."""
        return "tomography" if "tilt_series" in self.stages else "spa"

    def ancestors(self, stage: str) -> list[str]:
        """Every stage whose results `stage` can use: its `after` stages and theirs, recursively."""
        pending, seen = list(self.stages[stage].after), []
        while pending:
            current = pending.pop()
            if current not in seen and current in self.stages:
                seen.append(current)
                pending.extend(self.stages[current].after)
        return sorted(seen)

    def stage_order(self) -> list[str]:
        """Stages in an order where each comes after everything it depends on."""
        sorter = graphlib.TopologicalSorter({name: spec.after for name, spec in self.stages.items()})
        return list(sorter.static_order())


def stage_definition(name: str) -> StageDefinition:
    if name not in STAGES:
        raise ValueError(f"stages.{name}: unknown stage {name!r} (choose from {sorted(STAGES)})")
    return STAGES[name]


def _yaml_position(exc: yaml.YAMLError) -> str:
    """Where PyYAML failed, as line and column; its message is not used since it quotes the offending line."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate one recipe file; RecipeError names the file and the failing field.

    Every way a file can be unusable (unreadable, not UTF-8, not YAML, not a mapping, invalid fields) is a
    RecipeError, so that one bad file becomes its own error and never stops the other recipes loading.
    Messages name the file, position and field, never the file's text.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path.name}: cannot read recipe: not UTF-8 text (invalid byte at offset {exc.start})") \
            from None
    except OSError as exc:
        raise RecipeError(f"{path.name}: cannot read recipe ({exc.strerror or type(exc).__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path.name}: cannot read recipe: not valid YAML ({type(exc).__name__}"
                          f"{_yaml_position(exc)})") from None
    except RecursionError:
        raise RecipeError(f"{path.name}: cannot read recipe: YAML nested too deeply") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path.name}: a recipe must be a mapping of fields, not {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{field}: {message}" if field else message)
        raise RecipeError(f"{path.name}: " + "; ".join(problems)) from None


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of recipe files, for editors (`cryoem recipe-schema`)."""
    return Recipe.model_json_schema()
