"""Topaz (Bepler et al. 2019) particle picking with a pretrained detector: preprocess, extract, parse.

Topaz picks on a downsampled, normalised copy (`topaz preprocess -s`); `topaz extract` writes a
tab-separated table (image_name, x_coord, y_coord, score) in those downsampled pixels, scaled back here.
The score is a log-likelihood ratio: 0 is even odds of a particle, -6 (Topaz's default cut-off) p ≈ 0.0025.

The downsampling factor and extraction radius follow Relion's Topaz wrapper (autopicker.cpp): the model's
receptive field (71 px for resnet8/resnet16) should hold twice the particle diameter, so the factor is
max(4, round(2 × diameter / pixel size / 71)); the radius is the particle radius in downsampled pixels.

Topaz runs either through its `topaz` entry point or, as `python -m topaz.commands.<command>`, through the
command modules alone (`module_python`): the entry point also imports Topaz's training code and with it
torchvision, which PyPI's torchvision wheel cannot load beside the CPU build of torch; picking needs neither.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.io.errors import ImageFileError
from airflow_provider_cryoem.recipes.stages import Noise2NoiseParams

_COLUMNS = ("image_name", "x_coord", "y_coord", "score")
RECEPTIVE_FIELD_PX = 71  # resnet8 and resnet16, Topaz's pretrained detectors


def relion_downscale(particle_diameter_a: float, pixel_size_a: float) -> int:
    """Relion's default Topaz downsampling: 2 × the particle diameter within the receptive field, at least 4."""
    return max(4, round(2 * particle_diameter_a / pixel_size_a / RECEPTIVE_FIELD_PX))


class TopazInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    micrograph_path: str = Field(min_length=1)
    job_dir: str = Field(min_length=1)
    pixel_size_a: float = Field(gt=0)
    particle_diameter_a: float = Field(gt=0)
    scale: int = Field(8, ge=1, le=32, description="Downsampling factor for picking (-s).")
    radius_px: int | None = Field(None, ge=1, description="Extraction radius in downsampled pixels (-r); "
                                                           "default: the particle radius.")
    threshold: float = Field(-3.0, description="Log-likelihood ratio cut-off (-t).")
    model: str = Field("resnet16", description="Pretrained model name or a trained model file (-m).")
    device: int = Field(-1, ge=-1, description="GPU index (-d); -1: the CPU.")
    threads: int = Field(0, ge=0, description="torch threads (-j); 0: torch's default.")
    patch_size_px: int = Field(0, ge=0, description="Score the downsampled micrograph in patches of this size "
                                                    "(-p; bounds memory); 0: whole.")
    program: str = "topaz"
    module_python: bool = Field(False, description=(
        "`program` is a Python interpreter: run `program -m topaz.commands.preprocess|extract`."))


def preprocessed_path(inputs: TopazInputs) -> Path:
    return Path(inputs.job_dir) / "preprocessed" / Path(inputs.micrograph_path).name


def picks_path(inputs: TopazInputs) -> Path:
    return Path(inputs.job_dir) / f"{Path(inputs.micrograph_path).stem}_topaz.txt"


def extraction_radius_px(inputs: TopazInputs) -> int:
    """The particle radius in downsampled pixels (Topaz's non-maximum suppression radius)."""
    if inputs.radius_px is not None:
        return inputs.radius_px
    return max(1, round(inputs.particle_diameter_a / 2 / inputs.pixel_size_a / inputs.scale))


def _command(inputs: TopazInputs, command: str, args: list[str]) -> CommandSpec:
    head = ["-m", f"topaz.commands.{command}"] if inputs.module_python else [command]
    return CommandSpec(program=inputs.program, cwd=inputs.job_dir, args=[*head, *args],
                       threads=max(1, inputs.threads), gpus=1 if inputs.device >= 0 else 0)


