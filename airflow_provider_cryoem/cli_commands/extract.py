"""`cryoem extract MICROGRAPH --coordinates STAR`: cut, downscale, normalise and invert one micrograph's particles."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engines.extract import ExtractionInputs, run_extraction
from ..io import ImageFileError
from ._session_options import add_session_options, print_result, session_from_args
from .pick import micrograph_pixel_size_a

_SESSION_FIELDS = ("pixel_size_a", "particle_diameter_a", "box_size_px", "downscaled_box_size_px", "voltage_kv",
                   "cs_mm", "amplitude_contrast")


def _handle(args: argparse.Namespace) -> int:
    session = session_from_args(args, _SESSION_FIELDS)
    micrograph = Path(args.micrograph)
    output_dir = Path(args.output_dir) if args.output_dir else micrograph.parent
    try:
        inputs = ExtractionInputs(
            micrograph_path=str(micrograph), coordinates_star_path=args.coordinates,
            pixel_size_a=micrograph_pixel_size_a(args, session.pixel_size_a, str(micrograph)),
            box_px=session.extraction_box_px, downscaled_box_px=session.downscaled_box_px,
            voltage_kv=session.voltage_kv, cs_mm=session.cs_mm, amplitude_contrast=session.amplitude_contrast,
            defocus_u_a=args.defocus_u_a, defocus_v_a=args.defocus_v_a if args.defocus_v_a is not None
            else args.defocus_u_a, defocus_angle_deg=args.defocus_angle_deg, phase_flip=args.phase_flip,
            edge_handling=args.edge_handling, invert_contrast=args.invert_contrast,
            min_figure_of_merit=args.min_figure_of_merit,
            output_stack_path=str(output_dir / f"{micrograph.stem}.mrcs"),
            output_star_path=str(output_dir / f"{micrograph.stem}_extract.star"),
        )
        result = run_extraction(inputs)
    except (ImageFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.json:
        result = result.model_copy(update={"particles": []})  # people want the counts, not every row
    print_result(result, args.json)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("extract", help="Extract particle images from a micrograph into a .mrcs stack.",
                                   description=__doc__)
    parser.add_argument("micrograph", type=str, help="Motion-corrected micrograph (MRC).")
    parser.add_argument("--coordinates", type=str, required=True, help="Relion coordinate STAR file.")
    parser.add_argument("--output-dir", type=str, default=None,
                        help="Where <name>.mrcs and <name>_extract.star go (default beside the micrograph).")
    parser.add_argument("--defocus-u-a", type=float, default=0.0, help="Defocus U (Å) for the STAR rows.")
    parser.add_argument("--defocus-v-a", type=float, default=None, help="Defocus V (Å); default defocus U.")
    parser.add_argument("--defocus-angle-deg", type=float, default=0.0, help="Astigmatism angle (deg).")
    parser.add_argument("--phase-flip", action="store_true", help="Phase-flip the micrograph with its CTF first.")
    parser.add_argument("--edge-handling", choices=("skip", "pad"), default="skip",
                        help="Particles whose box leaves the micrograph: skip them or pad by mirroring.")
    parser.add_argument("--invert-contrast", action=argparse.BooleanOptionalAction, default=True,
                        help="Make particles white (Relion's convention).")
    parser.add_argument("--min-figure-of-merit", type=float, default=None,
                        help="Ignore picks whose rlnAutopickFigureOfMerit is below this.")
    parser.add_argument("--json", action="store_true", help="Print the result (with every particle row) as JSON.")
    add_session_options(parser, _SESSION_FIELDS)
    parser.set_defaults(handler=_handle)
