"""CCP-EM doppio opens the Relion project of a session completely, and continues it while the session writes.

doppio reads projects through ccpem-pipeliner (a test dependency, used here as doppio uses it): its
ProjectGraph reads default_pipeline.star, `create_job_from_proc` rebuilds each job from its job.star, the
job's results display is what doppio shows for it, `pipeliner --metadata_report` is doppio's report of a
job and everything upstream of it (the basis of EMPIAR/OneDep depositions), and a new job is made and run by
the pipeliner on the project (here a Class3D with Relion 3.1, small and fast settings).

The project is the demo's session taken to a post-processed map (tests/_spa_map_session.py, run once for this
module and test_spa_live_3d.py), copied so that what doppio writes into it never reaches the other module.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

import mrcfile
import pytest
import starfile
from pipeliner.api.manage_project import PipelinerProject
from pipeliner.project_graph import ProjectGraph

from airflow_provider_cryoem.relion_project import CtfValues, NodeType, OpticsGroup, RelionProject, read_pipeline

from ._doppio import display_problems, processes
from ._spa_map_session import SETTINGS

# the shared session (about 6 minutes on 2 quiet cores, over 30 on a loaded machine) is set up inside the
# first test that asks for it
pytestmark = [pytest.mark.relion, pytest.mark.integration, pytest.mark.timeout(4200)]

PIPELINER = str(Path(sys.executable).parent / "pipeliner")
LATE_MICROGRAPHS = 12  # what the session writes while the pipeliner's job runs: one micrograph and job every 2 s


@pytest.fixture(scope="module")
def project(spa_map_session: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the session's Relion project (alias links kept as links) and the session's final map."""
    assert spa_map_session["run"].returncode == 0, spa_map_session["run"].stdout[-4000:]
    root = tmp_path_factory.mktemp("doppio") / "relion"
    shutil.copytree(spa_map_session["relion"], root, symlinks=True)
    summary = spa_map_session["store"].session_summary("to_map")
    final_map = Path(summary.best_map_path).relative_to(spa_map_session["relion"])
    return {"root": root, "final_postprocess": f"{final_map.parent.as_posix()}/"}


def _nothing_rejected(root: Path, job: str, reason: str) -> bool:
    """The pipeliner's montage of a class selection's rejected classes is pending when none was rejected
    (as for relion_class_ranker's own jobs): that one is right, if every ranked class was selected."""
    if f"No particles were found in file: {job}rejected_classes.star" not in reason:
        return False
    ranked = starfile.read(root / job / "rank_model.star", always_dict=True)["model_classes"]
    selected = starfile.read(root / job / "class_averages.star", always_dict=True)
    return len(ranked) == sum(len(table) for table in selected.values())


def test_every_job_of_the_session_shows_its_results_in_doppio(project, monkeypatch):
    root = project["root"]
    graph = processes(root)
    job_folders = {f"{p.parent.name}/{p.name}/" for p in root.glob("*/job[0-9][0-9][0-9]") if not p.is_symlink()}
    assert {p.name for p in graph} == job_folders
    assert {p.type.split(".")[1] for p in graph} >= {
        "import", "motioncorr", "ctffind", "autopick", "extract", "select", "class2d", "initialmodel", "class3d",
        "refine3d", "maskcreate", "postprocess"}
    assert display_problems(root, monkeypatch, accepted=partial(_nothing_rejected, root)) == {}


