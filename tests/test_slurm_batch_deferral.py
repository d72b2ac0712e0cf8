"""A batch stage placed on Slurm defers to the triggerer while its jobs queue and run, against the REAL local
Slurm cluster (scripts/local_slurm.sh, reached over sshd) and real Relion.

The operator is called as the task runner would: execute raises TaskDeferred, the serialised trigger is
rebuilt and run as the triggerer does, and execute_complete resumes the task; a stage of several programs
defers once per program and reads its finished jobs back without submitting them again.
"""
from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_cryoem.downstream.class3d import Class3DResult
from airflow_provider_cryoem.downstream.initial_model import lowpass_reference
from airflow_provider_cryoem.downstream.synthetic_particles import (
    SyntheticParticles,
    SyntheticParticleSettings,
    make_particle_set,
)
from airflow_provider_cryoem.hooks.slurm import SlurmHook
from airflow_provider_cryoem.operators.batch_steps import Class2DOperator, Refine3DOperator
from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.recipes.schema import SlurmPlacement
from airflow_provider_cryoem.relion_project import OpticsGroup, RelionProject

from ._slurm_jobs import POLL_S, FakeTaskInstance

pytestmark = [pytest.mark.relion,
              pytest.mark.skipif(shutil.which("relion_refine") is None, reason="relion_refine is not installed")]

REPO = Path(__file__).resolve().parents[1]
PARTICLES = SyntheticParticleSettings(n_particles=60, junk_fraction=0.0, box_px=40, pixel_size_a=4.0,
                                      particle_diameter_a=128.0, atom_sigma_a=3.0, snr=1.0,
                                      particles_per_micrograph=30, seed=3)
# Small enough for auto-refine to converge in about 20 s on 2 busy cores (60 particles of 40 px took 100 s).
REFINE_PARTICLES = PARTICLES.model_copy(update={"n_particles": 30, "box_px": 24, "pixel_size_a": 160 / 24,
                                                "particles_per_micrograph": 15})
PARAMS = {"pixel_size_a": 1.0, "particle_diameter_a": 128.0, "downscaled_box_size_px": 40, "class2d_classes": 2}
SETTINGS = {"iterations": 2, "threads": 1, "min_particles_per_class": 10}
PLACEMENT = SlurmPlacement(slurm_conn_id="cryoem_slurm", cpus=1, memory_gb=2, time_limit_min=10)


@pytest.fixture(scope="module")
def slurm() -> SlurmHook:
    """The local cluster and its Airflow connection (started once; left running if someone else started it)."""
    setup = subprocess.run(["bash", str(REPO / "scripts" / "local_slurm.sh")], check=True, capture_output=True,
                           text=True, timeout=600)
    conn = json.loads(Path("/var/lib/cryoem-slurm/airflow_conn.json").read_text())
    conn["extra"]["slurm_poll_interval_s"] = POLL_S  # the worker's wait and the trigger's poll alike
    os.environ["AIRFLOW_CONN_CRYOEM_SLURM"] = json.dumps(conn)
    yield SlurmHook()
    if "starting slurmctld" in setup.stderr:
        subprocess.run(["bash", str(REPO / "scripts" / "local_slurm.sh"), "stop"], check=True, timeout=60)


class TaskInstance(FakeTaskInstance):
    """XCom of one try of one mapped task instance, as run_deferring reads and writes it."""

    try_number = 1
    map_index = 0

    def xcom_pull(self, task_ids: str, key: str, map_indexes: int | None = None) -> object:
        assert task_ids == self.task_id and map_indexes == self.map_index
        return self.xcom.get(key)


