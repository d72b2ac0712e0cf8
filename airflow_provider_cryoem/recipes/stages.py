"""The stages a recipe may use: which programs implement each and which settings a recipe may override."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator



def checked_window_px(value: int) -> int:
    """membrain-seg's U-net halves the sliding window five times, so it must be a multiple of 32."""
    if value % 32:
        raise ValueError(f"membrain-seg needs a multiple of 32, not {value}")
    return value

class _StageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MotionCorrectionParams(_StageParams):
    patches_x: int = Field(5, ge=1, le=20)
    patches_y: int = Field(5, ge=1, le=20)
    bfactor_a2: float = Field(150.0, ge=0, le=5000)
    iterations: int = Field(10, ge=1, le=100)
    tolerance_px: float = Field(0.1, gt=0, le=5)
    even_odd_sums: bool = Field(False, description=(
        "Tomography: also write each tilt's sums of its even and of its odd frames (Relion 5's \"Save images "
        "for denoising?\", rlnMicrographNameEven/Odd), from which the tomogram stage can reconstruct half "
        "tomograms for noise2noise denoising (stages.tomogram.params.half_tomograms). Built-in engine only; "
        "two more images per tilt, the alignment is shared."))


class CtfParams(_StageParams):
    tile_size_px: int = Field(512, ge=64, le=2048)
    min_resolution_a: float = Field(30.0, gt=0)
    max_resolution_a: float = Field(5.0, gt=0)
    min_defocus_a: float = Field(5000.0, ge=0)
    max_defocus_a: float = Field(50000.0, gt=0)
    find_phase_shift: bool = False


class TopazPickingParams(_StageParams):
    """Topaz (`tool: topaz`; `pip install 'airflow-provider-cryoem[topaz]'`): `topaz preprocess` downsamples
    and normalises the motion-corrected micrograph, `topaz extract` scores it with a detector and keeps
    local maxima at least the extraction radius apart. The particle diameter is the session's."""

    model: str = Field("resnet16", description=(
        "Detector (-m): a pretrained model shipped in the topaz wheel (resnet16, resnet8; the general models "
        "of Bepler et al. 2019) or the path of a model trained with `topaz train`."))
    threshold: float = Field(-3.0, description=(
        "Keep picks scoring at least this (-t; a log-likelihood ratio: 0 is even odds, Topaz's own default "
        "-6 keeps nearly every candidate). On simulated micrographs -3 kept all planted particles down to "
        "5 e/Å² at precision 0.6-0.9 (false picks are left for 2D classification to reject); 0 was near "
        "exact at good SNR but kept under half the particles at 2 e/Å² (BENCHMARKS.md)."))
    downscale: int | None = Field(None, ge=1, le=32, description=(
        "Downsampling factor (-s). Default, as Relion's Topaz wrapper: max(4, round(2 × diameter / pixel size "
        "/ 71)), twice the particle within the detector's 71-pixel receptive field."))
    radius_px: int | None = Field(None, ge=1, le=500, description=(
        "Extraction radius in downsampled pixels (-r). Default: the particle radius."))
    patch_size_px: int | None = Field(None, ge=64, le=8192, description=(
        "Score the downsampled micrograph in patches of this many pixels (-p), which bounds memory: a K3 "
        "micrograph (5760 × 4092) at ×5 took 7.6 GB whole, 1.4 GB in 512-pixel patches (up to 1.6× the CPU time; "
        "BENCHMARKS.md). Default: whole."))
    program: str | None = Field(None, description=(
        "The topaz command to run, or a Python interpreter (a name starting with `python`, e.g. "
        "/opt/topaz/bin/python) to run Topaz's command modules with (`python -m topaz.commands.preprocess|"
        "extract`, which works beside the CPU torch where the `topaz` entry point cannot load PyPI's "
        "torchvision). Default: on this worker, the Python environment Airflow runs in when Topaz is installed "
        "there, else `topaz` on PATH; on Slurm, `topaz` on the node's PATH."))