def test_the_metadata_report_of_the_final_map_covers_every_job_upstream(project, monkeypatch):
    root = project["root"]
    monkeypatch.chdir(root)
    run = subprocess.run([PIPELINER, "--metadata_report", project["final_postprocess"]], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (report_file,) = (root / "MetadataReports").glob("*_metadata_report.json")
    report = json.loads(report_file.read_text())
    jobs = report["Jobs metadata"]
    upstream = {"Import", "MotionCorr", "CtfFind", "AutoPick", "Extract", "Select", "Class2D", "InitialModel",
                "Class3D", "Refine3D", "MaskCreate", "PostProcess"}
    assert {name.split("/")[0] for name in jobs} == upstream
    failed = {name: metadata for name, metadata in jobs.items()
              if "metadata collection error" in metadata or "No metadata" in metadata}
    assert failed == {}
    post = jobs[project["final_postprocess"]]
    assert post["run_parameters"]["fn_mask"].startswith("MaskCreate/")
    assert 4.0 < post["results"]["FinalResolution"] < 16.0


def _copy_micrograph(root: Path, source_row: dict[str, str], name: str) -> tuple[Path, Path]:
    """A new micrograph and its CTF spectrum, copied from an existing pair (as the session would write them)."""
    micrograph = root / source_row["rlnMicrographName"]
    spectrum = root / source_row["rlnCtfImage"].removesuffix(":mrc")
    new_micrograph = micrograph.with_name(f"{name}.mrc")
    new_spectrum = spectrum.with_name(f"{name}.ctf")
    shutil.copyfile(micrograph, new_micrograph)
    shutil.copyfile(spectrum, new_spectrum)
    return new_micrograph, new_spectrum


def _keep_appending(root: Path, stop: threading.Event, written: list[str], errors: list[BaseException]) -> None:
    """The live session's writer: new micrographs with their CTF and new jobs, until `stop`."""
    try:
        ctf_rows = starfile.read(root / "CtfFind/job003/micrographs_ctf.star", always_dict=True)["micrographs"]
        source = ctf_rows.iloc[0].to_dict()
        optics = OpticsGroup(movie_pixel_size_a=SETTINGS.pixel_size_a, micrograph_pixel_size_a=SETTINGS.pixel_size_a,
                             voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1)
        writer = RelionProject(root, "relion5", optics)
        index = 0
        while not stop.is_set() and index < LATE_MICROGRAPHS:
            index += 1
            name = f"late_{index:03d}"
            micrograph, spectrum = _copy_micrograph(root, source, name)
            writer.add_motion_corrected(micrograph, 1.0, 0.5, 0.5)
            writer.add_ctf(micrograph, CtfValues(defocus_u_a=15000.0, defocus_v_a=14800.0, astigmatism_angle_deg=30.0,
                                                 figure_of_merit=0.2, max_resolution_a=6.0), spectrum)
            job = writer.job("select", alias=f"late_{index:03d}")
            job.add_input("Extract/job005/particles.star", NodeType.PARTICLES)
            shutil.copyfile(root / "Extract/job005/particles.star", job.path / "particles.star")
            job.add_output(job.path / "particles.star", NodeType.PARTICLES)
            writer.finish_job(job, success=True)
            written.append(job.name)
            stop.wait(2.0)
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def _keep_reading(root: Path, stop: threading.Event, reads: list[int], errors: list[BaseException]) -> None:
    """doppio and Relion looking at the project meanwhile: the pipeline by both readers, until `stop`."""
    try:
        while not stop.is_set():
            pipeliner_names = {p.name for p in processes(root)}
            ours = {p.name for p in read_pipeline(root, "relion5").processes}
            reads.append(len(pipeliner_names | ours))
    except BaseException as exc:
        errors.append(exc)


def test_a_class3d_made_by_the_pipeliner_runs_with_relion_while_the_session_keeps_writing(project, monkeypatch):
    root = project["root"]
    monkeypatch.chdir(root)
    pipeline = read_pipeline(root, "relion5")
    (selected,) = [node.name for node in pipeline.nodes if node.name.endswith("/particles_all.star")]
    (reference,) = [node.name for node in pipeline.nodes
                    if node.name.startswith("InitialModel/") and node.name.endswith("initial_model.mrc")]
    stop, written, reads, errors = threading.Event(), [], [], []
    threads = [threading.Thread(target=_keep_appending, args=(root, stop, written, errors)),
               threading.Thread(target=_keep_reading, args=(root, stop, reads, errors))]
    for thread in threads:
        thread.start()
    try:
        doppio = PipelinerProject()
        job = doppio.run_job({
            "_rlnJobTypeLabel": "relion.class3d", "fn_img": selected,
            "fn_ref": reference, "ref_correct_greyscale": "No", "ini_high": 40, "nr_classes": 2, "nr_iter": 2,
            "particle_diameter": SETTINGS.particle_diameter_a, "sampling": "15 degrees", "offset_range": 3,
            "offset_step": 1, "nr_mpi": 1, "nr_threads": 2, "nr_pool": 3, "use_gpu": "No", "do_queue": "No"})
        status = doppio.wait_for_job_to_finish(job, ping=1.0, timeout=600)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert errors == []
    job_dir = root / job.output_dir
    assert status == "Succeeded", (job_dir / "run.err").read_text()[-3000:] if (job_dir / "run.err").exists() else ""
    with mrcfile.open(job_dir / "run_it002_class001.mrc", permissive=True) as volume:
        assert volume.data.shape == (40, 40, 40)
    assert written and reads
    with ProjectGraph(pipeline_dir=root, read_only=False) as graph:  # doppio's refresh: finished jobs' status
        graph.check_process_completion()
    final = {p.name: p for p in processes(root)}
    assert final[job.output_dir].status == "Succeeded"
    assert all(name in final for name in written)  # neither writer lost the other's jobs
    assert {p.name for p in read_pipeline(root, "relion5").processes} == set(final)
    # what changed meanwhile still displays: the CTF job with the new micrographs, the jobs made meanwhile
    assert display_problems(root, monkeypatch, only={"CtfFind/job003/", job.output_dir, *written},
                            accepted=partial(_nothing_rejected, root)) == {}
