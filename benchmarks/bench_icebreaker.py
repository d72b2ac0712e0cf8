"""IceBreaker (the `ice` stage, real `ib_job --mode group` + `ib_5fig`) against the simulator's planted ice.

A session whose holes differ in ice (`ice_thickness_a` ± `ice_thickness_spread_a` at each micrograph's
centre, plus the `ice_gradient_a` across it) is motion-corrected with the built-in engine, then each
micrograph goes through the stage's step as a DAG task runs it (same commands, same Relion project
layout), without Airflow. Prints per micrograph the planted thickness, IceBreaker's median, the thickness
read back from the median (the simulator's exp(-t / 300 nm) attenuation and known dose; a real detector
needs a calibration, IceBreaker's numbers are relative), the per-pixel Spearman of the grouped image
against the planted thickness map, and the time of each program; then the Spearman of the medians against
the planted thickness over the session. Wall times depend on the machine's load; CPU seconds less so. Reproduce with:

    .venv/bin/python benchmarks/bench_icebreaker.py --movies 8 --size 1024
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
from scipy.stats import spearmanr

from airflow_provider_cryoem.engines.motion import MotionCorrectionInputs, run_motion_correction
from airflow_provider_cryoem.execution import CommandSpec
from airflow_provider_cryoem.pipeline.external import icebreaker_step, local_executor
from airflow_provider_cryoem.pipeline.stages import MovieContext
from airflow_provider_cryoem.recipes.stages import IceThicknessParams
from airflow_provider_cryoem.relion_project import OpticsGroup, RelionProject
from airflow_provider_cryoem.simulate import GAIN_REFERENCE_NAME, SpaSimulationSettings, write_spa_session
from airflow_provider_cryoem.simulate.specimen import ICE_INELASTIC_MFP_A


def thickness_map_a(movie, settings: SpaSimulationSettings) -> np.ndarray:
    size = settings.image_size_px
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    direction = np.deg2rad(movie.ice_gradient_direction_deg)
    along = (np.cos(direction) * (xx - 0.5 * size) + np.sin(direction) * (yy - 0.5 * size)) / size
    return movie.ice_thickness_centre_a + settings.ice_gradient_a * along


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--movies", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024, help="Micrograph size (px); the demo's is 1024.")
    parser.add_argument("--ice", type=float, default=600.0, help="Mean ice at the micrographs' centres (Å).")
    parser.add_argument("--spread", type=float, default=450.0, help="± hole-to-hole variation (Å).")
    parser.add_argument("--gradient", type=float, default=100.0, help="Ice change across a micrograph (Å).")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    # The demo's optics and exposure: 2 Å pixels, 8 frames of 5 e⁻/Å².
    settings = SpaSimulationSettings(n_movies=args.movies, image_size_px=args.size, n_frames=8, pixel_size_a=2.0,
                                     dose_per_frame_e_a2=5.0, particle_diameter_a=128.0, particles_per_micrograph=30,
                                     seed=args.seed, ice_thickness_a=args.ice, ice_thickness_spread_a=args.spread,
                                     ice_gradient_a=args.gradient)
    dose_px = settings.n_frames * settings.dose_per_frame_e_a2 * settings.pixel_size_a**2
    with tempfile.TemporaryDirectory() as tmp:
        watch = Path(tmp) / "raw"
        truth = write_spa_session(settings, watch)
        project = RelionProject(Path(tmp) / "relion", optics=OpticsGroup(
            movie_pixel_size_a=2.0, micrograph_pixel_size_a=2.0, voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.1))
        project.reserve_jobs()
        run = local_executor("ice", "icebreaker")
        print("| micrograph | planted ice at centre (Å) | IceBreaker median | read back (Å) | per-pixel Spearman "
              "| ib_job (s, CPU s) | ib_5fig (s, CPU s) |")
        print("|---|---|---|---|---|---|---|")
        planted, medians = [], []
        for index, movie in enumerate(truth.movies):
            micrograph = project.job("motioncorr").file_for(watch / movie.movie_name, ".mrc")
            micrograph.parent.mkdir(parents=True, exist_ok=True)
            run_motion_correction(MotionCorrectionInputs(
                movie_path=str(watch / movie.movie_name), output_path=str(micrograph), pixel_size_a=2.0,
                dose_per_frame_e_a2=5.0, gain_reference_path=str(watch / GAIN_REFERENCE_NAME), patches_x=3,
                patches_y=3))
            seconds: dict[str, float] = {}

            def timed(spec: CommandSpec) -> str:
                started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                output = run(spec)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                name = Path(spec.program).name
                seconds[name] = time.perf_counter() - started
                seconds[f"{name} cpu"] = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
                return output

            item = {"movie": movie.movie_name, "watch_dir": str(watch), "experiment": "spa"}
            ctx = MovieContext(item, None, IceThicknessParams(), {"motioncorr": {"micrograph": str(micrograph)}},
                               project)
            result = icebreaker_step(ctx, timed)
            grouped = mrcfile.read(result["grouped_micrograph"])
            step = max(1, args.size // 64)
            rho = spearmanr(thickness_map_a(movie, settings)[::step, ::step].ravel(),
                            grouped[::step, ::step].ravel())[0]
            read_a = -ICE_INELASTIC_MFP_A * np.log(result["median"] / 10_000 / dose_px)
            planted.append(movie.ice_thickness_centre_a)
            medians.append(result["median"])
            print(f"| {index} | {movie.ice_thickness_centre_a:.0f} | {result['median']:.0f} | {read_a:.0f} | "
                  f"{rho:.2f} | {seconds['ib_job']:.2f}, {seconds['ib_job cpu']:.2f} | "
                  f"{seconds['ib_5fig']:.2f}, {seconds['ib_5fig cpu']:.2f} |", flush=True)
        print(f"\nSpearman (planted ice, IceBreaker median) over {len(planted)} micrographs: "
              f"{spearmanr(planted, medians)[0]:.3f}")


if __name__ == "__main__":
    main()
