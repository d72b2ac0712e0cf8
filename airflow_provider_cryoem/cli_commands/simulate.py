"""`cryoem simulate OUT_DIR [--tomo]`: write a synthetic SPA or tilt-series session with ground truth (at once or live)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from ..simulate import SpaSimulationSettings, run_live_session, write_spa_session
from ..simulate.tilt_series import run_live_tomo_session, write_tomo_session
from ..simulate.tomo_settings import TomoSimulationSettings
from ..simulate.session import GROUND_TRUTH_NAME
from ..simulate.settings import PRESETS

# option -> settings field, for the options whose names are shorter than the field names
_OPTIONS = {
    "movies": "n_movies", "size": "image_size_px", "frames": "n_frames", "seed": "seed", "format": "movie_format",
    "junk_fraction": "junk_fraction", "carbon_edge": "carbon_edge", "pixel_size_a": "pixel_size_a",
    "dose_per_frame_e_a2": "dose_per_frame_e_a2", "particles": "particles_per_micrograph",
    "particle_diameter_a": "particle_diameter_a", "gain_rotation": "gain_rotation", "gain_flip": "gain_flip",
    "drift_a_per_frame": "drift_a_per_frame",
}
# the same for --tomo (TomoSimulationSettings); SPA-only options are refused there
_TOMO_OPTIONS = {
    "series": "n_series", "naming": "naming", "size": "image_size_px", "frames": "n_frames", "seed": "seed",
    "format": "movie_format", "pixel_size_a": "pixel_size_a", "particles": "n_particles",
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
    parser.add_argument("--preset", choices=sorted(PRESETS), default="easy",
                        help="Starting settings: easy (clear particles on flat ice, ideal detector; quick tests) "
                             "or realistic (a 150 kDa protein at its true contrast in amorphous ice with "
                             "gradients, carbon rim, contaminants, counting camera, 50 e⁻/Å² over 50 frames); "
                             "--settings-json and the options above override it.")
    parser.add_argument("--settings-json", help="Any SpaSimulationSettings fields as a JSON object.")
    parser.add_argument("--tomo", action="store_true",
                        help="Write tilt series (movies in dose-symmetric order, SerialEM mdoc, phantom volumes) "
                             "instead of SPA movies; --settings-json then takes TomoSimulationSettings fields.")
    parser.add_argument("--series", type=int, help="Tilt series with --tomo (default 1).")
    parser.add_argument("--naming", choices=["serialem", "tomo5"],
                        help="File names with --tomo: TS_01_001_0.0.tif (serialem, default) or "
                             "Position_1_001_0.00_<date>_<time>_fractions.tiff (tomo5).")
    parser.add_argument("--live", action="store_true",
                        help="Write movies (tilts) one by one, the mdoc growing with --tomo, then END_OF_SESSION.")
    parser.add_argument("--interval-s", type=float, default=5.0, help="Seconds between movies (tilts) with --live.")
    parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    parser.set_defaults(handler=_run)


def _settings(args: argparse.Namespace) -> SpaSimulationSettings | TomoSimulationSettings:
    """Settings from --settings-json overlaid with the explicit options; exits naming the bad field."""
    model: type[SpaSimulationSettings | TomoSimulationSettings] = TomoSimulationSettings if args.tomo \
        else SpaSimulationSettings
    options = _TOMO_OPTIONS if args.tomo else _OPTIONS
    refused = [f"--{option.replace('_', '-')}" for option in (_OPTIONS.keys() | _TOMO_OPTIONS.keys()) - options.keys()
               if getattr(args, option) is not None]
    if args.tomo and args.preset != "easy":
        refused.append("--preset")
    if refused:
        print(f"error: {', '.join(sorted(refused))} not allowed {'with' if args.tomo else 'without'} --tomo",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        given = json.loads(args.settings_json) if args.settings_json else {}
    except json.JSONDecodeError as exc:
        print(f"error: --settings-json is not valid JSON ({exc})", file=sys.stderr)
        raise SystemExit(2) from None
    given.update({field: getattr(args, option) for option, field in options.items()
                  if getattr(args, option) is not None})
    if not args.tomo:
        given = {**PRESETS[args.preset], **given}
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid simulation settings: {problems}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if isinstance(settings, TomoSimulationSettings):
        return _run_tomo(args, settings)
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
    _print_summary(summary, args.json)
    return 0


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")


def _run_tomo(args: argparse.Namespace, settings: TomoSimulationSettings) -> int:
    if args.live:
        truth = run_live_tomo_session(settings, args.out_dir, interval_s=args.interval_s)
    else:
        truth = write_tomo_session(settings, args.out_dir)
    summary = {
        "out_dir": str(args.out_dir), "series": len(truth.series), "tilts": sum(len(s.tilts) for s in truth.series),
        "naming": settings.naming, "format": settings.movie_format, "image_size_px": settings.image_size_px,
        "mdocs": [str(args.out_dir / s.mdoc_name) for s in truth.series],
        "gain_reference": str(args.out_dir / truth.gain_reference_name),
        "ground_truth": str(args.out_dir / GROUND_TRUTH_NAME),
    }
    _print_summary(summary, args.json)
    return 0
