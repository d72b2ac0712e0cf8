"""The map a 3D refinement starts from, kept as an InitialModel job of the project.

Relion 3.1's only de-novo method is SGD (`initial_model_command`, cryoem-services' flags). Measured
here on 2 shared CPU cores: about 10 s per SGD iteration at a 40-px box (healpix order 1, 100-particle
subsets), and it needs tens of iterations, so minutes, not the < 60 s a live test allows. So the
tested path starts from a given map (a previous session's map, a known structure, or the simulator's
map in the tests) low-passed by `lowpass_reference` to 60 Å: only the particle's overall shape is left,
and auto-refine itself filters it again to `--ini_high`.
"""
from __future__ import annotations

from pydantic import BaseModel, Field

from ..execution import CommandSpec, run_local
from ..io import ImageFileError
from ..io.mrc import read_mrc_shape
from ..relion_project import NodeType, RelionProject


class ReferenceMap(BaseModel):
    job_dir: str = Field(description="Project-relative InitialModel job, e.g. InitialModel/job009.")
    map: str = Field(description="Project-relative low-passed map, the `--ref` of the refinement.")
    lowpass_a: float
    command: str


def initial_model_command(project_dir: str, particles_star: str, job_dir: str, mask_diameter_a: float,
                          threads: int = 1, sgd_iterations: tuple[int, int, int] = (50, 200, 50)) -> CommandSpec:
    """Relion 3.1 de-novo initial model by SGD (`--denovo_3dref --sgd`), cryoem-services' flags otherwise."""
    job = job_dir.rstrip("/") + "/"
    first, between, last = sgd_iterations
    return CommandSpec(program="relion_refine", cwd=project_dir, threads=threads, args=[
        "--i", particles_star, "--o", f"{job}run", "--denovo_3dref", "--sgd", "--sgd_ini_iter", str(first),
        "--sgd_inbetween_iter", str(between), "--sgd_fin_iter", str(last), "--particle_diameter",
        f"{mask_diameter_a:g}", "--K", "1", "--sym", "C1", "--ctf", "--flatten_solvent", "--zero_mask",
        "--oversampling", "1", "--healpix_order", "1", "--offset_range", "6", "--offset_step", "2",
        "--dont_combine_weights_via_disc", "--pool", "10", "--pad", "2", "--j", str(threads),
        "--pipeline_control", job])


def lowpass_reference(project: RelionProject, map_path: str, box_px: int, pixel_size_a: float,
                      lowpass_a: float = 60.0, alias: str = "reference",
                      timeout_s: float | None = None) -> ReferenceMap:
    """Low-pass `map_path` into `InitialModel/<alias>/initial_model.mrc` (a retry reuses the job).

    The map must already have the particles' box and pixel size (ImageFileError otherwise): a
    mismatched reference makes relion_refine fail much later with a less clear message.
    """
    source = project.absolute(map_path)
    shape = read_mrc_shape(source)
    if len(shape) != 3 or set(shape) != {box_px}:
        raise ImageFileError(source, f"reference map is {shape} voxels, the particles need a {box_px}³ box")
    job = project.job("initialmodel", alias=alias)
    output = f"{job.name}initial_model.mrc"
    spec = CommandSpec(program="relion_image_handler", cwd=str(project.root), timeout_s=timeout_s,
                       log_path=str(job.path / "run.out"), args=[
                           "--i", project.relative(source), "--o", output, "--lowpass", f"{lowpass_a:g}",
                           "--angpix", f"{pixel_size_a:g}", "--force_header_angpix", f"{pixel_size_a:g}"])
    job.add_input(project.relative(source), NodeType.MAP)
    project.add_command(job, spec.display())
    try:
        run_local(spec)
    except BaseException:
        project.finish_job(job, success=False)
        raise
    job.add_output(output, NodeType.MAP)
    project.finish_job(job, success=True)
    return ReferenceMap(job_dir=job.name.rstrip("/"), map=output, lowpass_a=lowpass_a, command=spec.display())
