"""A simulated SPA session through spa_live from movies to a post-processed map, measured against truth.

One finished simulated session (the demo's microscope settings: 2 Å pixels, a 128 Å particle, 15 % of the
planted objects junk aggregates) runs through `airflow dags test spa_live` with the demo recipe (built-in
preprocessing, Relion 3.1 for 2D, initial model, 3D, refinement, post-processing, B-factor). Then:

- class selection: every extracted particle is labelled from the simulator's truth (real, junk, false
  pick); precision and recall of the particles gathered for 3D;
- the final resolution against the bound the data allow: the refined particles reconstructed at their
  true angles and centres with their estimated CTFs (relion_reconstruct), FSC with the refinement's mask;
- the final resolution against the same Relion commands run by hand: the refinement, mask and
  post-processing command lines from the jobs' note.txt replayed in a shell from the project folder, into
  folders of their own, on the same input files.

The refinement runs on the best class re-extracted at the micrograph's pixel size (the recipe default);
`--no-reextract` refines the classification's binned particles instead (the demo recipe without its `reextract` stage).

    .venv/bin/python benchmarks/bench_spa_session.py [--movies 8] [--seed 5] [--no-reextract]
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from airflow_provider_cryoem.demo import SIMULATION, SMALL_SESSION
from airflow_provider_cryoem.devtools.dags_test import dags_test_env
from airflow_provider_cryoem.downstream.reachable_fsc import reachable_resolution
from airflow_provider_cryoem.io import read_star
from airflow_provider_cryoem.io.star import write_star
from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.simulate import (
    END_MARKER_NAME,
    GAIN_REFERENCE_NAME,
    SessionTruth,
    SpaSimulationSettings,
    write_spa_session,
)
from airflow_provider_cryoem.simulate.particle_labels import (
    FALSE_PICK,
    JUNK,
    PARTICLE,
    label_particles,
    planted_objects,
    selection_measure,
)
from airflow_provider_cryoem.tools import relion_postprocess

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).parent / "airflow")


def recipes_dir(work: Path, reextract: bool) -> Path:
    """The demo recipes, or a copy without the reextract stage: refine3d refines the binned particles."""
    demo = REPO / "recipes" / "demo"
    if reextract:
        return demo
    recipe = yaml.safe_load((demo / "spa_live.yaml").read_text())
    del recipe["stages"]["reextract"]
    recipe["stages"]["refine3d"]["after"] = ["class3d"]
    folder = work / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spa_live.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return folder


def run_session(work: Path, settings: SpaSimulationSettings,
                reextract: bool = True) -> tuple[SessionTruth, Path, float]:
    """Simulate the finished session and process it with one `airflow dags test spa_live`."""
    watch_dir = work / "session" / "raw"
    truth = write_spa_session(settings, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    home = work / "airflow_home"
    home.mkdir()
    env = dags_test_env(home, CRYOEM_DATA_ROOTS=str(work), CRYOEM_RECIPES_DIR=str(recipes_dir(work, reextract)))
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    conf = {"session_name": "bench", "watch_dir": str(watch_dir), "pixel_size_a": settings.pixel_size_a,
            "particle_diameter_a": settings.particle_diameter_a, "dose_per_frame_e_a2": settings.dose_per_frame_e_a2,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME), **SMALL_SESSION}
    started = time.monotonic()
    run = subprocess.run([AIRFLOW, "dags", "test", "spa_live", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True)
    wall_s = time.monotonic() - started
    if run.returncode:
        sys.exit(f"spa_live failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    return truth, work / "session" / "processing", wall_s


def _labels(truth: SessionTruth, table: pd.DataFrame) -> list[str]:
    return label_particles(truth, table.rlnMicrographName, table.rlnCoordinateX, table.rlnCoordinateY)


def selection_figures(truth: SessionTruth, relion: Path) -> dict[str, float]:
    extracted = read_star(relion / "Extract/job005/particles.star")["particles"]
    selected = read_star(relion / "Select/Live_best_particles/particles_all.star")["particles"]
    labels, kept = _labels(truth, extracted), _labels(truth, selected)
    measure = selection_measure(labels, kept)
    return {"extracted": len(labels), "real": labels.count(PARTICLE), "junk": labels.count(JUNK),
            "false_picks": labels.count(FALSE_PICK), "kept": len(kept), "share": labels.count(PARTICLE) / len(labels),
            "precision": measure.precision, "recall": measure.recall,
            "junk_rejected": 1 - kept.count(JUNK) / max(labels.count(JUNK), 1),
            "false_rejected": 1 - kept.count(FALSE_PICK) / max(labels.count(FALSE_PICK), 1)}


def truth_star(truth: SessionTruth, refined_data: Path, out: Path) -> int:
    """The refined particles with their true angles and centres (estimated CTFs kept): what an ideal
    alignment would give. Particles not on a planted real particle are left out; returns how many."""
    blocks = read_star(refined_data)
    table = blocks["particles"].reset_index(drop=True)
    pixel_size_a = {Path(m.movie_name).stem: m.pixel_size_a for m in truth.movies}
    planted = planted_objects(truth, table.rlnMicrographName, table.rlnCoordinateX, table.rlnCoordinateY)
    real = [i for i, p in enumerate(planted) if p is not None and not p.is_junk]
    ideal = table.iloc[real].copy()
    px = np.array([pixel_size_a[Path(name).stem] for name in ideal.rlnMicrographName])
    # Relion: the particle's centre in the micrograph is the box centre (the rounded coordinate) minus
    # the origin, so origin = rounded pick - true centre (Å)
    ideal["rlnOriginXAngst"] = (np.rint(ideal.rlnCoordinateX) - [planted[i].x_px for i in real]) * px
    ideal["rlnOriginYAngst"] = (np.rint(ideal.rlnCoordinateY) - [planted[i].y_px for i in real]) * px
    ideal["rlnAngleRot"] = [planted[i].rot_deg for i in real]
    ideal["rlnAngleTilt"] = [planted[i].tilt_deg for i in real]
    ideal["rlnAnglePsi"] = [planted[i].psi_deg for i in real]
    write_star(out, {"optics": blocks["optics"], "particles": ideal})
    return len(ideal)


def _note_commands(job: Path) -> list[str]:
    return [line for line in (job / "note.txt").read_text().splitlines()
            if line.strip() and not line.startswith(" ++++")]


def replay_by_hand(relion: Path, refine_job: str, mask_job: str, post_job: str,
                   seed: int | None = None) -> tuple[float, float, float]:
    """Run the jobs' own command lines in a shell, outputs redirected to Hand/<job>/ (Seed<N>/<job>/ with
    the refinement's --random_seed replaced by `seed`); returns (post-processed resolution Å, B Å², wall s)."""
    folder = "Hand" if seed is None else f"Seed{seed}"
    commands = []
    for job in (refine_job, mask_job, post_job):
        for command in _note_commands(relion / job):
            for other in (refine_job, mask_job, post_job):
                command = re.sub(rf"(?<![\w/]){re.escape(other)}/", f"{folder}/{other}/", command)
            if seed is not None:
                command = re.sub(r"--random_seed \d+", f"--random_seed {seed}", command)
            commands.append(command)
    for job in (refine_job, mask_job, post_job):
        (relion / folder / job).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    output = ""
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=relion, capture_output=True, text=True, check=True)
        output = done.stdout
    parsed = relion_postprocess.parse_stdout(output)
    return parsed["final_resolution_a"], parsed["bfactor_a2"], time.monotonic() - started


