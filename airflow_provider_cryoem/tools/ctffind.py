"""CTFFIND 4 and 5 (Rohou & Grigorieff 2015; Elferich et al. 2024): answers on stdin, results from files.

The answers follow the order the programs ask them (as cryoem-services feeds them, notes §3).
The result files (`<output>.txt`, `<output>_avrot.txt`) are read by io.ctffind_text, which also writes
them for the built-in engine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cryoem.execution.spec import CommandSpec
from airflow_provider_cryoem.io.ctffind_text import parse_avrot, parse_output_txt

__all__ = ["CtffindInputs", "answers", "command", "parse_avrot", "parse_output_txt", "parse_result"]


class CtffindInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    micrograph_path: str = Field(min_length=1)
    output_path: str = Field(min_length=1, description="Diagnostic spectrum (.ctf); .txt and _avrot.txt beside it.")
    pixel_size_a: float = Field(gt=0)
    voltage_kv: float = Field(300.0, ge=60, le=400)
    cs_mm: float = Field(2.7, ge=0)
    amplitude_contrast: float = Field(0.1, ge=0, le=0.5)
    spectrum_size_px: int = Field(512, ge=64, le=4096)
    min_resolution_a: float = Field(30.0, gt=0)
    max_resolution_a: float = Field(5.0, gt=0)
    min_defocus_a: float = Field(5000.0, ge=0)
    max_defocus_a: float = Field(50000.0, gt=0)
    defocus_step_a: float = Field(100.0, gt=0)
    find_phase_shift: bool = False
    version: Literal[4, 5] = 4
    determine_tilt: bool = Field(False, description="CTFFIND 5 only.")
    determine_thickness: bool = Field(False, description="CTFFIND 5 only.")
    program: str | None = Field(None, description="Default: ctffind (4) or ctffind5 (5).")


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def answers(inputs: CtffindInputs) -> list[str]:
    """The dialogue, one answer per prompt, in the order CTFFIND asks."""
    lines = [inputs.micrograph_path, inputs.output_path, f"{inputs.pixel_size_a:g}", f"{inputs.voltage_kv:g}",
             f"{inputs.cs_mm:g}", f"{inputs.amplitude_contrast:g}", str(inputs.spectrum_size_px),
             f"{inputs.min_resolution_a:g}", f"{inputs.max_resolution_a:g}", f"{inputs.min_defocus_a:g}",
             f"{inputs.max_defocus_a:g}", f"{inputs.defocus_step_a:g}",
             "no",  # astigmatism known
             "no",  # slower, exhaustive search
             "no",  # restrain astigmatism
             _yes_no(inputs.find_phase_shift)]
    if inputs.find_phase_shift:
        lines += ["0.0", "3.15", "0.1"]  # phase shift search range and step (rad)
    if inputs.version == 5:
        lines += [_yes_no(inputs.determine_tilt), _yes_no(inputs.determine_thickness)]
        if inputs.determine_thickness:
            lines += ["yes", "yes", "30", "3", "no", "no"]  # 1D brute force, 2D refinement, nodes, rounding
    lines.append("no")  # expert options
    return lines


def command(inputs: CtffindInputs) -> CommandSpec:
    if (inputs.determine_tilt or inputs.determine_thickness) and inputs.version != 5:
        raise ValueError("determine_tilt / determine_thickness need CTFFIND 5 (version: 5)")
    program = inputs.program or ("ctffind5" if inputs.version == 5 else "ctffind")
    return CommandSpec(program=program, stdin_text="\n".join(answers(inputs)) + "\n",
                       cwd=str(Path(inputs.output_path).parent),
                       log_path=str(Path(inputs.output_path).with_suffix("")) + f"_ctffind{inputs.version}.log")


def parse_result(inputs: CtffindInputs) -> dict[str, Any]:
    base = Path(inputs.output_path).with_suffix("")
    result = parse_output_txt(f"{base}.txt")
    result.update(micrograph_path=inputs.micrograph_path, diagnostic_path=inputs.output_path,
                  rotational_average=parse_avrot(f"{base}_avrot.txt"))
    return result