class CryoloPickingParams(_StageParams):
    """crYOLO (`tool: cryolo`): `cryolo_predict.py` with the PhosaurusNet configuration cryoem-services writes,
    picks read from its CBOX file (box corners → centres). crYOLO is not installable beside this provider
    (it needs Python < 3.9): install it where the stage runs (`runs_on` a Slurm node, or a worker whose
    PATH has it) and download its general model."""

    weights_path: str | None = Field(None, description=(
        "Model weights (.h5), e.g. crYOLO's general model (gmodel_phosnet_*.h5). Required for tool: cryolo."))
    threshold: float = Field(0.3, ge=0, le=1, description="Keep boxes of at least this confidence (--threshold).")
    box_size_px: int | None = Field(None, ge=8, le=2000, description=(
        "Box (anchor) size in micrograph pixels. Default: the particle diameter."))
    min_distance_px: int | None = Field(None, ge=0, description="--distance between picks (crYOLO's default: 0).")
    gpu_ids: list[int] = Field(default_factory=lambda: [0], description=(
        "-g; on Slurm: the placement's GPUs (0 … gpus-1) when it asks for any."))
    program: str = Field("cryolo_predict.py", description="crYOLO's prediction program.")


class PickingParams(_StageParams):
    threshold: float = Field(2.0, description=(
        "Lowest LoG threshold, in robust standard deviations of the filtered map (builtin; the picker raises it "
        "per micrograph unless adaptive_threshold is off; tool-specific thresholds are in topaz/cryolo)."))
    adaptive_threshold: bool = Field(True, description=(
        "Builtin: raise the threshold per micrograph to the best F1 estimated from blobs of the opposite "
        "contrast (noise and ice make those, particles do not). Off: `threshold` as a fixed cut-off."))
    min_distance_a: float | None = Field(None, gt=0, description="Default: the particle diameter (builtin).")
    edge_exclusion_a: float | None = Field(None, ge=0, description="Default: the particle radius (builtin).")
    max_particles: int = Field(2000, ge=1, le=100_000, description="At most this many picks per micrograph, "
                                                                   "strongest first (builtin, topaz, cryolo).")
    topaz: TopazPickingParams = Field(default_factory=TopazPickingParams, description="tool: topaz.")
    cryolo: CryoloPickingParams = Field(default_factory=CryoloPickingParams, description="tool: cryolo.")


class IceThicknessParams(_StageParams):
    """IceBreaker (Olek et al. 2022, `pip install 'airflow-provider-cryoem[icebreaker]'`): `ib_job --mode
    group` groups each motion-corrected micrograph into 16 regions of like intensity (thicker ice lets fewer
    electrons through), `ib_5fig` gives the grouped image's five-figure summary (× 10000), the micrograph's
    relative ice thickness: a higher median is thinner ice. IceBreaker fixes its own window (40 × 40) and
    group count; what a recipe may set is below."""

    enhance_contrast: bool = Field(False, description=(
        "Also write IceBreaker's contrast-enhanced micrograph (`ib_job --mode flatten`, cryoem-services' "
        "enhancecontrast job, IceBreaker/jobNNN/flattened_micrographs.star): one more ib_job run, about 1.5× the "
        "stage's time."))
    program_dir: str | None = Field(None, description=(
        "Folder holding ib_job and ib_5fig. Default: the worker's PATH, else the scripts folder of the Python "
        "environment Airflow runs in (where the [icebreaker] extra installs them)."))


class ExtractionParams(_StageParams):
    invert_contrast: bool = True
    normalise: bool = True
    phase_flip: bool = False


class SelectParticlesParams(_StageParams):
    """Batch sizes come from the session (class2d_first_batch_size, class2d_batch_size)."""


