"""`cryoem summary SESSION`: what the results store holds for a session (counts, failures, medians)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sqlalchemy.exc import ArgumentError

from ..results import (
    ResultsError,
    ResultsStore,
    SessionSummary,
    default_sqlite_path,
    engine_from_url,
)

URL_ENV = "CRYOEM_RESULTS_URL"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("summary", help="Summarise a session from the results database.",
                                   description=__doc__)
    parser.add_argument("session", help="session name (or its id, with --id)")
    parser.add_argument("--id", action="store_true", help="SESSION is the session id (when names are reused)")
    parser.add_argument("--db", default=os.environ.get(URL_ENV),
                        help=f"database URL, postgresql://user@host/db or sqlite:///path (default ${URL_ENV}; "
                             "else the demo SQLite file, see --processing-dir)")
    parser.add_argument("--processing-dir", help="processing directory holding the demo results.sqlite")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        url = args.db or f"sqlite:///{_existing_demo_database(args.processing_dir)}"
        store = ResultsStore(engine_from_url(url))
        if store.schema_version() == 0:
            raise ResultsError(f"{store.label} holds no results tables")
        summary = store.session_summary(_session_id(args.session) if args.id else args.session)
    except (ResultsError, ValueError, ArgumentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary.model_dump(mode="json")) if args.json else format_summary(summary))
    return 0


def _session_id(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"--id: session id must be a whole number, got {text!r}")
    return int(text)


def _existing_demo_database(processing_dir: str | None) -> str:
    path = default_sqlite_path(processing_dir)
    if not path.is_file():
        raise ValueError(f"no results database at {path}")
    return str(path)


def format_summary(summary: SessionSummary) -> str:
    """The summary as lines for people: counts per stage, medians, then each failure with its reason."""
    lines = [f"session {summary.session}: {summary.files_claimed} files claimed, "
             f"{summary.movies_registered} movies, {summary.processing_jobs} jobs "
             f"({summary.reprocess_jobs} reprocess)",
             f"  {'ended: ' + summary.end_reason if summary.ended else 'still collecting'}"]
    lines += [f"  {stage:<18} {count.succeeded:>7} done {count.failed:>5} failed"
              for stage, count in summary.stages.items()]
    medians = {
        "total motion (Å)": summary.median_total_motion_a,
        "defocus (Å)": summary.median_defocus_a,
        "CTF fit resolution (Å)": summary.median_fit_resolution_a,
        "particles per micrograph": summary.median_particles_per_micrograph,
    }
    lines += [f"median {name}: {'-' if value is None else f'{value:.2f}'}" for name, value in medians.items()]
    tomo = summary.tomography
    if tomo.tilts or tomo.series_collecting or tomo.series_complete:
        lines.append(f"tilt series: {tomo.series_complete} complete ({tomo.series_reconstructed} with a tomogram), "
                     f"{tomo.series_collecting} collecting; {tomo.tilts} tilts ({tomo.excluded_tilts} excluded, "
                     f"{tomo.late_tilts} late)")
    if summary.best_resolution_a is not None:
        lines.append(f"best refinement resolution (Å): {summary.best_resolution_a:.2f}  map: {summary.best_map_path}")
    if summary.bfactor_a2 is not None:
        lines.append(f"B-factor (Rosenthal–Henderson, Å²): {summary.bfactor_a2:.0f}")
    lines.append(f"failures: {len(summary.failures)}")
    lines += [f"  [{f.stage}] {f.movie or '(whole job)'}: {f.reason}"
              + (" (reprocess)" if f.reprocess else "") for f in summary.failures]
    return "\n".join(lines)
