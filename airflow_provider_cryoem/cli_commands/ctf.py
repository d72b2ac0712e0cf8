"""`cryoem ctf MICROGRAPH`: estimate the CTF of one micrograph with the built-in engine."""
from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from ..engines.ctf import CtfInputs, run_ctf_estimation
from ..io import ImageFileError
from ._session_options import add_session_options, print_result, session_from_args

_SESSION_FIELDS = ("pixel_size_a", "voltage_kv", "cs_mm", "amplitude_contrast")
# Engine options exposed on the command line: (flag dest, type, help).
_ENGINE_OPTIONS = (
    ("box_size_px", int, "Tile (spectrum) size in px"),
    ("min_resolution_a", float, "Low-resolution limit of the fit (Å)"),
    ("max_resolution_a", float, "High-resolution limit of the fit (Å)"),
    ("min_defocus_a", float, "Smallest defocus searched (Å)"),
    ("max_defocus_a", float, "Largest defocus searched (Å)"),
    ("defocus_step_a", float, "Step of the 1D defocus search (Å)"),
    ("astigmatism_restraint_a", float, "Expected astigmatism (Å); larger values are penalised"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ctf", help="Estimate the CTF (defocus, astigmatism) of a micrograph.",
                                   description="CTFFIND-style CTF estimation with the built-in engine.")
    parser.add_argument("micrograph", help="Motion-corrected micrograph (MRC).")
    parser.add_argument("--diagnostic", help="Diagnostic MRC to write (default <micrograph>.ctf).")
    defaults = CtfInputs.model_fields
    for name, kind, text in _ENGINE_OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                            help=f"{text} (default {defaults[name].default})")
    parser.add_argument("--find-phase-shift", action="store_true", help="Also fit a phase-plate phase shift.")
    parser.add_argument("--json", action="store_true", help="Print the result as one JSON object.")
    add_session_options(parser, _SESSION_FIELDS)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    session = session_from_args(args, _SESSION_FIELDS)
    engine_options = {name: getattr(args, name) for name, _, _ in _ENGINE_OPTIONS if getattr(args, name) is not None}
    try:
        inputs = CtfInputs(micrograph_path=args.micrograph, diagnostic_path=args.diagnostic,
                           pixel_size_a=session.pixel_size_a, voltage_kv=session.voltage_kv, cs_mm=session.cs_mm,
                           amplitude_contrast=session.amplitude_contrast, find_phase_shift=args.find_phase_shift,
                           **engine_options)
        result = run_ctf_estimation(inputs)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid CTF options: {problems}", file=sys.stderr)
        return 2
    except (ImageFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_result(result, args.json)
    return 0