class Class2DParams(_StageParams):
    iterations: int = Field(25, ge=1, le=500)
    min_particles_per_class: int = Field(20, ge=1, le=100_000)
    threads: int | None = Field(None, ge=1, le=256, description="Default: the worker's cores (Slurm: its cpus).")
    intensity_corrections: bool = Field(False, description=(
        "Relion's --norm/--scale. Off by default: with them on, empty ice and carbon are rescaled to look "
        "like particles and automatic class selection cannot separate them (BENCHMARKS.md)."))


class SelectClassesParams(_StageParams):
    """The threshold is the session's class_selection_min_score."""


class InitialModelParams(_StageParams):
    """Relion SGD de-novo model (used when the session gives no initial_model_path); defaults as Relion's."""

    sgd_iterations: tuple[int, int, int] = Field((50, 200, 50), description="Initial, in-between, final.")
    subsets: tuple[int, int] = Field((100, 500), description="Mini-batch sizes, first and last iterations.")
    resolutions_a: tuple[float, float] = Field((35.0, 15.0), description="Resolution limits, first and last.")
    offset_range_px: float = Field(6.0, gt=0, le=100)
    offset_step_px: float = Field(2.0, gt=0, le=50)
    skip_gridding: bool = Field(False, description="--skip_gridding: a quicker M step.")
    max_particles: int = Field(10_000, ge=10, le=1_000_000)


class Class3DParams(_StageParams):
    """When 3D runs: first at the session's class3d_batch_size selected particles, at each doubling, and
    on everything at the session's end; the number of classes is the session's class3d_classes."""

    iterations: int = Field(25, ge=1, le=500)
    healpix_order: int = Field(2, ge=0, le=6, description="Angular sampling (2 = 7.5°, 1 = 15°).")
    initial_lowpass_a: float = Field(40.0, gt=0, le=200)
    min_particles_per_class: int = Field(50, ge=1, le=1_000_000)
    min_particles: int = Field(200, ge=10, le=10_000_000, description="Fewer selected particles at the "
                                                                      "session's end: no 3D.")
    initial_model: InitialModelParams = Field(default_factory=InitialModelParams)
    threads: int | None = Field(None, ge=1, le=256, description="Default: the worker's cores (Slurm: its cpus).")


class ClassReextractionParams(_StageParams):
    """Re-extraction of the best 3D class's particles from the motion-corrected micrographs at the
    micrographs' pixel size, recentred on their 3D-classification origins, each particle's CTF and angles
    kept, and the class map rescaled to match (cryoem-services' ExtractClass), so that refinement is not
    limited by the classification's downscaled boxes."""

    box_px: int | None = Field(None, ge=16, le=4096, description=(
        "Box of the re-extracted particles (even). Default: the session's extraction box at the micrograph's "
        "pixel size. Smaller: that box Fourier-cropped to this (pixel size scaled up by the ratio); larger: "
        "a wider field at the micrograph's pixel size."))

    @field_validator("box_px")
    @classmethod
    def _even_box(cls, value: int | None) -> int | None:
        if value is not None and value % 2:
            raise ValueError(f"box_px must be even, got {value}")
        return value


class Refine3DParams(_StageParams):
    """Auto-refine of the best 3D class (re-extracted at full scale when a `reextract` stage comes first),
    then relion_mask_create and relion_postprocess; the B-factor series refines the same particles."""

    healpix_order: int = Field(2, ge=0, le=6)
    auto_local_healpix_order: int = Field(4, ge=0, le=8)
    offset_range_px: float = Field(5.0, gt=0, le=100)
    offset_step_px: float = Field(4.0, gt=0, le=50)
    initial_lowpass_a: float = Field(30.0, gt=0, le=200)
    fast_convergence: bool = Field(False, description="--auto_ignore_angles --auto_resol_angles (quicker, "
                                                      "for small tests).")
    max_iterations: int | None = Field(None, ge=1, le=200)
    mpi_ranks: int = Field(3, ge=3, le=1024)
    threads: int | None = Field(None, ge=1, le=256, description="Per MPI rank; default 1.")
    bfactor_low_resolution_a: float = Field(10.0, gt=0, le=100, description="Sharpening B-factor fit "
                                                                             "from here (relion_postprocess).")


