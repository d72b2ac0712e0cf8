"""Real Relion 3.1 reads what the project writer wrote: extraction, 2D classification, the pipeliner.

Skipped only where Relion is not installed (CI installs the Debian `relion` package).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import starfile

from airflow_provider_cryoem.relion_project import (
    JobStatus,
    NodeType,
    RelionProject,
    read_pipeline,
)

from .test_relion_project import BOX_PX, OPTICS, PIXEL_SIZE_A, populate_project

pytestmark = [pytest.mark.relion,
              pytest.mark.skipif(shutil.which("relion_preprocess") is None, reason="Relion is not installed")]


def _relion(project_dir: Path, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """Run a Relion program in the project folder; fail the test with its output if it fails."""
    result = subprocess.run(list(args), cwd=project_dir, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0 and "ERROR" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


@pytest.mark.parametrize("dialect", ["relion3", "relion5"])
def test_relion_preprocess_extracts_one_particle_per_coordinate_we_wrote(tmp_path: Path, dialect: str) -> None:
    root = tmp_path / "project"
    session = populate_project(root, dialect, n_movies=2)
    _relion(root, "relion_preprocess", "--i", "CtfFind/job003/micrographs_ctf.star",
            "--coord_dir", "AutoPick/job004/", "--coord_suffix", "_autopick.star",
            "--part_star", "Extract/job099/particles.star", "--part_dir", "Extract/job099/",
            "--extract", "--extract_size", str(BOX_PX), "--norm", "--bg_radius", str(BOX_PX * 3 // 8),
            "--invert_contrast")
    extracted = starfile.read(root / "Extract/job099/particles.star", always_dict=True)["particles"]
    assert len(extracted) == sum(len(m.coordinates_px) for m in session) > 0
    per_micrograph = extracted.groupby("rlnMicrographName").size().to_dict()
    assert per_micrograph == {m.micrograph: len(m.coordinates_px) for m in session}
    first = session[0]
    assert extracted["rlnDefocusU"].iloc[0] == pytest.approx(first.ctf.defocus_u_a, abs=1e-3)


def test_relion_refine_classifies_our_extracted_particles_in_2d(tmp_path: Path) -> None:
    root = tmp_path / "project"
    session = populate_project(root, "relion3", n_movies=5)
    n_particles = sum(len(m.coordinates_px) for m in session)
    project = RelionProject(root, "relion3", OPTICS)
    job = project.job("class2d", alias="batch_1", new=True)
    job.add_input("Extract/job005/particles.star", NodeType.PARTICLES)
    _relion(root, "relion_refine", "--i", "Extract/job005/particles.star", "--o", f"{job.name}run",
            "--K", "2", "--iter", "2", "--particle_diameter", str(0.8 * BOX_PX * PIXEL_SIZE_A), "--ctf",
            "--tau2_fudge", "2", "--flatten_solvent", "--zero_mask", "--psi_step", "30", "--offset_range", "4",
            "--offset_step", "2", "--oversampling", "1", "--norm", "--scale", "--j", "1",
            "--dont_combine_weights_via_disc", "--pool", "20", "--pipeline_control", job.name, timeout_s=90)
    data = starfile.read(job.path / "run_it002_data.star", always_dict=True)["particles"]
    assert len(data) == n_particles >= 50
    assert set(data["rlnClassNumber"]) <= {1, 2}
    assert (job.path / "RELION_JOB_EXIT_SUCCESS").exists()
    job.add_output("run_it002_data.star", NodeType.PARTICLES)
    job.add_output("run_it002_optimiser.star", NodeType.OPTIMISER)
    project.finish_job(job, success=True)
    assert read_pipeline(root, "relion3").process(job.name).status is JobStatus.SUCCEEDED


def test_relion_pipeliner_loads_our_pipeline_updates_status_and_keeps_our_jobs(tmp_path: Path) -> None:
    root = tmp_path / "project"
    populate_project(root, "relion3", n_movies=1)
    before = read_pipeline(root, "relion3")
    (root / "CtfFind/job003/RELION_JOB_EXIT_SUCCESS").touch()  # finished, pipeline not told yet
    _relion(root, "relion_pipeliner", "--check_job_completion")
    after = read_pipeline(root, "relion3")
    assert [p.name for p in after.processes] == [p.name for p in before.processes]
    assert [p.alias for p in after.processes] == [p.alias for p in before.processes]
    assert after.process("CtfFind/job003/").status is JobStatus.SUCCEEDED
    assert after.process("MotionCorr/job002/").status is JobStatus.RUNNING
    assert {(n.name, n.type_token) for n in after.nodes} == {(n.name, n.type_token) for n in before.nodes}
    assert set(after.input_edges) == set(before.input_edges)
    assert set(after.output_edges) == set(before.output_edges)
    assert after.job_counter == before.job_counter


@pytest.mark.parametrize("job_dir, relion3_type", [("Import/job001", 0), ("MotionCorr/job002", 1),
                                                   ("CtfFind/job003", 2), ("AutoPick/job004", 4),
                                                   ("Extract/job005", 5)])
def test_relion_pipeliner_accepts_our_job_star_as_a_new_job(tmp_path: Path, job_dir: str, relion3_type: int) -> None:
    root = tmp_path / "project"
    RelionProject(root, "relion3", OPTICS).reserve_jobs()
    _relion(root, "relion_pipeliner", "--addJobFromStar", f"{job_dir}/job.star")
    added = read_pipeline(root, "relion3").process(f"{job_dir.split('/')[0]}/job006/")
    assert added is not None and added.type_token == str(relion3_type) and added.status is JobStatus.SCHEDULED
