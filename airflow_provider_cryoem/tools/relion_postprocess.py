"""relion_postprocess: sharpening and FSC resolution of a refined map's half-maps."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cryoem.execution.spec import CommandSpec

_RESOLUTION = re.compile(r"^\s*\+ FINAL RESOLUTION:\s*([-+0-9.eE]+)", re.MULTILINE)
_BFACTOR = re.compile(r"^\s*\+ apply b-factor of:\s*([-+0-9.eE]+)", re.MULTILINE)


class PostProcessInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_dir: str = Field(min_length=1)
    half_map_path: str = Field(min_length=1, description="Half-map 1; Relion finds half 2 by its name "
                                                         "('half1' → 'half2').")
    mask_path: str = Field(min_length=1)
    job_dir: str = "PostProcess/job020"
    pixel_size_a: float = Field(gt=0)
    auto_bfactor_low_resolution_a: float = Field(10.0, gt=0)
    program: str = "relion_postprocess"


def command(inputs: PostProcessInputs) -> CommandSpec:
    if "half1" not in Path(inputs.half_map_path).name:
        raise ValueError(f"half_map_path: {inputs.half_map_path!r} must contain 'half1' so Relion finds half 2")
    (Path(inputs.project_dir) / inputs.job_dir).mkdir(parents=True, exist_ok=True)
    job = inputs.job_dir.rstrip("/") + "/"
    return CommandSpec(program=inputs.program, cwd=inputs.project_dir, args=[
        "--i", inputs.half_map_path, "--o", f"{job}postprocess", "--mask", inputs.mask_path,
        "--angpix", f"{inputs.pixel_size_a:g}", "--auto_bfac", "--autob_lowres",
        f"{inputs.auto_bfactor_low_resolution_a:g}", "--pipeline_control", job])


def parse_stdout(text: str) -> dict[str, Any]:
    """Final resolution (Å) and the applied B-factor (Å²) from relion_postprocess's output."""
    resolution = _RESOLUTION.findall(text)
    bfactor = _BFACTOR.findall(text)
    if not resolution:
        raise ValueError("relion_postprocess output has no '+ FINAL RESOLUTION:' line")
    try:
        return {"final_resolution_a": float(resolution[-1]), "bfactor_a2": float(bfactor[-1]) if bfactor else None}
    except ValueError:
        raise ValueError("relion_postprocess output: the final resolution or B-factor is not a number") from None