def preprocess_command(inputs: TopazInputs) -> CommandSpec:
    """Downsample by `scale` and normalise (Topaz's two-component Gaussian mixture) into preprocessed/."""
    return _command(inputs, "preprocess", [
        "-s", str(inputs.scale), "-d", str(inputs.device), "-j", str(inputs.threads),
        "-o", str(preprocessed_path(inputs).parent), inputs.micrograph_path])


def extract_command(inputs: TopazInputs) -> CommandSpec:
    return _command(inputs, "extract", [
        "-m", inputs.model, "-r", str(extraction_radius_px(inputs)), "-t", f"{inputs.threshold:g}",
        "-d", str(inputs.device), "-j", str(inputs.threads), "-p", str(inputs.patch_size_px),
        "-o", str(picks_path(inputs)), str(preprocessed_path(inputs))])


def parse_picks(path: str | Path, scale: int) -> dict[str, Any]:
    """Picks in micrograph pixels, strongest first (engine keys coordinates_px, figures_of_merit)."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(path, "Topaz picks file not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader((line for line in handle if not line.startswith("#")), delimiter="\t")
        if reader.fieldnames is None or any(column not in reader.fieldnames for column in _COLUMNS):
            raise ImageFileError(path, f"expected tab-separated columns {', '.join(_COLUMNS)}")
        try:
            rows = [(float(row["x_coord"]), float(row["y_coord"]), float(row["score"])) for row in reader]
        except (TypeError, ValueError):
            raise ImageFileError(path, "non-numeric coordinate or score") from None
    table = np.array(rows, dtype=float).reshape(-1, 3)
    order = np.argsort(-table[:, 2], kind="stable")
    return {"coordinates_px": (table[order, :2] * scale).tolist(), "figures_of_merit": table[order, 2].tolist(),
            "particle_count": int(order.size)}


# --- 3D denoising (Topaz-Denoise, Bepler et al. 2020) ------------------------------------------------------
# Pretrained 3D models in the topaz wheel (topaz/pretrained/denoise/), by the voxel size (Å) of the
# tomograms they were trained on: `unet-3d` is Topaz's alias of unet-3d-10a.
PRETRAINED_3D_VOXEL_A = {"unet-3d-10a": 10.0, "unet-3d-20a": 20.0}
DENOISED_SUFFIX = ".denoised"
# How Topaz's denoiser is started: its entry point (`topaz denoise3d`), or this provider's memory-bounded
# runner over Topaz's network (`python -m airflow_provider_cryoem.tools.topaz_denoise3d`, the same flags; see
# that module for why: topaz-em 0.3.20's own command cannot load its 3D models on Python 3.11).
DENOISE_LAUNCHES = {"entry_point": ["denoise3d"],
                    "bounded_runner": ["-m", "airflow_provider_cryoem.tools.topaz_denoise3d"]}


def pretrained_3d_model(voxel_size_a: float) -> str:
    """The pretrained 3D model trained nearest this voxel size (geometric distance: 14 Å is nearer 10 Å)."""
    return min(PRETRAINED_3D_VOXEL_A, key=lambda name: abs(np.log(PRETRAINED_3D_VOXEL_A[name] / voxel_size_a)))


class TopazDenoiseInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tomogram_path: str = Field(min_length=1)
    out_dir: str = Field(min_length=1)
    model: str = Field("unet-3d-10a", min_length=1, description="Pretrained 3D model or a saved model file (-m).")
    patch_size_px: int = Field(96, ge=1, description="Cube edge denoised at once (-s).")
    padding_px: int = Field(48, ge=0, description="Context around each cube, cut off again (-p).")
    device: int = Field(-1, ge=-1, description="GPU index (-d); -1: the CPU.")
    threads: int = Field(0, ge=0, description="torch threads (-j); 0: torch's default.")
    program: str = "topaz"
    launch: str = Field("entry_point", pattern="^(entry_point|bounded_runner)$")
    half_tomogram_paths: tuple[str, str] | None = Field(None, description=(
        "Even and odd half tomograms to train on by noise2noise first (-a, -b), starting from `model`."))
    training: Noise2NoiseParams = Field(default_factory=Noise2NoiseParams, description=(
        "Training settings, used with half_tomogram_paths."))


def trained_model_prefix(inputs: TopazDenoiseInputs) -> Path:
    """--save-prefix of a noise2noise run: Topaz saves `<prefix>_epochN.sav` beside the denoised tomogram."""
    return Path(inputs.out_dir) / f"{Path(inputs.tomogram_path).stem}_noise2noise"


def _training_args(inputs: TopazDenoiseInputs) -> list[str]:
    """`topaz denoise3d`'s noise2noise flags (as its --help lists them); the last epoch is always saved."""
    if inputs.half_tomogram_paths is None:
        return []
    settings = inputs.training
    return ["-a", inputs.half_tomogram_paths[0], "-b", inputs.half_tomogram_paths[1],
            "--N-train", str(settings.n_train), "--N-test", str(settings.n_test),
            "--batch-size", str(settings.batch_size), "--num-epochs", str(settings.num_epochs),
            "--optim", settings.optimizer, "--lr", f"{settings.learning_rate:g}", "--criteria", settings.criteria,
            "--save-interval", str(settings.num_epochs), "--save-prefix", str(trained_model_prefix(inputs))]


