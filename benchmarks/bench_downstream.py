"""Downstream SPA with real Relion 3.1: 2D class selection against planted junk, 3D refinement against the
resolution the true angles allow, and the Rosenthal–Henderson B-factor from particle subsets.

Particles come from downstream/synthetic_particles.py (the simulator's particle projected by relion_project
at known angles and defocus, white noise, planted junk: empty ice, carbon edges, aggregates).
Class selection: one Class2D batch per seed, with and without Relion's --norm/--scale intensity
corrections; precision/recall are per particle (kept = its class was selected). 3D: auto-refine (MPI,
3 ranks) of 1/4, 1/2 and all particles from the true map low-passed to 60 Å, mask, post-process; the
reachable resolution reconstructs the same particles at their true angles (relion_reconstruct --ctf)
and measures the FSC with the same mask. Prints Markdown tables.

    .venv/bin/python benchmarks/bench_downstream.py [--seeds 7 11 5] [--particles-2d 300] [--particles-3d 400]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from airflow_provider_cryoem.config import SessionConfig
from airflow_provider_cryoem.downstream.class2d import Class2DSettings, run_class2d
from airflow_provider_cryoem.downstream.class_selection import select_classes
from airflow_provider_cryoem.downstream.initial_model import lowpass_reference
from airflow_provider_cryoem.downstream.reachable_fsc import (
    reachable_resolution,
    resolution_against_truth,
)
from airflow_provider_cryoem.downstream.refine3d import (
    Refine3DSettings,
    run_bfactor_series,
)
from airflow_provider_cryoem.downstream.synthetic_particles import (
    JUNK_KINDS,
    SyntheticParticleSettings,
    make_particle_set,
)
from airflow_provider_cryoem.engines.class_selection import (
    ClassSelectionSettings,
    selection_quality,
)
from airflow_provider_cryoem.io import read_star
from airflow_provider_cryoem.relion_project import OpticsGroup, RelionProject

BOX_PX, PIXEL_SIZE_A, DIAMETER_A = 40, 4.0, 128.0


def _particles(n: int, junk_fraction: float, seed: int) -> SyntheticParticleSettings:
    return SyntheticParticleSettings(n_particles=n, junk_fraction=junk_fraction, box_px=BOX_PX,
                                     pixel_size_a=PIXEL_SIZE_A, particle_diameter_a=DIAMETER_A, atom_sigma_a=3.0,
                                     snr=1.0, particles_per_micrograph=50, seed=seed)


def _project(root: Path) -> RelionProject:
    return RelionProject(root, "relion3", OpticsGroup(
        movie_pixel_size_a=1.0, micrograph_pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1,
        particle_box_px=BOX_PX, particle_pixel_size_a=PIXEL_SIZE_A))


def class_selection_rows(work: Path, seeds: list[int], n_particles: int, min_score: float) -> list[str]:
    rows = []
    for seed in seeds:
        for corrections in (False, True):
            project = _project(work / f"class2d_{seed}_{corrections}")
            planted = make_particle_set(project.root, _particles(n_particles, 0.3, seed))
            settings = Class2DSettings(classes=4, iterations=15, threads=2, mask_diameter_a=1.1 * DIAMETER_A,
                                       min_particles_per_class=10, intensity_corrections=corrections)
            started = time.monotonic()
            result = run_class2d(project, planted.particles_star, 1, settings)
            wall_s = time.monotonic() - started
            selection = select_classes(project, result, ClassSelectionSettings(
                min_score=min_score, particle_diameter_a=DIAMETER_A, pixel_size_a=PIXEL_SIZE_A))
            data = read_star(project.root / result.data_star)["particles"]
            kind = dict(zip(planted.image_names, planted.kinds))
            kinds = [kind[name] for name in data["rlnImageName"]]
            classes = data["rlnClassNumber"].astype(int).tolist()
            quality = selection_quality(classes, selection.selected_classes, [k != "particle" for k in kinds])
            rejected = []
            for junk in JUNK_KINDS:
                of_kind = [c for c, k in zip(classes, kinds) if k == junk]
                rejected.append(f"{sum(c not in selection.selected_classes for c in of_kind)}/{len(of_kind)}")
            share = kinds.count("particle") / len(kinds)
            populated = sum(c.particles_per_class > 0 for c in result.classes)
            rows.append(f"| {seed} | {'on' if corrections else 'off'} | {share:.2f} | {quality.precision:.2f} | "
                        f"{quality.recall:.2f} | {quality.junk_rejected:.2f} | {' | '.join(rejected)} | "
                        f"{populated}/{result.classes_per_batch} | {wall_s:.0f} |")
            print(rows[-1], flush=True)
    return rows


def refinement_rows(work: Path, n_particles: int) -> tuple[list[str], str]:
    project = _project(work / "refine")
    planted = make_particle_set(project.root, _particles(n_particles, 0.0, 3))
    reference = lowpass_reference(project, planted.reference_map, BOX_PX, PIXEL_SIZE_A)
    settings = Refine3DSettings(mask_diameter_a=1.1 * DIAMETER_A, particle_diameter_a=DIAMETER_A,
                                pixel_size_a=PIXEL_SIZE_A, initial_lowpass_a=40.0, healpix_order=1,
                                auto_local_healpix_order=3, offset_range_px=4, offset_step_px=2, fast_convergence=True,
                                max_iterations=12, bfactor_low_resolution_a=20.0)
    series = run_bfactor_series(project, planted.particles_star, reference.map, settings,
                                fractions=(0.25, 0.5, 1.0), min_particles=50)
    truth_map = project.absolute(planted.reference_map)
    rows = []
    for result in series.refinements:
        names = read_star(project.absolute(f"{result.refine_job}/run_data.star"))["particles"]["rlnImageName"]
        reachable = reachable_resolution(project.root, planted.truth_star, result.mask, PIXEL_SIZE_A,
                                         str(result.number_of_particles), image_names=list(names),
                                         bfactor_low_resolution_a=settings.bfactor_low_resolution_a)
        versus_truth = resolution_against_truth(project.absolute(f"{result.refine_job}/run_class001.mrc"),
                                                truth_map, PIXEL_SIZE_A)
        rows.append(f"| {result.number_of_particles} | {result.refine_resolution_a:.1f} | {result.resolution_a:.1f} | "
                    f"{reachable.resolution_a:.1f} | {versus_truth:.1f} | {result.bfactor_a2:.0f} | "
                    f"{reachable.bfactor_a2:.0f} | {result.duration_s:.0f} |")
        print(rows[-1], flush=True)
    start = resolution_against_truth(project.absolute(reference.map), truth_map, PIXEL_SIZE_A)
    fit = (f"Rosenthal–Henderson fit over {len(series.refinements)} subsets: B = {series.fit.bfactor_a2:.0f} Å² "
           f"(R² = {series.fit.r_squared:.2f}); starting map vs true map (FSC 0.5): {start:.0f} Å; "
           f"Nyquist {2 * PIXEL_SIZE_A:.0f} Å")
    return rows, fit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 11, 5])
    parser.add_argument("--particles-2d", type=int, default=300)
    parser.add_argument("--particles-3d", type=int, default=400)
    parser.add_argument("--min-score", type=float, default=SessionConfig.model_fields["class_selection_min_score"].default)
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_downstream_") as tmp:
        work = Path(tmp)
        print(f"### 2D class selection ({args.particles_2d} particles, 30 % junk, {BOX_PX} px at {PIXEL_SIZE_A:g} Å/px, "
              f"SNR 1, K = 4, 15 iterations, min score {args.min_score:g})\n")
        print("| seed | --norm --scale | particle share | precision | recall | junk rejected | "
              + " | ".join(f"{k} rejected" for k in JUNK_KINDS) + " | populated classes | Class2D wall s |")
        print("|" + "---|" * (9 + len(JUNK_KINDS) - 1))
        class_selection_rows(work, args.seeds, args.particles_2d, args.min_score)
        print(f"\n### 3D auto-refine + post-process ({args.particles_3d} particles, {BOX_PX} px at {PIXEL_SIZE_A:g} Å/px, "
              "SNR 1; resolutions in Å, FSC 0.143 unless noted)\n")
        print("| particles | refine (unmasked) | post-processed | reachable (true angles) | vs true map (FSC 0.5) | "
              "post-process B (Å²) | reachable B (Å²) | refine+mask+post wall s |")
        print("|---|---|---|---|---|---|---|---|")
        _, fit = refinement_rows(work, args.particles_3d)
        print(f"\n{fit}")
    print(f"\ntotal wall time {time.monotonic() - started:.0f} s")
    print(f"Reproduce: .venv/bin/python benchmarks/bench_downstream.py {' '.join(argv if argv is not None else sys.argv[1:])}")


if __name__ == "__main__":
    main()
