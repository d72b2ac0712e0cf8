"""Real Relion 3.1 3D refinement, post-processing and B-factor series on particles of known orientation.

The simulator's particle (128 Å, pseudo-atoms σ = 3 Å) is projected by relion_project at known angles
into 400 noisy CTF-modulated 40-px particles (4 Å/px, SNR 1). The refinement starts from the true map
low-passed to 60 Å; the particles' own limit is measured by reconstructing at the true angles
(reachable_fsc.py). Measured on 2 shared cores: the whole module takes 70–90 s; the full set
refined to 10.7 Å against a reachable 8.9 Å, and matched the true map to 16 Å at FSC 0.5.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from airflow_provider_cryoem.downstream.initial_model import (
    ReferenceMap,
    lowpass_reference,
)
from airflow_provider_cryoem.downstream.reachable_fsc import (
    reachable_resolution,
    resolution_against_truth,
)
from airflow_provider_cryoem.downstream.refine3d import (
    BFactorSeries,
    Refine3DSettings,
    record_bfactor_series,
    record_refinement,
    run_bfactor_series,
)
from airflow_provider_cryoem.downstream.synthetic_particles import (
    SyntheticParticles,
    SyntheticParticleSettings,
    make_particle_set,
)
from airflow_provider_cryoem.io import ImageFileError, write_mrc
from airflow_provider_cryoem.relion_project import (
    OpticsGroup,
    RelionProject,
    read_pipeline,
)
from airflow_provider_cryoem.results.engine import engine_from_url
from airflow_provider_cryoem.results.store import ResultsStore
from airflow_provider_cryoem.simulate import (
    SpaSimulationSettings,
    make_structure,
    render_volume,
)

pytestmark = [pytest.mark.relion, pytest.mark.skipif(
    any(shutil.which(p) is None for p in ("mpirun", "relion_refine_mpi", "relion_project", "relion_reconstruct")),
    reason="needs mpirun and Relion 3.1 (relion_refine_mpi, relion_project, relion_reconstruct)")]

PARTICLES = SyntheticParticleSettings(n_particles=400, box_px=40, pixel_size_a=4.0, particle_diameter_a=128.0,
                                      atom_sigma_a=3.0, snr=1.0, seed=3)
OPTICS = OpticsGroup(movie_pixel_size_a=1.0, micrograph_pixel_size_a=1.0, voltage_kv=300.0, cs_mm=2.7,
                     amplitude_contrast=0.1, particle_box_px=PARTICLES.box_px,
                     particle_pixel_size_a=PARTICLES.pixel_size_a)
SETTINGS = Refine3DSettings(mask_diameter_a=1.1 * PARTICLES.particle_diameter_a,
                            particle_diameter_a=PARTICLES.particle_diameter_a, pixel_size_a=PARTICLES.pixel_size_a,
                            initial_lowpass_a=40.0, healpix_order=1, auto_local_healpix_order=3, offset_range_px=4,
                            offset_step_px=2, fast_convergence=True, max_iterations=12,
                            bfactor_low_resolution_a=20.0, timeout_s=240)


@pytest.fixture(scope="module")
def refined(tmp_path_factory) -> tuple[RelionProject, SyntheticParticles, ReferenceMap, BFactorSeries]:
    """Refinements of 1/4, 1/2 and all of the particles (the last one is the full refinement)."""
    project = RelionProject(tmp_path_factory.mktemp("refine") / "project", "relion3", OPTICS)
    planted = make_particle_set(project.root, PARTICLES)
    reference = lowpass_reference(project, planted.reference_map, PARTICLES.box_px, PARTICLES.pixel_size_a)
    series = run_bfactor_series(project, planted.particles_star, reference.map, SETTINGS,
                                fractions=(0.25, 0.5, 1.0), min_particles=50)
    return project, planted, reference, series


def _store(tmp_path: Path) -> tuple[ResultsStore, int]:
    store = ResultsStore(engine_from_url(f"sqlite:///{tmp_path / 'results.sqlite'}"))
    store.ensure_schema()
    session = store.get_or_create_session("s", "/data/s", str(tmp_path))
    return store, store.start_processing_job(session, "spa", "refine3d", False, "run1")


def test_full_refinement_approaches_the_resolution_the_true_angles_allow(refined, tmp_path: Path):
    project, planted, reference, series = refined
    result = series.refinements[-1]
    assert result.number_of_particles == PARTICLES.n_particles
    reachable = reachable_resolution(project.root, planted.truth_star, result.mask, PARTICLES.pixel_size_a, "all",
                                     bfactor_low_resolution_a=SETTINGS.bfactor_low_resolution_a)
    nyquist_a = 2 * PARTICLES.pixel_size_a
    assert nyquist_a <= reachable.resolution_a < 11.0
    # measured: 10.7 Å refined vs 8.9 Å reachable; a failed alignment stays near the 40 Å start
    assert 0.95 * reachable.resolution_a <= result.resolution_a <= 1.35 * reachable.resolution_a
    assert result.resolution_a <= 1.001 * result.refine_resolution_a  # the mask only removes noise
    assert result.bfactor_a2 is not None and -2000 < result.bfactor_a2 < -100  # σ = 3 Å atoms: B ≈ 8π²σ² ≈ 700
    # the halves agree because the map is right: it matches the true map far beyond what the start held
    truth = project.absolute(planted.reference_map)
    assert resolution_against_truth(project.absolute(f"{result.refine_job}/run_class001.mrc"), truth,
                                    PARTICLES.pixel_size_a) <= 20.0
    assert resolution_against_truth(project.absolute(reference.map), truth,
                                    PARTICLES.pixel_size_a) >= 32.0

    store, job_id = _store(tmp_path)
    row = record_refinement(store, job_id, result)
    assert record_refinement(store, job_id, result) == row  # a retry updates its row
    pipeline = read_pipeline(project.root, "relion3")
    outputs = {node for _, node in pipeline.output_edges}
    assert {result.map, result.mask, f"{result.refine_job}/run_half1_class001_unfil.mrc"} <= outputs
    for job in (result.refine_job, result.postprocess_job, str(Path(result.mask).parent)):
        assert (project.root / job / "RELION_JOB_EXIT_SUCCESS").is_file()


def test_bfactor_series_improves_with_particle_count_and_gives_a_positive_b(refined, tmp_path: Path):
    *_, series = refined
    counts = [r.number_of_particles for r in series.refinements]
    resolutions = [r.resolution_a for r in series.refinements]
    assert counts == [100, 200, 400]
    assert resolutions[-1] < resolutions[0]  # measured 20, 11.4, 10.7 Å
    # measured B = 440 Å² (R² 0.88); the planted atoms alone give ≈ 700 Å², alignment errors add to it
    assert 100 < series.fit.bfactor_a2 < 2000 and not math.isinf(series.fit.bfactor_a2)
    assert Path(series.plot).is_file()
    store, job_id = _store(tmp_path)
    rows = record_bfactor_series(store, job_id, series)
    assert len(set(rows)) == 3 and record_bfactor_series(store, job_id, series) == rows


def test_a_reference_of_the_wrong_box_is_refused_naming_the_file(tmp_path: Path):
    project = RelionProject(tmp_path, "relion3", OPTICS)
    structure = make_structure(SpaSimulationSettings(particle_diameter_a=PARTICLES.particle_diameter_a, seed=1))
    write_mrc(tmp_path / "other.mrc", render_volume(structure, 48, PARTICLES.pixel_size_a), PARTICLES.pixel_size_a)
    with pytest.raises(ImageFileError, match=r"other.mrc.*\(48, 48, 48\).*40³ box"):
        lowpass_reference(project, "other.mrc", PARTICLES.box_px, PARTICLES.pixel_size_a)
