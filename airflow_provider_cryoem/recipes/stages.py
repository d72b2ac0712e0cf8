"""The stages a recipe may use: which programs implement each and which settings a recipe may override."""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class _StageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MotionCorrectionParams(_StageParams):
    patches_x: int = Field(5, ge=1, le=20)
    patches_y: int = Field(5, ge=1, le=20)
    bfactor_a2: float = Field(150.0, ge=0, le=5000)
    iterations: int = Field(10, ge=1, le=100)
    tolerance_px: float = Field(0.1, gt=0, le=5)


class CtfParams(_StageParams):
    tile_size_px: int = Field(512, ge=64, le=2048)
    min_resolution_a: float = Field(30.0, gt=0)
    max_resolution_a: float = Field(5.0, gt=0)
    min_defocus_a: float = Field(5000.0, ge=0)
    max_defocus_a: float = Field(50000.0, gt=0)
    find_phase_shift: bool = False


class PickingParams(_StageParams):
    threshold: float = Field(2.0, description="LoG threshold in standard deviations of the filtered map.")
    min_distance_a: float | None = Field(None, gt=0, description="Default: the particle diameter.")
    edge_exclusion_a: float | None = Field(None, ge=0, description="Default: the particle radius.")
    max_particles: int = Field(2000, ge=1, le=100_000)


class ExtractionParams(_StageParams):
    invert_contrast: bool = True
    normalise: bool = True
    phase_flip: bool = False


class SelectParticlesParams(_StageParams):
    """Batch sizes come from the session (class2d_first_batch_size, class2d_batch_size)."""


class Class2DParams(_StageParams):
    iterations: int = Field(25, ge=1, le=500)
    min_particles_per_class: int = Field(20, ge=1, le=100_000)
    threads: int | None = Field(None, ge=1, le=256, description="Default: the worker's cores.")


class SelectClassesParams(_StageParams):
    """The threshold is the session's class_selection_min_score."""


@dataclass(frozen=True)
class StageDefinition:
    """What the pipeline knows about one stage.

    `scope` "movie" stages are mapped over micro-batches of movies; "particles" stages work on batches of
    particles (filled across movies and runs), mapped over the batches that became ready in this run.
    """

    name: str
    tools: frozenset[str]
    params_model: type[BaseModel]
    needs: tuple[str, ...] = ()
    scope: str = "movie"


STAGES: dict[str, StageDefinition] = {
    definition.name: definition
    for definition in (
        StageDefinition("motioncorr", frozenset({"builtin", "relion", "motioncor2"}), MotionCorrectionParams),
        StageDefinition("ctf", frozenset({"builtin", "ctffind4", "ctffind5"}), CtfParams, needs=("motioncorr",)),
        StageDefinition("pick", frozenset({"builtin", "relion_autopick"}), PickingParams,
                        needs=("motioncorr",)),
        StageDefinition("extract", frozenset({"builtin"}), ExtractionParams, needs=("pick", "ctf")),
        StageDefinition("select_particles", frozenset({"builtin"}), SelectParticlesParams, needs=("extract",),
                        scope="particles"),
        StageDefinition("class2d", frozenset({"relion"}), Class2DParams, needs=("select_particles",),
                        scope="particles"),
        StageDefinition("select_classes", frozenset({"builtin"}), SelectClassesParams, needs=("class2d",),
                        scope="particles"),
    )
}