def _batch(root: Path, name: str, particles: SyntheticParticleSettings = PARTICLES
           ) -> tuple[dict[str, Any], SyntheticParticles]:
    """One particle batch of a fresh session (the keys a batch step's item carries), and what was planted."""
    processing = root / name / "processing"
    store = results_store(None, str(processing))
    session_id = store.get_or_create_session(name, str(root / name / "raw"), str(processing))
    job_id = store.start_processing_job(session_id, "spa_live", "preprocessing", False, f"run_{name}")
    item = {"session_id": session_id, "session_name": name, "processing_job_id": job_id,
            "watch_dir": str(root / name / "raw"), "processing_path": str(processing),
            "relion_dir": str(processing / "relion"), "relion_dialect": "relion5", "experiment": "spa",
            "results_conn_id": None}
    planted = make_particle_set(processing / "relion", particles)
    return {**item, "batch": {"star_path": planted.particles_star, "number": 1}}, planted


def _context(task_id: str) -> dict[str, Any]:
    return {"ti": TaskInstance(task_id), "params": PARAMS, "run_id": "manual__deferral"}


def _fire(deferred: TaskDeferred) -> dict[str, Any]:
    """Rebuild the trigger from its serialised form and run it to its event, as the triggerer does."""
    classpath, kwargs = deferred.trigger.serialize()
    module_name, class_name = classpath.rsplit(".", 1)
    trigger = getattr(importlib.import_module(module_name), class_name)(**kwargs)

    async def first_event():
        async for event in trigger.run():
            return event

    return asyncio.run(asyncio.wait_for(first_event(), timeout=120)).payload


