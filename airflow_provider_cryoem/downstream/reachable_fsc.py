"""The resolution the particles allow when every angle is known: the bound a refinement can reach.

For synthetic particles (truth.star holds the true angles) `relion_reconstruct --ctf` rebuilds
two half-maps from odd/even particles with those angles, and relion_postprocess measures their FSC
with the refinement's own mask, so the refined resolution and this bound are the same measurement
on the same particles. Files go to `<truth folder>/reachable_<name>/`, outside the Relion pipeline.
`resolution_against_truth` compares a refined map with the true map itself (FSC 0.5 by convention),
which half-map FSCs cannot: two halves can agree on a wrong structure.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from ..execution import CommandSpec, run_local
from ..io import ImageFileError, read_mrc, read_star
from ..io.star import write_star
from ..tools import relion_postprocess


class ReachableFsc(BaseModel):
    number_of_particles: int
    resolution_a: float
    bfactor_a2: float | None
    folder: str


def reachable_resolution(project_root: str | Path, truth_star: str, mask: str, pixel_size_a: float,
                         name: str, image_names: Sequence[str] | None = None,
                         bfactor_low_resolution_a: float = 10.0, timeout_s: float | None = None) -> ReachableFsc:
    """FSC 0.143 resolution of half-maps reconstructed at the true angles (paths relative to the root).

    `image_names` restricts the particles to a subset (e.g. the particles a refinement used).
    """
    root = Path(project_root)
    blocks = read_star(root / truth_star)
    particles = blocks.get("particles")
    if particles is None or "rlnAngleRot" not in particles:
        raise ImageFileError(root / truth_star, "needs a data_particles block with the true rlnAngleRot/Tilt/Psi")
    if image_names is not None:
        particles = particles[particles["rlnImageName"].isin(set(image_names))]
        if len(particles) < len(set(image_names)):
            raise ImageFileError(root / truth_star, f"{len(set(image_names)) - len(particles)} of the asked "
                                                    "particles are not in the truth file")
    folder = Path(truth_star).parent / f"reachable_{name}"
    (root / folder).mkdir(parents=True, exist_ok=True)
    halves_star = folder / "truth_halves.star"
    write_star(root / halves_star, {"optics": blocks["optics"],
                                    "particles": particles.assign(rlnRandomSubset=np.arange(len(particles)) % 2 + 1)})
    for half in (1, 2):
        run_local(CommandSpec(program="relion_reconstruct", cwd=str(root), timeout_s=timeout_s, args=[
            "--i", str(halves_star), "--o", str(folder / f"truth_half{half}_unfil.mrc"), "--ctf",
            "--subset", str(half), "--angpix", f"{pixel_size_a:g}"]))
    post = relion_postprocess.command(relion_postprocess.PostProcessInputs(
        project_dir=str(root), half_map_path=str(folder / "truth_half1_unfil.mrc"), mask_path=mask,
        job_dir=str(folder), pixel_size_a=pixel_size_a, auto_bfactor_low_resolution_a=bfactor_low_resolution_a))
    parsed = relion_postprocess.parse_stdout(run_local(post.model_copy(update={"timeout_s": timeout_s})).output)
    return ReachableFsc(number_of_particles=len(particles), resolution_a=parsed["final_resolution_a"],
                        bfactor_a2=parsed["bfactor_a2"], folder=str(folder))


def resolution_against_truth(map_path: str | Path, truth_map: str | Path, pixel_size_a: float,
                             threshold: float = 0.5) -> float:
    """Resolution (Å) where the FSC of a map with the true map first drops below `threshold`."""
    maps = [np.asarray(read_mrc(path, mmap=False), dtype=np.float64) for path in (map_path, truth_map)]
    if maps[0].shape != maps[1].shape or maps[0].ndim != 3:
        raise ImageFileError(map_path, f"map {maps[0].shape} and true map {maps[1].shape} must be the same 3D box")
    first, second = (np.fft.fftn(m) for m in maps)
    frequencies = np.meshgrid(*(np.fft.fftfreq(n) for n in maps[0].shape), indexing="ij")
    shell = np.rint(np.sqrt(sum(f**2 for f in frequencies)) * maps[0].shape[0]).astype(int).ravel()
    n_shells = maps[0].shape[0] // 2 + 1
    cross = np.bincount(shell, (first * second.conj()).real.ravel(), n_shells)[:n_shells]
    power = [np.bincount(shell, (np.abs(f) ** 2).ravel(), n_shells)[:n_shells] for f in (first, second)]
    fsc = cross / np.sqrt(power[0] * power[1] + 1e-30)
    below = np.flatnonzero(fsc[1:] < threshold)
    shell_index = below[0] if below.size else n_shells - 1  # the last shell above threshold (or Nyquist)
    return float(maps[0].shape[0] * pixel_size_a / max(shell_index, 1))