class BFactorParams(_StageParams):
    """Refinements of random subsets with the refine3d stage's settings; the full set's is reused."""

    fractions: tuple[float, ...] = Field((0.125, 0.25, 0.5, 1.0), min_length=2)
    min_particles: int = Field(100, ge=10, le=10_000_000, description="Smaller subsets are left out.")


class TiltSeriesParams(_StageParams):
    """When the tilt series of the session are complete is decided from the session's settings
    (`tilt_series_idle_s`) and the mdoc files; nothing to set here."""


class TomogramParams(_StageParams):
    alignment_size_px: int = Field(512, ge=64, le=4096, description="Longest side of the working copy the "
                                                                    "built-in aligner measures shifts on.")
    tilt_axis_search_deg: float = Field(6.0, ge=0, le=45, description="Search ± this around the nominal axis.")
    projection_matching_iterations: int = Field(2, ge=0, le=10)
    weighting: Literal["ramp", "sirt"] = Field("sirt", description=(
        "Back-projection weighting: Hamming-windowed ramp, or a filter shaped like a few SIRT iterations "
        "(less streaking, the usual choice for looking at a tomogram)."))
    sirt_iterations: int = Field(10, ge=1, le=100)
    ctf_correction: bool = Field(True, description="Phase-flip each tilt with its CTF before back-projection "
                                                   "(built-in only).")
    imod_alignment: Literal["patch", "fiducials"] = Field("patch", description=(
        "IMOD (tool: imod): patch tracking (fiducial-free), or gold-bead tracking."))
    fiducial_diameter_nm: float = Field(10.0, gt=0, le=100, description="Gold bead size (IMOD bead tracking).")
    half_tomograms: bool = Field(False, description=(
        "Also reconstruct the even- and odd-frame tilt sums (stages.motioncorr.params.even_odd_sums) into two "
        "half tomograms with the tomogram's own alignment and settings (Relion 5's \"Generate tomograms for "
        "denoising?\", rlnTomoReconstructedTomogramHalf1/2), for noise2noise denoising "
        "(stages.denoise.params.noise2noise). Tool builtin; a series whose tilts have no halves gets none."))


class Noise2NoiseParams(_StageParams):
    """Topaz's noise2noise training on a series' two half tomograms (`topaz denoise3d -a HALF1 -b HALF2`),
    starting from the stage's model as Topaz does, then denoising the tomogram with the trained model. Topaz
    cuts its training cubes at the stage's patch_size_px. Topaz's defaults (1000 cubes, 500 epochs) are for a
    GPU; the defaults here are a short CPU run."""

    num_epochs: int = Field(3, ge=1, le=1000, description="Training epochs (--num-epochs; Topaz's default 500).")
    n_train: int = Field(40, ge=1, le=100_000, description="Training cubes per tomogram (--N-train; Topaz 1000).")
    n_test: int = Field(8, ge=1, le=100_000, description="Validation cubes per tomogram (--N-test; Topaz 200).")
    batch_size: int = Field(4, ge=1, le=256, description="Cubes per step (--batch-size; Topaz 10).")
    optimizer: Literal["adam", "adagrad", "sgd"] = Field("adagrad", description="--optim (Topaz's default).")
    learning_rate: float = Field(0.0001, gt=0, le=1, description=(
        "--lr. Topaz's default 0.001 is for training long; a short fine-tuning of the pretrained model at 0.001 "
        "once collapsed it on a simulated tomogram (correlation with the clean volume 0.93 → 0.49, below the raw "
        "0.80), at 0.0001 it gained over the pretrained model (BENCHMARKS.md)."))
    criteria: Literal["L1", "L2"] = Field("L2", description="Loss (--criteria; Topaz's default).")


