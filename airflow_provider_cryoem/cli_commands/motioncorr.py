"""`cryoem motioncorr MOVIE --out MIC.mrc`: the built-in motion correction on one movie."""
from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from ..engines.motion import MotionCorrectionInputs, run_motion_correction
from ..io import ImageFileError
from ._session_options import add_session_options, print_result, session_from_args

SESSION_FIELDS = ("pixel_size_a", "dose_per_frame_e_a2", "voltage_kv", "gain_reference_path", "gain_rotation",
                  "gain_flip", "defect_file_path", "eer_grouping", "super_resolution")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("motioncorr", help="Motion-correct one movie with the built-in engine.",
                                   description=__doc__)
    parser.add_argument("movie", help="Movie file (MRC, TIFF or EER).")
    parser.add_argument("--out", required=True, help="Dose-weighted micrograph to write (MRC).")
    parser.add_argument("--patches", type=int, nargs=2, default=(5, 5), metavar=("X", "Y"),
                        help="Patches for local motion (1 1 = global only; default 5 5).")
    parser.add_argument("--iterations", type=int, default=10, help="Most alignment passes (default 10).")
    parser.add_argument("--bfactor-a2", type=float, default=150.0, help="Alignment low-pass B-factor (Å²).")
    parser.add_argument("--pre-exposure-e-a2", type=float, default=0.0, help="Exposure before frame 0 (e⁻/Å²).")
    parser.add_argument("--threads", type=int, default=None, help="FFT threads (default: all cores).")
    parser.add_argument("--json", action="store_true", help="Print the result as one JSON object.")
    add_session_options(parser, SESSION_FIELDS)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    session = session_from_args(args, SESSION_FIELDS)
    given = {"threads": args.threads} if args.threads is not None else {}
    try:
        inputs = MotionCorrectionInputs(
            movie_path=args.movie, output_path=args.out, pixel_size_a=session.pixel_size_a,
            dose_per_frame_e_a2=session.dose_per_frame_e_a2, voltage_kv=session.voltage_kv,
            pre_exposure_e_a2=args.pre_exposure_e_a2, gain_reference_path=session.gain_reference_path,
            gain_rotation=session.gain_rotation, gain_flip=session.gain_flip,
            defect_file_path=session.defect_file_path, eer_grouping=session.eer_grouping,
            bin_factor=2 if session.super_resolution else 1, patches_x=args.patches[0], patches_y=args.patches[1],
            iterations=args.iterations, bfactor_a2=args.bfactor_a2, **given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"error: {problems}", file=sys.stderr)
        return 2
    try:
        result = run_motion_correction(inputs)
    except ImageFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_result(result, args.json)
    return 0
