"""`cryoem simulate OUT_DIR`: write a synthetic SPA session with ground truth (at once or live)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from ..simulate import SpaSimulationSettings, run_live_session, write_spa_session
from ..simulate.session import GROUND_TRUTH_NAME

# option -> settings field, for the options whose names are shorter than the field names
_OPTIONS = {
    "movies": "n_movies", "size": "image_size_px", "frames": "n_frames", "seed": "seed", "format": "movie_format",
    "junk_fraction": "junk_fraction", "carbon_edge": "carbon_edge", "pixel_size_a": "pixel_size_a",
    "dose_per_frame_e_a2": "dose_per_frame_e_a2", "particles": "particles_per_micrograph",
    "particle_diameter_a": "particle_diameter_a", "gain_rotation": "gain_rotation", "gain_flip": "gain_flip",
    "drift_a_per_frame": "drift_a_per_frame",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("simulate", help="Write a synthetic SPA session (movies, gain, ground truth).",
                                   description="Write a synthetic SPA session with every planted value in "
                                               f"{GROUND_TRUTH_NAME}; --live writes movies one by one like a "
                                               "microscope.")
    parser.add_argument("out_dir", type=Path, help="Folder to write into (the watched folder with --live).")
    parser.add_argument("--movies", type=int, help="Number of movies (default 4).")
    parser.add_argument("--size", type=int, help="Frame width = height in px (default 1024).")
    parser.add_argument("--frames", type=int, help="Frames per movie (default 24).")
    parser.add_argument("--seed", type=int, help="Random seed (default 0).")
    parser.add_argument("--format", choices=["tiff", "mrc"], help="Movie format (default tiff).")
    parser.add_argument("--pixel-size-a", type=float, help="Pixel size in Å (default 1.0).")
    parser.add_argument("--dose-per-frame-e-a2", type=float, help="Dose per frame in e⁻/Å² (default 1.0).")
    parser.add_argument("--particles", type=int, help="Particles per micrograph (default 30).")
    parser.add_argument("--particle-diameter-a", type=float, help="Particle diameter in Å (default 140).")
    parser.add_argument("--junk-fraction", type=float, help="Fraction of junk objects (default 0).")
    parser.add_argument("--carbon-edge", action="store_true", default=None, help="Add a carbon film edge.")
    parser.add_argument("--gain-rotation", type=int, help="Rotation the written gain needs (0-3, default 0).")
    parser.add_argument("--gain-flip", type=int, help="Flip the written gain needs (0-2, default 0).")
    parser.add_argument("--drift-a-per-frame", type=float, help="Late-frame drift in Å/frame (default 0.8).")
    parser.add_argument("--settings-json", help="Any SpaSimulationSettings fields as a JSON object.")
    parser.add_argument("--live", action="store_true", help="Write movies one by one, then END_OF_SESSION.")
    parser.add_argument("--interval-s", type=float, default=5.0, help="Seconds between movies with --live.")
    parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    parser.set_defaults(handler=_run)


def _settings(args: argparse.Namespace) -> SpaSimulationSettings:
    """Settings from --settings-json overlaid with the explicit options; exits naming the bad field."""
    try:
        given = json.loads(args.settings_json) if args.settings_json else {}
    except json.JSONDecodeError as exc:
        print(f"error: --settings-json is not valid JSON ({exc})", file=sys.stderr)
        raise SystemExit(2) from None
    given.update({field: getattr(args, option) for option, field in _OPTIONS.items()
                  if getattr(args, option) is not None})
    try:
        return SpaSimulationSettings.model_validate(given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid simulation settings: {problems}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.live:
        truth = run_live_session(settings, args.out_dir, interval_s=args.interval_s)
    else:
        truth = write_spa_session(settings, args.out_dir)
    summary = {
        "out_dir": str(args.out_dir), "movies": len(truth.movies), "format": settings.movie_format,
        "image_size_px": settings.image_size_px, "frames": settings.n_frames,
        "particles": sum(len(m.particle_coordinates_px()) for m in truth.movies),
        "junk": sum(p.is_junk for m in truth.movies for p in m.particles),
        "gain_reference": str(args.out_dir / truth.gain_reference_name),
        "ground_truth": str(args.out_dir / GROUND_TRUTH_NAME),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0
