"""Steps over particle batches and tilt series: rebatching, 2D classification and selection, 3D
classification, refinement, B-factor series; tilt-series completion and tomograms.

Two shapes. A *gathering* step runs once per DAG run on the session and everything this run produced
(rebatching particles into 2D batches, deciding a 3D round, completing tilt series) and returns work items;
a *batch* step is mapped over those items (``.expand(item=...)``), one particle batch, 3D round or tilt
series each. A batch that cannot be processed (too few particles, a failing program) is recorded as a
failed step and returned with ``skipped``; the session goes on.

    rebatch = ParticleRebatchOperator(task_id="select_particles", opened=opened, found=found,
                                      upstream=extract.output)
    class2d = Class2DOperator.partial(task_id="class2d", tool="relion").expand(item=rebatch.output)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context, TriggerRule

from ..config import stage_config
from ..recipes.stages import Refine3DParams
from .step import StepOperator


class GatheringStepOperator(StepOperator):
    """A step run once per DAG run, whatever the earlier steps did (trigger rule ``none_failed``).

    :param opened: the session(s) this run works on (the sensor's ``opened`` XCom; templated).
    :param found: what this run found (the sensor's ``found`` XCom: movies, whether the session is over).
    :param upstream: the earlier step's output (templated): what this step gathers, or only its order.
    """

    template_fields: Sequence[str] = ("opened", "found", "upstream")

    def __init__(self, *, opened: Any, found: Any, upstream: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.NONE_FAILED)
        super().__init__(**kwargs)
        self.opened, self.found, self.upstream = opened, found, upstream


class ParticleRebatchOperator(GatheringStepOperator):
    """Adds this run's extracted particles to the session's particle batches; returns the batches that
    became full (the session's class2d_first_batch_size, then class2d_batch_size), or the last partial one
    at the session's end. ``upstream``: the extraction step's output. Tool: ``builtin``."""

    step = "select_particles"
    ui_color = "#f3e5c4"

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from ..pipeline.particle_stages import select_particles

        outcomes = [outcome for batch in self.upstream or [] for outcome in batch]
        return select_particles(stage_config(context["params"]), self.opened, self.found, outcomes)


class Class3DOperator(GatheringStepOperator):
    """3D classification (with a de-novo initial model unless the session gives one) when the session's
    selected particles reach class3d_batch_size, at each doubling, and on everything at the session's end.
    Tool: ``relion``; settings: :class:`~airflow_provider_cryoem.recipes.stages.Class3DParams`."""

    step = "class3d"
    ui_color = "#e8d5f0"

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from ..pipeline.map_stages import classify_3d

        return classify_3d(stage_config(context["params"]), self.step_settings(), self.runs_on, self.opened,
                           self.found, context["run_id"])


class TiltSeriesOperator(GatheringStepOperator):
    """Declares tilt series complete (mdoc tilt count reached, idle for tilt_series_idle_s, or the session
    ended), registers them and their tilts once, and returns the series this run completed. Tool: ``builtin``."""

    step = "tilt_series"
    ui_color = "#d2ecec"

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from ..pipeline.tomo_series import take_complete_series

        return take_complete_series(stage_config(context["params"]), self.opened, self.found, context["run_id"])


def batch_label(item: dict[str, Any]) -> str:
    """What the grid shows for a mapped batch step: its particle batch, 3D round size or tilt series."""
    if "batch" in item:
        return f"batch {item['batch']['number']}"
    if "class3d" in item:
        return f"{item['class3d']['particles_per_batch']} particles"
    if "tilt_series" in item:
        return str(item["tilt_series"]["name"])
    return ""


class BatchStepOperator(StepOperator):
    """A step mapped over work items, one particle batch, 3D round or tilt series each.

    :param item: the work item (templated; usually mapped with ``.expand(item=<gathering step>.output)``).
    :param deferrable: with a Slurm placement, wait for each Slurm job in the triggerer, not in a worker slot:
        the task defers while a job queues and runs, then runs the step again, which reads its finished jobs
        back by id (a stage of several programs, e.g. refinement then post-processing, submits each once) and
        records the results (default True; see StepOperator.run_deferring).
    """

    template_fields: Sequence[str] = ("item",)
    map_index_label = "batch_label"

    def __init__(self, *, item: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.item = item

    def execute(self, context: Context) -> dict[str, Any]:
        context["batch_label"] = batch_label(self.item)  # type: ignore[typeddict-unknown-key]
        config = stage_config(context["params"])
        return self.run_deferring(context, lambda _state: self.process(config))

    def process(self, config: Any) -> dict[str, Any]:
        raise NotImplementedError


class Class2DOperator(BatchStepOperator):
    """2D classification of one particle batch (``relion_refine``), locally or on Slurm.
    Settings: :class:`~airflow_provider_cryoem.recipes.stages.Class2DParams`."""

    step = "class2d"
    ui_color = "#f3e5c4"

    def process(self, config: Any) -> dict[str, Any]:
        from ..pipeline.particle_stages import classify_batch

        return classify_batch(config, self.step_settings(), self.runs_on, self.item)


class ClassSelectionOperator(BatchStepOperator):
    """Scores the batch's 2D classes and keeps those above the session's class_selection_min_score; the
    kept particles go on to 3D. Tool: ``builtin``."""

    step = "select_classes"
    ui_color = "#f3e5c4"

    def process(self, config: Any) -> dict[str, Any]:
        from ..pipeline.particle_stages import select_good_classes

        return select_good_classes(config, self.item)


class ClassReextractionOperator(BatchStepOperator):
    """Re-extracts the particles of a 3D round's best class from the motion-corrected micrographs at their
    full pixel size, recentred on the classification's origins (CTF and angles kept), and rescales the class
    map to match (``relion_image_handler``), so that the refinement after it is not limited by the
    classification's downscaled boxes. Writes a Relion Extract (re-extract) job. Tool: ``builtin``; settings:
    :class:`~airflow_provider_cryoem.recipes.stages.ClassReextractionParams`."""

    step = "reextract"
    ui_color = "#e8d5f0"

    def process(self, config: Any) -> dict[str, Any]:
        from ..pipeline.map_stages import reextract_best_class

        return reextract_best_class(config, self.step_settings(), self.item)


class Refine3DOperator(BatchStepOperator):
    """3D auto-refinement of the best 3D class of a round (its re-extracted particles when a
    ClassReextractionOperator ran before it), then post-processing (mask, FSC, sharpening).
    Tool: ``relion``; settings: :class:`~airflow_provider_cryoem.recipes.stages.Refine3DParams`."""

    step = "refine3d"
    ui_color = "#e8d5f0"

    def process(self, config: Any) -> dict[str, Any]:
        from ..pipeline.map_stages import refine_best_class

        return refine_best_class(config, self.step_settings(), self.runs_on, self.item)


class BFactorOperator(BatchStepOperator):
    """Refinements of random particle subsets for a Rosenthal–Henderson B-factor plot of a refined round.

    :param refine_settings: the refinement settings of the subsets (those of the Refine3D step).
    Tool: ``relion``; settings: :class:`~airflow_provider_cryoem.recipes.stages.BFactorParams`.
    """

    step = "bfactor"
    ui_color = "#e8d5f0"

    def __init__(self, *, refine_settings: dict[str, Any] | Refine3DParams | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        model = refine_settings if isinstance(refine_settings, Refine3DParams) else \
            Refine3DParams.model_validate(refine_settings or {})
        self.refine_settings = model.model_dump(mode="json")

    def process(self, config: Any) -> dict[str, Any]:
        from ..pipeline.map_stages import bfactor_series

        return bfactor_series(config, self.step_settings(), Refine3DParams.model_validate(self.refine_settings),
                              self.runs_on, self.item)


class TomogramOperator(BatchStepOperator):
    """Aligns and reconstructs one complete tilt series: aligned stack, tomogram, per-tilt alignment,
    images, results rows and Relion 5 files. Tools: ``builtin``, ``aretomo2``, ``imod`` (batchruntomo).
    Settings: :class:`~airflow_provider_cryoem.recipes.stages.TomogramParams`."""

    step = "tomogram"
    ui_color = "#d2ecec"

    def process(self, config: Any) -> dict[str, Any]:
        from ..pipeline.tomograms import make_tomogram

        return make_tomogram(config, self.step_settings(), self.tool, self.runs_on, self.item)


class DenoiseOperator(BatchStepOperator):
    """Denoises one series' tomogram with Topaz's pretrained 3D U-net (or a model trained with Topaz): on this
    worker in memory-bounded cubes (the cube shrinks to fit ``settings.memory_budget_gb``, or the series is
    refused by name), on Slurm as ``topaz denoise3d`` with the placement's GPUs, memory and time limit. Writes
    Denoise/jobNNN/tomograms/<tomogram>.denoised.mrc, the Denoise job's tomograms.star
    (rlnTomoReconstructedTomogramDenoised), a raw-versus-denoised central slice and a processed-tomogram row
    (Denoised). A series that cannot be denoised is recorded as a failed step and passed on with
    ``skipped``. Tool: ``topaz`` (the default); settings:
    :class:`~airflow_provider_cryoem.recipes.stages.DenoiseParams`.

        denoise = DenoiseOperator.partial(task_id="denoise", runs_on={"slurm_conn_id": "cluster", "gpus": 1,
                                          "memory_gb": 32, "time_limit_min": 60}).expand(item=tomogram.output)
    """

    step = "denoise"
    default_tool = "topaz"
    ui_color = "#d2ecec"

    def process(self, config: Any) -> dict[str, Any]:
        from ..pipeline.tomo_postprocess import denoise_series

        return denoise_series(config, self.step_settings(), self.tool, self.runs_on, self.item)


class SegmentationOperator(BatchStepOperator):
    """Segments the membranes of one series' denoised tomogram (its tomogram when the recipe does not
    denoise) with membrain-seg (``membrain segment``: sliding window, optional test-time augmentation,
    connected components), on this worker (refused by name when the tomogram exceeds
    ``settings.memory_budget_gb``) or on Slurm. The checkpoint is the session's membrain_checkpoint_path, else
    ``settings.checkpoint_path``; a missing or unreadable one is recorded as the series' failed step, naming
    the setting. Writes Segmentation/jobNNN/tomograms/<tomogram>_<checkpoint>_segmented.mrc, the membranes
    over the central slice, the mask's XY projection and a processed-tomogram row (Segmented). Tool:
    ``membrain`` (the default); settings: :class:`~airflow_provider_cryoem.recipes.stages.SegmentationParams`.
    """

    step = "segment"
    default_tool = "membrain"
    ui_color = "#d2ecec"

    def process(self, config: Any) -> dict[str, Any]:
        from ..pipeline.tomo_postprocess import segment_series

        return segment_series(config, self.step_settings(), self.tool, self.runs_on, self.item)


GATHERING_STEP_OPERATORS: dict[str, type[GatheringStepOperator]] = {
    operator.step: operator for operator in (ParticleRebatchOperator, Class3DOperator, TiltSeriesOperator)}
BATCH_STEP_OPERATORS: dict[str, type[BatchStepOperator]] = {
    operator.step: operator for operator in (Class2DOperator, ClassSelectionOperator, ClassReextractionOperator,
                                             Refine3DOperator, BFactorOperator, TomogramOperator, DenoiseOperator,
                                             SegmentationOperator)}