def denoised_path(inputs: TopazDenoiseInputs) -> Path:
    """Where `topaz denoise3d -o DIR --suffix .denoised` writes: DIR/<stem>.denoised<ext> (as its runner does)."""
    source = Path(inputs.tomogram_path)
    return Path(inputs.out_dir) / f"{source.stem}{DENOISED_SUFFIX}{source.suffix}"


def denoise3d_command(inputs: TopazDenoiseInputs) -> CommandSpec:
    """`topaz denoise3d VOLUME -o DIR --suffix .denoised -m MODEL -s PATCH -p PADDING -d DEVICE -j THREADS`,
    the flags cryoem-services' Denoise services pass, started as `inputs.launch` says; with half tomograms also
    the noise2noise training flags (-a -b --N-train ... --save-prefix)."""
    return CommandSpec(
        program=inputs.program, cwd=inputs.out_dir, threads=max(1, inputs.threads),
        gpus=1 if inputs.device >= 0 else 0,
        log_path=str(Path(inputs.out_dir) / f"{Path(inputs.tomogram_path).stem}_topaz_denoise3d.log"),
        args=[*DENOISE_LAUNCHES[inputs.launch], inputs.tomogram_path, "-o", inputs.out_dir,
              "--suffix", DENOISED_SUFFIX, "-m", inputs.model, "-s", str(inputs.patch_size_px),
              "-p", str(inputs.padding_px), "-d", str(inputs.device), "-j", str(inputs.threads),
              *_training_args(inputs)])


def parse_denoised(inputs: TopazDenoiseInputs) -> dict[str, Any]:
    """The denoised tomogram Topaz wrote: a volume of the input's shape, else an error naming the file."""
    from ..io.mrc import read_mrc_shape

    path = denoised_path(inputs)
    if not path.is_file():
        raise ImageFileError(path, "denoised tomogram not found (did topaz denoise3d finish?)")
    shape, source_shape = read_mrc_shape(path), read_mrc_shape(inputs.tomogram_path)
    if tuple(shape) != tuple(source_shape):
        raise ImageFileError(path, f"denoised volume is {tuple(shape)}, the tomogram {tuple(source_shape)}")
    model = inputs.model
    if inputs.half_tomogram_paths is not None:
        prefix = trained_model_prefix(inputs)
        saved = sorted(prefix.parent.glob(f"{prefix.name}_epoch*.sav"),
                       key=lambda file: int(file.stem.rsplit("_epoch", 1)[1] or 0))
        if not saved:
            raise ImageFileError(prefix.parent, f"no trained model {prefix.name}_epochN.sav (did the noise2noise "
                                                f"training finish?)")
        model = str(saved[-1])
    return {"denoised_path": str(path), "shape_zyx_px": list(shape), "model": model}