def _run_deferred(operator: Any, context: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Execute, then resume after each trigger event until the task returns: (result, times deferred). While
    deferred, no Relion job of the project is marked failed (it is waiting, not failed)."""
    relion_dir = Path(operator.item["relion_dir"])
    deferrals = 0
    call = lambda: operator.execute(context)  # noqa: E731
    while True:
        try:
            return call(), deferrals
        except TaskDeferred as deferred:
            deferrals += 1
            assert deferred.method_name == "execute_complete"
            assert not list(relion_dir.rglob("RELION_JOB_EXIT_FAILURE"))
            event = _fire(deferred)
            assert event["status"] == "success", event
            call = lambda event=event: operator.execute_complete(context, event)  # noqa: E731


def _submissions(hook: SlurmHook, name: str) -> list[str]:
    """Every job the cluster knows of this name, with its state (queued, running or ended)."""
    return hook.run_remote(f"squeue -h -t all --name={name} -o '%i %T'")[1].split()


def _class_rows(result: dict[str, Any]) -> list[tuple[int, int]]:
    return [(row["class_number"], row["particles_per_class"]) for row in result["class2d"]["classes"]]


def test_class2d_on_slurm_defers_then_records_the_results_of_waiting_in_the_worker(slurm, tmp_path):
    started_s = time.monotonic()
    waited = Class2DOperator(task_id="class2d", tool="relion", settings=SETTINGS, runs_on=PLACEMENT,
                             deferrable=False, item=_batch(tmp_path, "waited")[0]).execute(_context("class2d"))
    waited_s = time.monotonic() - started_s

    item, _ = _batch(tmp_path, "deferred")
    operator = Class2DOperator(task_id="class2d", tool="relion", settings=SETTINGS, runs_on=PLACEMENT, item=item)
    context = _context("class2d")
    result, deferrals = _run_deferred(operator, context)
    assert deferrals == 1 and "skipped" not in result and "skipped" not in waited
    # the same classification as waiting in the worker: same classes, same particles in each
    assert _class_rows(result) == _class_rows(waited) and len(_class_rows(result)) == 2
    assert result["class2d"]["particles_per_batch"] == PARTICLES.n_particles
    summary = results_store(None, item["processing_path"]).session_summary("deferred")
    assert summary.failures == [] and summary.stages["class2d"].succeeded == 1
    jobs = context["ti"].xcom["slurm_wait_try1"]["jobs"]  # what the try kept while it was deferred
    assert len(jobs) == 1
    for name, job_id in jobs.items():  # submitted once, read back by its id after the trigger fired
        assert _submissions(slurm, name) == [str(job_id), "COMPLETED"]
    job_dir = Path(item["relion_dir"]) / result["class2d"]["job_dir"]
    assert (job_dir / "RELION_JOB_EXIT_SUCCESS").exists() and not (job_dir / "RELION_JOB_EXIT_FAILURE").exists()
    print(f"class2d on Slurm: waited in the worker {waited_s:.1f} s; deferred once, same classes")


def test_a_killed_deferred_batch_stage_cancels_its_slurm_job(slurm, tmp_path):
    operator = Class2DOperator(task_id="class2d", tool="relion", settings=SETTINGS, item=_batch(tmp_path, "killed")[0],
                               runs_on=PLACEMENT)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(_context("class2d"))
    trigger = deferred.value.trigger
    asyncio.run(trigger.on_kill())  # what the triggerer does when the user kills the deferred task
    job = slurm.job(trigger.job_id, "killed")
    assert slurm.wait(job, POLL_S, timeout_s=30).state == "CANCELLED"


def test_refinement_on_slurm_defers_once_per_program_and_never_resubmits_a_finished_one(slurm, tmp_path):
    """Refine3D is three programs (relion_refine_mpi, relion_mask_create, relion_postprocess): the task defers on
    each unfinished one in turn and, each time it resumes, reads the earlier ones back by job id instead of
    submitting them."""
    item, planted = _batch(tmp_path, "refined", REFINE_PARTICLES)
    relion = Path(item["relion_dir"])
    project = RelionProject(relion, "relion5", OpticsGroup(
        movie_pixel_size_a=1.0, micrograph_pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1,
        particle_box_px=REFINE_PARTICLES.box_px, particle_pixel_size_a=REFINE_PARTICLES.pixel_size_a))
    reference = lowpass_reference(project, planted.reference_map, REFINE_PARTICLES.box_px,
                                  REFINE_PARTICLES.pixel_size_a)
    n = REFINE_PARTICLES.n_particles
    item["class3d"] = Class3DResult(
        batch_number=n, particles_per_batch=n, classes_per_batch=1, symmetry="C1",
        binned_pixel_size_a=REFINE_PARTICLES.pixel_size_a, job_dir="Class3D/job099",
        particles_star=planted.particles_star, reference_map=reference.map, model_star="m.star", data_star="d.star",
        resolution_a=40.0, classes=[], best_class=1, best_class_map=reference.map,
        best_class_particles_star=planted.particles_star, gallery="g.png", command="relion_refine ...",
        duration_s=1.0).model_dump()
    operator = Refine3DOperator(task_id="refine3d", tool="relion", item=item, runs_on=PLACEMENT, settings=dict(
        healpix_order=0, auto_local_healpix_order=2, offset_range_px=2, offset_step_px=2, initial_lowpass_a=40,
        fast_convergence=True, max_iterations=12, threads=1, bfactor_low_resolution_a=20))
    context = _context("refine3d")
    result, deferrals = _run_deferred(operator, context)
    assert "skipped" not in result, result.get("skipped")
    jobs = context["ti"].xcom["slurm_wait_try1"]["jobs"]
    # three programs, each waited for in the triggerer unless it had already ended when first checked (the mask
    # and post-processing, a second's work each, sometimes have); the resumed task replays the ones before,
    # never submitting them again
    assert len(jobs) == 3 and 1 <= deferrals <= 3
    for name, job_id in jobs.items():
        assert _submissions(slurm, name) == [str(job_id), "COMPLETED"], name
    refined = result["refine3d"]
    assert refined["number_of_particles"] == n and refined["resolution_a"] > 0
    assert (relion / refined["map"]).is_file() and (relion / refined["mask"]).is_file()
    for job in (refined["refine_job"], refined["postprocess_job"]):
        assert (relion / job / "RELION_JOB_EXIT_SUCCESS").exists(), job
    summary = results_store(None, item["processing_path"]).session_summary("refined")
    assert summary.failures == []
