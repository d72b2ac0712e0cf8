"""job.star options from what a job read and ran, and the files doppio's displays read, checked with ccpem-pipeliner.

Each job is rebuilt here as doppio rebuilds it (ccpem-pipeliner's `create_job_from_proc` over the pipeline
and job.star we wrote), so the options must come out under the names the pipeliner's job classes read.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from pipeliner.job_factory import create_job_from_proc
from pipeliner.project_graph import ProjectGraph

from airflow_provider_cryoem.relion_project import CtfValues, NodeType, OpticsGroup, RelionProject
from airflow_provider_cryoem.relion_project.job_dir import read_job_options
from airflow_provider_cryoem.relion_project.job_options import options_from_command

OPTICS = OpticsGroup(movie_pixel_size_a=1.0, micrograph_pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7,
                     amplitude_contrast=0.1)
CLASS3D = shlex.join(["mpirun", "-n", "3", "relion_refine_mpi", "--i", "Select/job010/particles.star", "--ref",
                      "InitialModel/job011/initial_model.mrc", "--o", "Class3D/job012/run", "--K", "2", "--iter", "25",
                      "--particle_diameter", "128", "--sym", "C1", "--healpix_order", "2", "--ctf", "--zero_mask",
                      "--tau2_fudge", "4", "--j", "2", "--pool", "3", "--dont_combine_weights_via_disc",
                      "--firstiter_cc"])


def _job(root: Path, name: str):
    with ProjectGraph(pipeline_dir=root, read_only=True) as graph:
        return create_job_from_proc(graph.find_process(name))


def test_a_relion_refine_command_gives_the_options_it_was_built_from() -> None:
    assert options_from_command("class3d", CLASS3D) == {
        "nr_classes": 2, "nr_iter": 25, "particle_diameter": 128.0, "sym_name": "C1", "sampling": "7.5 degrees",
        "do_ctf_correction": "Yes", "do_zero_mask": "Yes", "tau_fudge": 4.0, "nr_threads": 2, "nr_pool": 3,
        "do_combine_thru_disc": "No", "ref_correct_greyscale": "No"}  # the two flags Relion adds for "No"
    assert options_from_command("class2d", "relion_refine --K 6 --iter 25")["nr_iter_em"] == 25
    assert options_from_command("class3d", "relion_image_handler --i a.mrc --o b.mrc") == {}


def test_the_pipeliner_rebuilds_a_job_from_its_inputs_and_command(tmp_path: Path, monkeypatch) -> None:
    project = RelionProject(tmp_path, "relion5", OPTICS)
    job = project.job("class3d", alias="particles_477")
    job.add_input("Select/job010/particles.star", NodeType.PARTICLES)
    job.add_input("InitialModel/job011/initial_model.mrc", NodeType.MAP)
    project.add_command(job, CLASS3D)
    mask = project.job("maskcreate", alias="refined")
    mask.add_input(f"{job.name}run_it025_class001.mrc", NodeType.MAP)
    project.add_command(mask, "relion_mask_create --i x.mrc --o m.mrc --lowpass 15 --ini_threshold 0.0123 "
                              "--extend_inimask 3 --width_soft_edge 3 --angpix 2")
    assert read_job_options(job.path)["fn_img"] == "Select/job010/particles.star"
    monkeypatch.chdir(tmp_path)
    rebuilt = _job(tmp_path, job.name)
    assert rebuilt.PROCESS_NAME == "relion.class3d"
    assert rebuilt.joboptions["fn_ref"].get_string() == "InitialModel/job011/initial_model.mrc"
    assert rebuilt.joboptions["nr_classes"].get_number() == 2
    assert rebuilt.joboptions["sampling"].get_string() == "7.5 degrees"
    rebuilt_mask = _job(tmp_path, mask.name)
    assert rebuilt_mask.joboptions["fn_in"].get_string() == f"{job.name}run_it025_class001.mrc"
    assert rebuilt_mask.joboptions["inimask_threshold"].get_number() == pytest.approx(0.0123)


def test_an_input_named_through_an_alias_link_is_the_job_folders_node(tmp_path: Path) -> None:
    project = RelionProject(tmp_path, "relion5", OPTICS)
    selection = project.job("class_selection", alias="Live_best_particles")
    (selection.path / "particles_all.star").write_text("")
    class3d = project.job("class3d", alias="particles_100")
    class3d.add_input(tmp_path / "Select/Live_best_particles/particles_all.star", NodeType.PARTICLES)
    node = f"{selection.name}particles_all.star"
    assert read_job_options(class3d.path)["fn_img"] == node
    assert (node, class3d.name) in project.read_pipeline().input_edges


def test_each_ctf_fit_leaves_the_ctffind_lines_doppio_reads(tmp_path: Path) -> None:
    project = RelionProject(tmp_path, "relion5", OPTICS)
    spectrum = project.job("ctffind").path / "Movies" / "grid1" / "mic_01.ctf"
    project.add_ctf(tmp_path / "MotionCorr/job002/Movies/grid1/mic_01.mrc",
                    CtfValues(defocus_u_a=23150.51, defocus_v_a=22762.86, astigmatism_angle_deg=45.0,
                              figure_of_merit=0.12, max_resolution_a=4.5), spectrum)
    lines = (spectrum.parent / "mic_01_ctffind4.log").read_text().splitlines()
    # ccpem-pipeliner 1.6.1 CtfFind display: defocus U = split()[-4], V = split()[-2]; azimuth and Thon rings [-2]
    values = {line.split(":")[0].strip(): line.split() for line in lines}
    assert (float(values["Estimated defocus values"][-4]), float(values["Estimated defocus values"][-2])) == (
        23150.51, 22762.86)
    assert float(values["Estimated azimuth of astigmatism"][-2]) == 45.0
    assert float(values["Thon rings with good fit up to"][-2]) == 4.5
