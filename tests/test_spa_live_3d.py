"""A simulated live session from movies to a post-processed map and a B-factor, through spa_live.

The demo recipe (recipes/demo: spa_live with small 2D/3D sampling) runs under `airflow dags test` on a
finished simulated session: 8 movies of 2 Å pixels and 40 e⁻/Å² (8 frames), about 60 picks each, 15% of the
planted objects junk aggregates. Particles are extracted into 40-px boxes, classified in 2D, selected by our scorer,
and the selected ones go through a de-novo initial model (Relion SGD), Class3D, re-extraction of the best
class at the micrographs' 2 Å (78-px boxes, recentred), auto-refine, mask, post-processing and a B-factor series. Measured on 2 cores: see the closing numbers in BENCHMARKS.md.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import starfile
from sqlalchemy import func, select

from airflow_provider_cryoem.engines.bfactor import subset_sizes
from airflow_provider_cryoem.recipes.schema import load_recipe
from airflow_provider_cryoem.relion_project import read_pipeline
from airflow_provider_cryoem.results import schema
from airflow_provider_cryoem.simulate.particle_labels import (
    PARTICLE,
    label_particles,
    selection_measure,
)

from ._spa_map_session import SETTINGS
from .conftest import REPO

pytestmark = [pytest.mark.relion, pytest.mark.integration]


@pytest.fixture(scope="module")
def session(spa_map_session):
    """The demo's session, run once for this module and tests/test_doppio_project.py."""
    return spa_map_session


def test_session_ends_with_a_post_processed_map_and_a_bfactor(session):
    assert session["run"].returncode == 0, session["run"].stdout[-4000:]
    summary = session["store"].session_summary("to_map")
    assert summary.ended
    for stage in ("class2d", "class3d", "refinement"):
        assert summary.stages[stage].succeeded >= 1, stage
    # one point per subset of the refined class the demo recipe asks for (1/4, 1/2 and all, each of at least
    # 50 particles). How many particles the best 3D class holds varies from run to run (250 and 171 seen), so
    # the quarter may fall short
    params = load_recipe(REPO / "recipes" / "demo" / "spa_live.yaml").stages["bfactor"].params
    with session["store"].engine.connect() as connection:
        refined = connection.execute(select(func.max(schema.refinement.c.number_of_particles))).scalar_one()
    subsets = subset_sizes(refined, params["fractions"], params["min_particles"])
    assert summary.stages["bfactor"].succeeded == len(subsets) >= 2
    # refined re-extracted at 2 Å (Nyquist 4 Å); a failed de-novo model would stay near its 35-40 Å start
    assert 4.0 <= summary.best_resolution_a < 16.0
    assert Path(summary.best_map_path).is_file() and summary.best_map_path.endswith("postprocess.mrc")
    assert summary.bfactor_a2 is not None and 0 < summary.bfactor_a2 < 5000


def test_class_selection_keeps_the_real_particles_and_drops_most_junk(session):
    relion = session["relion"]
    extracted = starfile.read(relion / "Extract/job005/particles.star", always_dict=True)["particles"]
    selected = starfile.read(relion / "Select/Live_best_particles/particles_all.star", always_dict=True)["particles"]
    labels = label_particles(session["truth"], extracted.rlnMicrographName, extracted.rlnCoordinateX,
                             extracted.rlnCoordinateY)
    kept = label_particles(session["truth"], selected.rlnMicrographName, selected.rlnCoordinateX,
                           selected.rlnCoordinateY)
    measure = selection_measure(labels, kept)
    share = labels.count(PARTICLE) / len(labels)
    # the session must hold junk to measure its removal: at 40 e⁻/Å² the picker leaves no false picks and
    # 25 of the 489 extracted particles are aggregates (share 0.95; at 8 e⁻/Å² there were 71, share 0.86);
    # they form a class of their own that the scorer must reject although it is compact and centred (issue 19)
    assert len(labels) - labels.count(PARTICLE) >= 20
    assert measure.precision > share + 0.5 * (1 - share)  # at least half the junk removed
    assert measure.recall >= 0.9


def test_3d_jobs_are_in_the_relion_project_and_the_results_tables(session):
    relion = session["relion"]
    pipeline = read_pipeline(relion, "relion5")
    for folder in ("InitialModel", "Class3D", "Refine3D", "MaskCreate", "PostProcess"):
        jobs = [p for p in (relion / folder).glob("job*") if p.is_dir()]
        assert jobs, folder
        assert all((job / "RELION_JOB_EXIT_SUCCESS").is_file() for job in jobs), folder
    three_d = [p for p in pipeline.processes if p.name.split("/")[0] in ("Class3D", "Refine3D", "PostProcess")]
    assert len(three_d) >= 5 and all(p.status.name == "SUCCEEDED" for p in three_d)
    with session["store"].engine.connect() as connection:
        groups = connection.execute(select(schema.particle_classification_group)
                                    .where(schema.particle_classification_group.c.type == "3D")).all()
        (group,) = groups
        classes = connection.execute(select(schema.particle_classification).where(
            schema.particle_classification.c.particle_classification_group_id == group.particle_classification_group_id
        )).all()
        assert [c.selected for c in classes].count(True) == 1
        assert all(Path(c.class_image_full_path).is_file() for c in classes)
        (model,) = connection.execute(select(schema.cryoem_initial_model)).all()
        assert model.particle_classification_group_id == group.particle_classification_group_id
        assert model.number_of_particles == group.number_of_particles_per_batch
        (refinement,) = connection.execute(select(schema.refinement)).all()
        best = next(c for c in classes if c.selected)
        assert refinement.class_number == best.class_number
        assert refinement.number_of_particles == best.particles_per_class
        assert refinement.b_factor_a2 is not None and math.isfinite(refinement.b_factor_a2)


def test_the_best_class_is_re_extracted_at_full_scale_and_refined(session):
    relion = session["relion"]
    reextracted = [p for p in (relion / "Extract").glob("job*") if p.is_dir() and p.name != "job005"]
    (job,) = reextracted
    assert (job / "RELION_JOB_EXIT_SUCCESS").is_file()
    particles = starfile.read(job / "particles.star", always_dict=True)
    assert float(particles["optics"].rlnImagePixelSize.iloc[0]) == SETTINGS.pixel_size_a  # 2 Å, not 3.9
    assert int(particles["optics"].rlnImageSize.iloc[0]) == 78
    origins = particles["particles"][["rlnOriginXAngst", "rlnOriginYAngst"]].abs()
    assert (origins <= SETTINGS.pixel_size_a / 2 + 1e-6).all().all()  # recentred: sub-pixel rests only
    pipeline = read_pipeline(relion, "relion5")
    relative = job.relative_to(relion).as_posix()
    readers = {process for node, process in pipeline.input_edges if node == f"{relative}/particles.star"}
    refinements = {p for p in readers if p.startswith("Refine3D/")}
    # the refinement and B-factor refinements, and the Select job that cuts the B-factor subsets from them
    assert refinements and all(p.startswith(("Refine3D/", "Select/")) for p in readers), readers
    assert any(node.startswith(f"{relative}/refinement_reference_class") for node, process in pipeline.input_edges
               if process in refinements)
    with session["store"].engine.connect() as connection:
        (refinement,) = connection.execute(select(schema.refinement)).all()
        points = connection.execute(select(schema.bfactor_fit)).all()
    assert refinement.pixel_size_a == SETTINGS.pixel_size_a
    assert refinement.number_of_particles == len(particles["particles"])
    assert points and all(p.pixel_size_a == SETTINGS.pixel_size_a for p in points)
