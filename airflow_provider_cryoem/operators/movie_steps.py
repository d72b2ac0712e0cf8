"""Per-movie processing steps: motion correction, CTF estimation, particle picking, ice thickness, particle
extraction.

Each operator processes a micro-batch of movies (the list a `NewMoviesSensor` returns per mapped task, or
any list of the same movie items): every movie is processed, recorded in the results store and the Relion
project, and reported in the returned list. A movie that fails (unreadable file, program error) is
recorded as failed with its reason and the rest of the batch goes on; an infrastructure failure (database
down) fails the task so Airflow retries it, and the idempotent writes make the retry safe.

Map them over the sensor's batches; a later step reads the earlier steps' results of the same batch::

    batches = NewMoviesSensor(task_id="wait_for_movies", recipe_name="my_spa", ...).output
    motion = MotionCorrectionOperator.partial(task_id="motioncorr").expand(movies=batches)
    ctf = CtfEstimationOperator.partial(task_id="ctf", tool="ctffind4").expand(movies=batches)
    motion >> ctf
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import Context

from ..config import stage_config
from ..recipes.stages import STAGES
from .step import StepOperator

log = logging.getLogger(__name__)


def upstream_steps(step: str) -> list[str]:
    """Every step whose results `step` reads, directly or through another (ctf → motioncorr)."""
    found: list[str] = []
    for needed in STAGES[step].needs:
        for name in [*upstream_steps(needed), needed]:
            if name not in found:
                found.append(name)
    return found


class MovieStepOperator(StepOperator):
    """One per-movie step over a micro-batch of movies.

    :param movies: the micro-batch: movie items as the sensor returns them (templated; usually mapped with
        ``.expand(movies=...)``).
    :param tool: ``builtin`` or an external program of this step (see each subclass).
    :param settings: the step's settings (a dict or the step's pydantic model); defaults for the rest.
    :param runs_on: ``"local"`` (this worker) or a Slurm placement (``slurm_conn_id``, ``partition``,
        ``cpus``, ``gpus``, ``memory_gb``, ``time_limit_min``) for external programs.
    :param input_tasks: task id of each earlier step whose results this step reads, by step name; default:
        tasks named after the steps (``{"motioncorr": "motioncorr"}``).
    :param deferrable: with a Slurm placement, submit every movie's job and wait in the triggerer
        (``SlurmJobTrigger``) instead of in a worker slot; the step then runs again and reads the finished
        jobs (default True).
    """

    template_fields: Sequence[str] = ("movies",)
    map_index_label = "movie_label"

    def __init__(self, *, movies: list[dict[str, Any]], input_tasks: Mapping[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.movies = movies
        self.input_tasks = dict(input_tasks) if input_tasks is not None else \
            {name: name for name in upstream_steps(self.step)}

    def _upstream_results(self, context: Context) -> dict[str, dict[str, dict[str, Any]]]:
        """Results of the input steps for the same micro-batch (same map index), by step and movie."""
        ti = context["ti"]
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for step, task_id in self.input_tasks.items():
            entries = ti.xcom_pull(task_ids=task_id, map_indexes=ti.map_index) or []
            results[step] = {entry["movie"]: entry for entry in entries}
        return results

    def execute(self, context: Context) -> list[dict[str, Any]]:
        # Imported here, not at module level: every task process parses the DAG file, and the engines'
        # numpy/scipy imports would add seconds to each bookkeeping task of a live run.
        from ..pipeline.movie_batch import BatchPending, process_batch

        names = [item["movie"] for item in self.movies]
        context["movie_label"] = names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1})"
        config = stage_config(context["params"])

        def work(state: dict[str, Any]) -> list[dict[str, Any]]:
            """The movies not done in an earlier pass of this try; those waiting for Slurm jobs stay to do."""
            finished = {outcome["movie"] for outcome in state["done"]}
            try:
                outcomes = process_batch(self.step, self.tool, self.runs_on,
                                         [item for item in self.movies if item["movie"] not in finished], config,
                                         self.step_settings(), self._upstream_results(context), context["run_id"])
            except BatchPending as waiting:
                state["done"] += waiting.outcomes
                raise
            return state["done"] + outcomes

        order = {name: index for index, name in enumerate(names)}
        outcomes = sorted(self.run_deferring(context, work, {"done": []}),
                          key=lambda outcome: order[outcome["movie"]])
        failed = [o for o in outcomes if o["status"] == "failed"]
        log.info("%s: %d movies, %d failed", self.step, len(outcomes), len(failed))
        for outcome in failed:
            log.warning("%s failed for %s: %s", self.step, outcome["movie"], outcome["error"])
        return outcomes


class MotionCorrectionOperator(MovieStepOperator):
    """Motion correction and dose weighting of each movie into a micrograph, with drift statistics.

    Tools: ``builtin`` (our engine), ``relion`` (``relion_run_motioncorr --use_own``), ``motioncor2``.
    Settings: :class:`~airflow_provider_cryoem.recipes.stages.MotionCorrectionParams`.
    """

    step = "motioncorr"


class CtfEstimationOperator(MovieStepOperator):
    """CTF estimation (defocus U/V, astigmatism, fit resolution) of each motion-corrected micrograph.

    Tools: ``builtin``, ``ctffind4``, ``ctffind5``. Reads the motion correction step's results.
    Settings: :class:`~airflow_provider_cryoem.recipes.stages.CtfParams`.
    """

    step = "ctf"


class ParticlePickingOperator(MovieStepOperator):
    """Particle picking on each motion-corrected micrograph (coordinates, STAR file, picks image).

    Tools: ``builtin`` (Laplacian-of-Gaussian), ``relion_autopick`` (``relion_autopick --LoG``), ``topaz``
    (Topaz's pretrained detector; ``pip install 'airflow-provider-cryoem[topaz]'``; on the GPU when a Slurm
    placement asks for one), ``cryolo`` (``cryolo_predict.py``, installed where it runs, with its model
    weights in ``settings={"cryolo": {"weights_path": ...}}``).
    Settings: :class:`~airflow_provider_cryoem.recipes.stages.PickingParams` (``topaz`` and ``cryolo`` hold
    each program's own settings).
    """

    step = "pick"
    ui_color = "#d8f0d2"


class IceThicknessOperator(MovieStepOperator):
    """Relative ice thickness of each motion-corrected micrograph (IceBreaker's five-figure summary).

    Tools: ``icebreaker`` (``ib_job --mode group`` + ``ib_5fig``; the ``[icebreaker]`` extra).
    Settings: :class:`~airflow_provider_cryoem.recipes.stages.IceThicknessParams`.
    """

    step = "ice"


class ParticleExtractionOperator(MovieStepOperator):
    """Particle extraction from each micrograph at its picks, with its CTF, into a particle stack.

    Tools: ``builtin``. Reads the picking and CTF steps' results.
    Settings: :class:`~airflow_provider_cryoem.recipes.stages.ExtractionParams`.
    """

    step = "extract"
    ui_color = "#d8f0d2"


MOVIE_STEP_OPERATORS: dict[str, type[MovieStepOperator]] = {
    operator.step: operator for operator in (MotionCorrectionOperator, CtfEstimationOperator,
                                             ParticlePickingOperator, IceThicknessOperator,
                                             ParticleExtractionOperator)}
