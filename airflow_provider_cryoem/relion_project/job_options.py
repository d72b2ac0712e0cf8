"""job.star options from what a job actually read and ran: its input nodes and its command line.

CCP-EM doppio (ccpem-pipeliner) and the Relion GUI rebuild a job from its job.star: the input files, and the
parameters its results display, metadata report and "continue" use. Relion builds each command line from
these options (Relion 3.1 `pipeline_jobs.cpp`, ccpem-pipeliner's job classes), so the options are read back
from the command here by the same correspondence: `--K 6` of relion_refine is `nr_classes 6`, `--lowpass
15` of relion_mask_create is `lowpass_filter 15` and so on. Options not listed keep the job type's default
in those programs.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable

from .job_types import NodeType
from .star_text import Value

# The option each job kind names an input node in, by node type (Relion 3.1 and ccpem-pipeliner names).
_REFINE_INPUTS = {NodeType.PARTICLES: "fn_img", NodeType.MAP: "fn_ref", NodeType.MASK: "fn_mask"}
INPUT_OPTIONS: dict[str, dict[NodeType, str]] = {
    "select": {NodeType.PARTICLES: "fn_data", NodeType.MICROGRAPHS: "fn_mic", NodeType.OPTIMISER: "fn_model"},
    "class_selection": {NodeType.OPTIMISER: "fn_model"},
    "class2d": {NodeType.PARTICLES: "fn_img"},
    "initialmodel": {NodeType.PARTICLES: "fn_img"},
    "class3d": _REFINE_INPUTS,
    "refine3d": _REFINE_INPUTS,
    "maskcreate": {NodeType.MAP: "fn_in"},
    "postprocess": {NodeType.HALF_MAP: "fn_in", NodeType.MASK: "fn_mask"},
    "reextract": {NodeType.PARTICLES: "fndata_reextract", NodeType.MICROGRAPHS: "star_mics"},
}

# Relion's angular sampling choices by HEALPix order (the GUI's "Angular sampling interval" labels).
_SAMPLING = ["30 degrees", "15 degrees", "7.5 degrees", "3.7 degrees", "1.8 degrees", "0.9 degrees",
             "0.5 degrees", "0.2 degrees", "0.1 degrees"]


def _sampling(order: str) -> str:
    return _SAMPLING[int(order)]


# (option, conversion of the flag's value), or (option, "Yes"/"No") for a switch: the value it means when given
_Flag = tuple[str, Callable[[str], Value] | str]
_YES, _NO = "Yes", "No"
_RELION_REFINE: dict[str, _Flag] = {
    "--K": ("nr_classes", int), "--particle_diameter": ("particle_diameter", float),
    "--tau2_fudge": ("tau_fudge", float), "--sym": ("sym_name", str), "--ini_high": ("ini_high", float),
    "--offset_range": ("offset_range", float), "--offset_step": ("offset_step", float),
    "--healpix_order": ("sampling", _sampling), "--auto_local_healpix_order": ("auto_local_sampling", _sampling),
    "--strict_highres_exp": ("highres_limit", float), "--j": ("nr_threads", int), "--pool": ("nr_pool", int),
    "--ctf": ("do_ctf_correction", _YES), "--zero_mask": ("do_zero_mask", _YES),
    "--ctf_intact_first_peak": ("ctf_intact_first_peak", _YES), "--center_classes": ("do_center", _YES),
    "--gpu": ("use_gpu", _YES), "--solvent_correct_fsc": ("do_solvent_fsc", _YES),
    # the GUI's "Ref. map is on absolute greyscale? No" and "Combine iterations through disc? No"
    "--firstiter_cc": ("ref_correct_greyscale", _NO), "--dont_combine_weights_via_disc": ("do_combine_thru_disc", _NO),
}
_ITERATIONS = {"class2d": "nr_iter_em", "class3d": "nr_iter", "initialmodel": "nr_iter"}
COMMAND_OPTIONS: dict[str, dict[str, _Flag]] = {
    "relion_refine": _RELION_REFINE,
    "relion_mask_create": {
        "--lowpass": ("lowpass_filter", float), "--ini_threshold": ("inimask_threshold", float),
        "--extend_inimask": ("extend_inimask", int), "--width_soft_edge": ("width_mask_edge", int),
        "--angpix": ("angpix", float), "--j": ("nr_threads", int)},
    "relion_postprocess": {
        "--angpix": ("angpix", float), "--autob_lowres": ("autob_lowres", float), "--auto_bfac": ("do_auto_bfac", _YES),
        "--adhoc_bfac": ("adhoc_bfac", float), "--low_pass": ("low_pass", float),
        "--skip_fsc_weighting": ("do_skip_fsc_weighting", _YES)},
}


def options_from_command(kind: str, command: str) -> dict[str, Value]:
    """The job.star options a Relion command line of a job of `kind` was built from (empty for other
    programs). `command` is the shell-quoted line recorded in note.txt; an MPI launcher before it is skipped."""
    words = shlex.split(command)
    start = next((i for i, word in enumerate(words) if word.split("/")[-1].removesuffix("_mpi") in COMMAND_OPTIONS),
                 None)
    if start is None:
        return {}
    program = words[start].split("/")[-1].removesuffix("_mpi")
    flags = COMMAND_OPTIONS[program]
    options: dict[str, Value] = {}
    args = words[start + 1:]
    for index, word in enumerate(args):
        if word == "--iter" and kind in _ITERATIONS and index + 1 < len(args):
            options[_ITERATIONS[kind]] = int(args[index + 1])
        if word not in flags:
            continue
        option, convert = flags[word]
        options[option] = convert if isinstance(convert, str) else convert(args[index + 1])
    if program == "relion_refine" and kind == "class2d":  # EM or VDAM: ccpem-pipeliner's class2d.em / .vdam
        options |= {"do_em": "No", "do_grad": "Yes"} if "--grad" in args else {"do_em": "Yes", "do_grad": "No"}
    return options
