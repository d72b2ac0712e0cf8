"""The CTF engine's ice-ring density against the simulator's planted ice thickness and IceBreaker's estimate.

The built-in `ice_ring_density` (engines/ctf_spectrum.py) is the excess of the rotationally averaged
spectrum in the 3.9–3.6 Å band over its flanks. It needs Nyquist finer than 3.3 Å, so the micrographs here
have 1 Å pixels (bench_icebreaker.py's 2 Å pixels cannot show it). For each planted thickness one
micrograph of the realistic preset (amorphous ice with its 3.7 Å ring, counting camera, 50 e⁻/Å² over 50
frames) is simulated without drift and summed, the CTF engine reads its ice-ring density, and IceBreaker
(the `ice` stage's `ib_job --mode group` + `ib_5fig`) its median. Prints one row per thickness and the
Spearman rank correlation of each estimate with the planted thickness. Reproduce with:

    nice -n 10 .venv/bin/python benchmarks/bench_ice_ring.py [--thicknesses 100 200 350 600 1000] [--size 1024]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from airflow_provider_cryoem.engines.ctf import CtfInputs, run_ctf_estimation
from airflow_provider_cryoem.io import write_mrc
from airflow_provider_cryoem.pipeline.external import icebreaker_step, local_executor
from airflow_provider_cryoem.pipeline.stages import MovieContext
from airflow_provider_cryoem.recipes.stages import IceThicknessParams
from airflow_provider_cryoem.relion_project import OpticsGroup, RelionProject
from airflow_provider_cryoem.simulate import SpaSimulationSettings, simulate_movie

PIXEL_SIZE_A = 1.0


def simulated_micrograph(thickness_a: float, size_px: int, seed: int) -> np.ndarray:
    """The frame sum of one realistic-preset movie with `thickness_a` of ice at its centre and no motion."""
    settings = SpaSimulationSettings.realistic(
        image_size_px=size_px, pixel_size_a=PIXEL_SIZE_A, seed=seed, ice_thickness_a=thickness_a,
        ice_thickness_spread_a=0.0, drift_a_per_frame=0.0, initial_drift_factor=1.0, local_motion_a=0.0,
        carbon_edge=False, carbon_particle_fraction=0.0, ice_contaminants_per_um2=0.0, defocus_min_a=15000.0,
        defocus_max_a=15000.0)
    return simulate_movie(settings, 0).frames.sum(axis=0, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--thicknesses", type=float, nargs="+", default=[100.0, 200.0, 350.0, 600.0, 1000.0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        project = RelionProject(Path(tmp) / "relion", optics=OpticsGroup(
            movie_pixel_size_a=PIXEL_SIZE_A, micrograph_pixel_size_a=PIXEL_SIZE_A, voltage_kv=300, cs_mm=2.7,
            amplitude_contrast=0.1))
        project.reserve_jobs()
        run = local_executor("ice", "icebreaker")
        for thickness in args.thicknesses:
            name = f"ice_{thickness:.0f}.mrc"
            micrograph = project.job("motioncorr").file_for(Path(tmp) / name, ".mrc")
            write_mrc(micrograph, simulated_micrograph(thickness, args.size, args.seed), PIXEL_SIZE_A)
            ctf = run_ctf_estimation(CtfInputs(micrograph_path=str(micrograph), pixel_size_a=PIXEL_SIZE_A))
            item = {"movie": name, "watch_dir": tmp, "experiment": "spa"}
            ctx = MovieContext(item, None, IceThicknessParams(), {"motioncorr": {"micrograph": str(micrograph)}},
                               project)
            ice = icebreaker_step(ctx, run)
            rows.append((thickness, ctf.ice_ring_density, ice["median"], ctf.fit_resolution_a))
            print(f"{thickness:.0f} Å: ice-ring density {ctf.ice_ring_density:.4f}, IceBreaker median "
                  f"{ice['median']:.0f}", flush=True)
    print(f"\nRealistic preset, {args.size}² px at {PIXEL_SIZE_A} Å/px, 50 e⁻/Å², seed {args.seed}\n")
    print("| planted ice at centre (Å) | built-in ice-ring density | IceBreaker median | CTF fit resolution (Å) |")
    print("|---|---|---|---|")
    for thickness, density, median, resolution in rows:
        print(f"| {thickness:.0f} | {density:.4f} | {median:.0f} | {resolution:.1f} |")
    planted, densities, medians = (np.array(column) for column in list(zip(*rows))[:3])
    print(f"\nSpearman with planted thickness: ice-ring density {spearmanr(planted, densities)[0]:+.3f}, "
          f"IceBreaker median {spearmanr(planted, medians)[0]:+.3f}; between the two "
          f"{spearmanr(densities, medians)[0]:+.3f}")


if __name__ == "__main__":
    main()