class DenoiseParams(_StageParams):
    """Topaz-Denoise 3D (Bepler et al. 2020; `tool: topaz`, `pip install 'airflow-provider-cryoem[topaz]'`):
    a U-net trained by noise2noise on cryo-ET tomograms, run over the tomogram in overlapping cubes. On this
    worker the tomogram is read and written memory-mapped and one cube is in memory at a time; on Slurm
    `topaz denoise3d` runs as cryoem-services' DenoiseSlurm runs it (`runs_on` with `gpus: 1`)."""

    model: str | None = Field(None, description=(
        "Pretrained model shipped in the topaz wheel: unet-3d-10a (trained on tomograms at about 10 Å per "
        "voxel) or unet-3d-20a (about 20 Å); or the path of a model saved by `topaz denoise3d` training. "
        "Default: whichever pretrained model's voxel size is nearer the tomogram's."))
    patch_size_px: int | None = Field(None, ge=16, le=512, description=(
        "Cube edge denoised at once (-s). Default: Topaz's 96 on Slurm; on this worker the largest multiple "
        "of 16 up to 96 whose cube and padding fit memory_budget_gb."))
    padding_px: int = Field(48, ge=0, le=256, description=(
        "Context added on every side of a cube and cut off again (-p; Topaz's default, which hides seams)."))
    memory_budget_gb: float | None = Field(None, gt=0, le=4096, description=(
        "Most memory the local run may take (the network's activations grow with the padded cube, about "
        "1.3 kB per voxel on the CPU). A cube that cannot fit is refused by name before anything runs. "
        "Default: the worker's budget (CRYOEM_MAX_DECODED_BYTES, else the smaller of 8 GiB and half the RAM)."))
    threads: int | None = Field(None, ge=1, le=256, description="torch threads (-j). Default: the worker's "
                                                               "cores (Slurm: the placement's cpus).")
    program: str | None = Field(None, description=(
        "On this worker: the Python interpreter of an environment with topaz-em (default: Airflow's own), "
        "which runs this provider's memory-bounded runner over Topaz's network. On Slurm: the `topaz` command "
        "(default: `topaz denoise3d` on the node's PATH, as cryoem-services runs it), or the Python interpreter "
        "of an environment with topaz-em and this provider (a name starting with `python`), which runs the "
        "runner there: topaz-em 0.3.20's own denoise3d cannot load its pretrained 3D models on Python ≥ 3.11 "
        "without setuptools < 81 (pkg_resources)."))
    noise2noise: Noise2NoiseParams | None = Field(None, description=(
        "Train on the series' half tomograms (stages.tomogram.params.half_tomograms) before denoising, for "
        "samples the pretrained models do not fit; a series without halves is denoised with the pretrained "
        "model. Default: off (the pretrained model)."))


