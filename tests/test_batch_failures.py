"""A Relion run that fails on one particle batch is recorded with its reason and skipped, and a refinement that
went nowhere gets no B-factor series; the session goes on."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from airflow_provider_cryoem.config import SessionConfig
from airflow_provider_cryoem.downstream.class3d import Class3DResult
from airflow_provider_cryoem.downstream.refine3d import Refine3DResult
from airflow_provider_cryoem.downstream.synthetic_particles import (
    SyntheticParticleSettings,
    make_particle_set,
)
from airflow_provider_cryoem.pipeline.map_stages import bfactor_series
from airflow_provider_cryoem.pipeline.particle_stages import classify_batch, select_good_classes
from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.recipes.stages import BFactorParams, Class2DParams, Refine3DParams

pytestmark = [pytest.mark.relion,
              pytest.mark.skipif(shutil.which("relion_refine") is None, reason="relion_refine is not installed")]

PARTICLES = SyntheticParticleSettings(n_particles=60, junk_fraction=0.0, box_px=40, pixel_size_a=4.0,
                                      particle_diameter_a=128.0, atom_sigma_a=3.0, snr=1.0,
                                      particles_per_micrograph=30, seed=3)


@pytest.fixture
def session_item(tmp_path: Path) -> dict:
    """The session keys a particle-batch step carries, for a session with one processing job."""
    processing = tmp_path / "processing"
    store = results_store(None, str(processing))
    session_id = store.get_or_create_session("broken", str(tmp_path / "raw"), str(processing))
    job_id = store.start_processing_job(session_id, "spa_live", "preprocessing", False, "run_1")
    return {"session_id": session_id, "session_name": "broken", "processing_job_id": job_id,
            "watch_dir": str(tmp_path / "raw"), "processing_path": str(processing),
            "relion_dir": str(processing / "relion"), "relion_dialect": "relion5", "experiment": "spa", "results_conn_id": None}


@pytest.fixture
def broken_batch(session_item: dict) -> dict:
    """A batch whose particle images were lost: Relion cannot read them."""
    relion = Path(session_item["relion_dir"])
    planted = make_particle_set(relion, PARTICLES)
    for stack in relion.rglob("*.mrcs"):
        stack.write_bytes(b"not an MRC stack")
    return {**session_item, "batch": {"star_path": planted.particles_star, "number": 3}}


def test_failed_class2d_is_recorded_with_the_relion_error_and_later_steps_skip_it(broken_batch):
    config = SessionConfig(pixel_size_a=1.0, particle_diameter_a=128.0, downscaled_box_size_px=40,
                           class2d_classes=2)
    params = Class2DParams(iterations=2, threads=1, min_particles_per_class=10)
    outcome = classify_batch(config, params, "local", broken_batch)
    first_line = "class2d batch 3 failed: relion_refine: exited with status 1"
    assert outcome["skipped"].startswith(first_line) and "rwMRC: error in reading header" in outcome["skipped"]
    assert select_good_classes(config, outcome) == outcome  # passed through, nothing selected

    retried = classify_batch(config, params, "local", broken_batch)  # Airflow retry of the same task
    assert retried["skipped"].startswith(first_line)
    summary = results_store(None, broken_batch["processing_path"]).session_summary("broken")
    (failure,) = [f for f in summary.failures if f.stage == "class2d batch 3"]  # recorded once
    assert "relion_refine" in failure.reason and "run.out" in failure.reason
    assert not summary.ended and summary.stages["class2d"].succeeded == 0


def test_a_refinement_no_finer_than_its_starting_lowpass_gets_no_bfactor_series(session_item):
    config = SessionConfig(pixel_size_a=1.0, particle_diameter_a=128.0, downscaled_box_size_px=40)
    class3d = Class3DResult(batch_number=2000, particles_per_batch=2000, classes_per_batch=1, symmetry="C1",
                            binned_pixel_size_a=4.0, job_dir="Class3D/job010", particles_star="Select/job009/p.star",
                            reference_map="InitialModel/job008/initial_model.mrc", model_star="m.star",
                            data_star="d.star", resolution_a=40.0, classes=[], best_class=1,
                            best_class_map="Class3D/job010/run_it025_class001.mrc",
                            best_class_particles_star="Select/job011/particles.star", gallery="g.png",
                            command="relion_refine ...", duration_s=1.0)
    refined = Refine3DResult(refine_job="Refine3D/job012", postprocess_job="PostProcess/job014",
                             number_of_particles=2000, symmetry="C1", refine_resolution_a=41.0, resolution_a=38.0,
                             bfactor_a2=None, map="PostProcess/job014/postprocess.mrc",
                             mask="MaskCreate/job013/mask.mrc", duration_s=1.0)
    item = {**session_item, "class3d": class3d.model_dump(), "refine3d": refined.model_dump()}
    outcome = bfactor_series(config, BFactorParams(), Refine3DParams(initial_lowpass_a=30.0), "local", item)
    assert "Refine3D/job012: the refinement ended at 38.0 Å, no finer than its 30 Å" in outcome["bfactor"]["skipped"]
    assert not (Path(session_item["relion_dir"]) / "Refine3D").exists()  # nothing was refined