def _sharpening_b(postprocess_star: Path) -> float:
    general = read_star(postprocess_star)["general"]
    return float(np.asarray(general["rlnBfactorUsedForSharpening"]).ravel()[0])


def measure(truth: SessionTruth, processing: Path, session_name: str,
            replay_seeds: tuple[int, ...] = ()) -> dict[str, float]:
    """Class selection, the final map, the bound from true angles and the hand replay of its commands."""
    relion = processing / "relion"
    summary = results_store(None, str(processing)).session_summary(session_name)
    post_job = "/".join(Path(summary.best_map_path).parent.parts[-2:])  # PostProcess/jobNNN
    post_command = " ".join(_note_commands(relion / post_job))
    refine_job = re.search(r"--i (Refine3D/job\d+)/", post_command).group(1)
    mask_job = re.search(r"--mask (MaskCreate/job\d+)/", post_command).group(1)
    refined = read_star(relion / refine_job / "run_data.star")
    pixel_size_a = float(refined["optics"]["rlnImagePixelSize"].iloc[0])
    n_ideal = truth_star(truth, relion / refine_job / "run_data.star", relion / "Ideal" / "truth.star")
    reachable = reachable_resolution(relion, "Ideal/truth.star", f"{mask_job}/mask.mrc", pixel_size_a, "final",
                                     bfactor_low_resolution_a=20.0)
    hand_resolution_a, hand_bfactor_a2, hand_wall_s = replay_by_hand(relion, refine_job, mask_job, post_job)
    seeds = {seed: replay_by_hand(relion, refine_job, mask_job, post_job, seed) for seed in replay_seeds}
    return {**selection_figures(truth, relion), "refined": len(refined["particles"]),
            "resolution_a": summary.best_resolution_a, "bfactor_a2": _sharpening_b(relion / post_job / "postprocess.star"),
            "bfactor_fit_a2": summary.bfactor_a2, "hand_resolution_a": hand_resolution_a,
            "hand_bfactor_a2": hand_bfactor_a2, "hand_wall_s": hand_wall_s, "reachable_a": reachable.resolution_a,
            "ideal": n_ideal, "nyquist_a": 2 * pixel_size_a, "pixel_size_a": pixel_size_a,
            "box_px": int(refined["optics"]["rlnImageSize"].iloc[0]), "stage_s": stage_seconds(relion, refine_job),
            "seeds": seeds}