class SegmentationParams(_StageParams):
    """membrain-seg (Lamm et al. 2024; `tool: membrain`): `membrain segment`, a U-net scoring every voxel for
    membrane over a sliding window, on the denoised tomogram when the recipe denoises, else the tomogram.
    No checkpoint ships with membrain-seg: download one (e.g. MemBrain_seg_v10_alpha.ckpt) and name it here
    or as the session's membrain_checkpoint_path (which wins). membrain-seg cannot share Airflow's Python
    environment when the [topaz] extra is installed (scripts/membrain_env.sh says why and makes its own)."""

    checkpoint_path: str | None = Field(None, description=(
        "The trained model (.ckpt). Default: the session's membrain_checkpoint_path; one of the two is needed."))
    sliding_window_size_px: int = Field(160, ge=32, le=1024, description=(
        "Window edge (--sliding-window-size, a multiple of 32; membrain-seg's default 160, windows overlap "
        "by half)."))
    rescale_patches: bool = Field(True, description=(
        "Rescale windows from the tomogram's voxel size to out_pixel_size_a on the fly (cryoem-services' "
        "setting; the network was trained at 10 Å)."))
    out_pixel_size_a: float = Field(10.0, gt=0, le=100)
    test_time_augmentation: bool = Field(False, description="Average 8 mirrored predictions (--test-time-"
                                                            "augmentation): slightly better, 8× slower.")
    connected_components: bool = Field(True, description=(
        "Label connected membranes 1..n (--store-connected-components) instead of a 0/1 mask."))
    connected_component_threshold_voxels: int | None = Field(None, ge=1, description=(
        "Drop connected components smaller than this (--connected-component-thres)."))
    segmentation_threshold: float | None = Field(None, description="Membrane score cut-off (membrain's 0).")
    memory_budget_gb: float | None = Field(None, gt=0, le=4096, description=(
        "Most memory the local run may take: membrain-seg holds the whole tomogram and its score map in "
        "memory (about 60 bytes per voxel measured, 80 assumed, plus 1 GB); a larger tomogram is refused by "
        "name. Default: "
        "the worker's budget (as for denoise)."))
    program: str | None = Field(None, description=(
        "The membrain command. Default: `membrain` on the worker's (or Slurm node's) PATH."))

    @field_validator("sliding_window_size_px")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        return checked_window_px(value)


@dataclass(frozen=True)
class StageDefinition:
    """What the pipeline knows about one stage.

    `scope` "movie" stages are mapped over micro-batches of movies; "particles" stages work on batches of
    particles (filled across movies and runs), mapped over the batches that became ready in this run;
    "series" stages work on whole tilt series, mapped over the series that became complete in this run.
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
        StageDefinition("pick", frozenset({"builtin", "relion_autopick", "topaz", "cryolo"}), PickingParams,
                        needs=("motioncorr",)),
        StageDefinition("ice", frozenset({"icebreaker"}), IceThicknessParams, needs=("motioncorr",)),
        StageDefinition("extract", frozenset({"builtin"}), ExtractionParams, needs=("pick", "ctf")),
        StageDefinition("select_particles", frozenset({"builtin"}), SelectParticlesParams, needs=("extract",),
                        scope="particles"),
        StageDefinition("class2d", frozenset({"relion"}), Class2DParams, needs=("select_particles",),
                        scope="particles"),
        StageDefinition("select_classes", frozenset({"builtin"}), SelectClassesParams, needs=("class2d",),
                        scope="particles"),
        StageDefinition("class3d", frozenset({"relion"}), Class3DParams, needs=("select_classes",),
                        scope="particles"),
        StageDefinition("reextract", frozenset({"builtin"}), ClassReextractionParams, needs=("class3d",),
                        scope="particles"),
        StageDefinition("refine3d", frozenset({"relion"}), Refine3DParams, needs=("class3d",), scope="particles"),
        StageDefinition("bfactor", frozenset({"relion"}), BFactorParams, needs=("refine3d",), scope="particles"),
        StageDefinition("tilt_series", frozenset({"builtin"}), TiltSeriesParams, needs=("ctf",), scope="series"),
        StageDefinition("tomogram", frozenset({"builtin", "aretomo2", "imod"}), TomogramParams,
                        needs=("tilt_series",), scope="series"),
        StageDefinition("denoise", frozenset({"topaz"}), DenoiseParams, needs=("tomogram",), scope="series"),
        StageDefinition("segment", frozenset({"membrain"}), SegmentationParams, needs=("tomogram",),
                        scope="series"),
    )
}


def tool_settings_problem(stage: str, tool: str, params: BaseModel) -> str | None:
    """A setting the chosen tool cannot run without, as `field: message` (checked when a recipe or a step
    operator is built, so the DAG file fails to import naming it); None when there is none."""
    if stage == "pick" and tool == "cryolo" and not getattr(params, "cryolo").weights_path:
        return ("cryolo.weights_path: crYOLO needs its model weights (.h5), e.g. the general model "
                "gmodel_phosnet_*.h5 from crYOLO's download page")
    return None
