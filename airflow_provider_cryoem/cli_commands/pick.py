"""`cryoem pick MICROGRAPH`: LoG particle picking of one micrograph, coordinates as text or JSON."""
from __future__ import annotations

import argparse
import sys

from ..engines.picking import PickingInputs, run_picking
from ..io import ImageFileError, read_mrc_pixel_size_a
from ._session_options import add_session_options, print_result, session_from_args

_SESSION_FIELDS = ("pixel_size_a", "particle_diameter_a")


def micrograph_pixel_size_a(args: argparse.Namespace, given_a: float, micrograph: str) -> float:
    """The pixel size given on the command line, else the micrograph header's, else the session default."""
    if args.pixel_size_a is not None:
        return given_a
    header_a = read_mrc_pixel_size_a(micrograph)
    return header_a if header_a > 0 else given_a


def _handle(args: argparse.Namespace) -> int:
    session = session_from_args(args, _SESSION_FIELDS)
    try:
        inputs = PickingInputs(
            micrograph_path=args.micrograph,
            pixel_size_a=micrograph_pixel_size_a(args, session.pixel_size_a, args.micrograph),
            particle_diameter_a=session.particle_diameter_a,
            min_diameter_a=args.min_diameter_a, max_diameter_a=args.max_diameter_a,
            threshold=args.threshold, adaptive_threshold=not args.fixed_threshold,
            min_distance_a=args.min_distance_a, edge_exclusion_a=args.edge_exclusion_a,
            max_particles=args.max_particles, coordinates_star_path=args.star, summary_image_path=args.image,
        )
        result = run_picking(inputs)
    except (ImageFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_result(result, args.json)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pick", help="Pick particles in a micrograph (Laplacian of Gaussian).",
                                   description=__doc__)
    parser.add_argument("micrograph", type=str, help="Motion-corrected micrograph (MRC).")
    parser.add_argument("--min-diameter-a", type=float, default=None, help="Smallest blob diameter (Å).")
    parser.add_argument("--max-diameter-a", type=float, default=None, help="Largest blob diameter (Å).")
    parser.add_argument("--threshold", type=float, default=PickingInputs.model_fields["threshold"].default,
                        help="Lowest figure of merit (robust std of the LoG map); the threshold adapts upward "
                             "to each micrograph unless --fixed-threshold.")
    parser.add_argument("--fixed-threshold", action="store_true",
                        help="Use --threshold as it is (no adaptation to the micrograph's noise).")
    parser.add_argument("--min-distance-a", type=float, default=None, help="Minimum distance between picks (Å).")
    parser.add_argument("--edge-exclusion-a", type=float, default=None, help="No picks this close to the edge (Å).")
    parser.add_argument("--max-particles", type=int, default=None, help="Keep at most this many picks.")
    parser.add_argument("--star", type=str, default=None, help="Write Relion coordinates to this STAR file.")
    parser.add_argument("--image", type=str, default=None, help="Write a picks overlay JPEG here.")
    parser.add_argument("--json", action="store_true", help="Print the result as JSON.")
    add_session_options(parser, _SESSION_FIELDS)
    parser.set_defaults(handler=_handle)