def stage_seconds(relion: Path, refine_job: str) -> dict[str, float]:
    """Wall seconds of the re-extraction (if any) and of the refinement → post-processing, from the jobs'
    files: re-extraction from its job.star to its exit marker, refinement from the Refine3D job.star to
    the last PostProcess exit marker of the session (the B-factor series included)."""
    def span(first: Path, last: Path) -> float:
        return last.stat().st_mtime - first.stat().st_mtime

    times = {}
    reextract = sorted(p for p in (relion / "Extract").glob("job*") if p.name != "job005")
    if reextract:
        times["reextract"] = span(reextract[-1] / "job.star", reextract[-1] / "RELION_JOB_EXIT_SUCCESS")
    last_post = max((relion / "PostProcess").glob("job*/RELION_JOB_EXIT_SUCCESS"), key=lambda p: p.stat().st_mtime)
    times["refine_to_bfactor"] = span(relion / refine_job / "job.star", last_post)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--movies", type=int, default=8)
    parser.add_argument("--seed", type=int, default=SIMULATION["seed"])
    parser.add_argument("--dose-per-frame", type=float, default=SIMULATION["dose_per_frame_e_a2"],
                        help="e/Å² per frame (the demo's movies have %(default)s)")
    parser.add_argument("--junk-fraction", type=float, default=SIMULATION["junk_fraction"],
                        help="share of the planted objects that are junk aggregates (demo: %(default)s)")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--replay-seeds", type=int, nargs="*", default=[], metavar="SEED",
                        help="also replay the refinement → mask → post-processing with these --random_seed values")
    parser.add_argument("--no-reextract", action="store_true",
                        help="refine the classification's binned particles (no reextract stage)")
    args = parser.parse_args(argv)
    settings = SpaSimulationSettings(n_movies=args.movies, **{**SIMULATION, "seed": args.seed,
                                                              "dose_per_frame_e_a2": args.dose_per_frame,
                                                              "junk_fraction": args.junk_fraction})
    with tempfile.TemporaryDirectory(prefix="bench_spa_session_") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        truth, processing, wall_s = run_session(work, settings, reextract=not args.no_reextract)
        m = measure(truth, processing, "bench", tuple(args.replay_seeds))

    print(f"### spa_live session, {args.movies} simulated movies (seed {args.seed}, "
          f"{settings.n_frames} × {settings.dose_per_frame_e_a2:g} e/Å², {settings.junk_fraction:.0%} junk), demo recipe\n")
    print("| extracted | real / junk / false picks | particle share | kept for 3D | precision | recall | "
          "junk rejected | false picks rejected |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {m['extracted']} | {m['real']} / {m['junk']} / {m['false_picks']} | {m['share']:.2f} | {m['kept']} | "
          f"{m['precision']:.2f} | {m['recall']:.2f} | {m['junk_rejected']:.2f} | {m['false_rejected']:.2f} |\n")
    stage_s = m["stage_s"]
    print("| refined at | refined particles | spa_live post-processed Å | same commands by hand Å | "
          "reachable (true angles) Å | Nyquist Å | spa_live B Å² | by hand B Å² | B-factor fit Å² | session wall s | "
          "re-extraction s | refinement + B-factor series s | hand replay wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {m['box_px']} px of {m['pixel_size_a']:.2f} Å ({'binned' if args.no_reextract else 're-extracted'}) | "
          f"{m['refined']} | {m['resolution_a']:.1f} | {m['hand_resolution_a']:.1f} | "
          f"{m['reachable_a']:.1f} ({m['ideal']} on real particles) | {m['nyquist_a']:.1f} | "
          f"{m['bfactor_a2']:.0f} | {m['hand_bfactor_a2']:.0f} | {m['bfactor_fit_a2']:.0f} | "
          f"{wall_s:.0f} | {stage_s.get('reextract', 0):.1f} | {stage_s['refine_to_bfactor']:.0f} | "
          f"{m['hand_wall_s']:.0f} |")
    if m["seeds"]:
        print("\n| refinement --random_seed | post-processed Å | B Å² | wall s |\n|---|---|---|---|")
        for seed, (resolution_a, bfactor_a2, seconds) in m["seeds"].items():
            print(f"| {seed} | {resolution_a:.1f} | {bfactor_a2:.0f} | {seconds:.0f} |")
    print(f"\nReproduce: .venv/bin/python benchmarks/bench_spa_session.py {shlex.join(argv or sys.argv[1:])}")


if __name__ == "__main__":
    main()
