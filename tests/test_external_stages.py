"""Recipes that choose external programs: Relion runs for real, a missing program is named with its setting."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import textwrap
from pathlib import Path, PurePath

import numpy as np
import pytest
import starfile

from airflow_provider_cryoem.pipeline.external import EXTERNAL_STEPS
from airflow_provider_cryoem.pipeline.stages import BUILTIN_RUNNERS
from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.recipes.stages import STAGES
from airflow_provider_cryoem.simulate import (
    END_MARKER_NAME,
    GAIN_REFERENCE_NAME,
    SpaSimulationSettings,
    write_spa_session,
)
from airflow_provider_cryoem.simulate.particle_labels import planted_objects

from .conftest import AIRFLOW

SETTINGS = SpaSimulationSettings(n_movies=2, image_size_px=384, n_frames=8, particle_diameter_a=80,
                                 particles_per_micrograph=8, seed=5)


def test_every_tool_a_recipe_may_choose_for_a_movie_stage_is_implemented():
    for name, definition in STAGES.items():
        if definition.scope != "movie":
            continue  # particle-batch stages have one implementation each (pipeline/particle_stages.py)
        for tool in definition.tools:
            assert (tool == "builtin" and name in BUILTIN_RUNNERS) or (name, tool) in EXTERNAL_STEPS, (name, tool)


def _run_recipe(tmp_path, airflow_env, stages_yaml: str) -> tuple[subprocess.CompletedProcess, object, object]:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "ext_live.yaml").write_text("name: ext_live\nmode: live\nstages:\n" + textwrap.indent(
        textwrap.dedent(stages_yaml), "  "))
    watch_dir = tmp_path / "session" / "raw"
    truth = write_spa_session(SETTINGS, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    conf = {"session_name": "ext", "watch_dir": str(watch_dir), "particle_diameter_a": SETTINGS.particle_diameter_a,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME)}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(tmp_path), "CRYOEM_RECIPES_DIR": str(recipes)}
    run = subprocess.run([AIRFLOW, "dags", "test", "ext_live", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True)
    return run, results_store(None, str(tmp_path / "session" / "processing")), truth


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_run_motioncorr") is None, reason="needs the Debian relion package")
def test_relion_motion_correction_and_log_picking_feed_the_builtin_stages(tmp_path, airflow_env):
    run, store, truth = _run_recipe(tmp_path, airflow_env, """
        motioncorr: {tool: relion, params: {patches_x: 1, patches_y: 1}}
        ctf: {after: [motioncorr]}
        pick: {tool: relion_autopick, after: [motioncorr]}
        extract: {after: [pick, ctf]}
        """)
    assert run.returncode == 0, run.stdout[-4000:]
    summary = store.session_summary("ext")
    assert summary.failures == []
    assert summary.stages["motion_correction"].succeeded == SETTINGS.n_movies
    assert summary.stages["particle_picking"].succeeded == SETTINGS.n_movies
    relion = tmp_path / "session" / "processing" / "relion"
    movies = {PurePath(m.movie_name).stem: m for m in truth.movies}

    def movie_of(micrograph: str):
        return movies[PurePath(micrograph).stem]

    # Motion: Relion's accumulated motion against the planted drift's path length. Measured (seed 5):
    # +1.8 % and +12.2 % (per-frame estimation jitter only adds path length).
    motion = starfile.read(relion / "MotionCorr/job002/corrected_micrographs.star", always_dict=True)["micrographs"]
    assert sorted(movie_of(name).movie_name for name in motion.rlnMicrographName) == \
        sorted(m.movie_name for m in truth.movies)
    for name, measured_a in zip(motion.rlnMicrographName, motion.rlnAccumMotionTotal):
        movie = movie_of(name)
        planted_a = np.hypot(*np.diff(np.asarray(movie.shifts_px), axis=0).T).sum() * movie.pixel_size_a
        assert measured_a == pytest.approx(planted_a, rel=0.2), name
    # CTF (built-in engine on Relion's micrographs): mean defocus, measured within 0.3 %.
    ctf = starfile.read(relion / "CtfFind/job003/micrographs_ctf.star", always_dict=True)["micrographs"]
    for name, u, v in zip(ctf.rlnMicrographName, ctf.rlnDefocusU, ctf.rlnDefocusV):
        assert (u + v) / 2 == pytest.approx(movie_of(name).defocus_mean_a, rel=0.01), name
    # Picking: extracted particles against the planted ones. Relion reads TIFF flipped along the slow
    # axis (its documented convention, shared with MotionCor2 and IMOD), the simulator and the built-in
    # engine do not, so Relion's rows run opposite to the simulator's frame 0: y_truth = ny - 1 - y.
    # Measured: all 16 planted particles found, 16 of 17 extracted particles on one, centres within
    # 17.2 px (0.22 diameter; the match radius is half a diameter).
    particles = starfile.read(relion / "Extract/job005/particles.star", always_dict=True)["particles"]
    y_truth = SETTINGS.image_size_px - 1 - particles.rlnCoordinateY.to_numpy()
    planted = planted_objects(truth, particles.rlnMicrographName, particles.rlnCoordinateX, y_truth)
    hits = [(obj, x, y) for obj, x, y in zip(planted, particles.rlnCoordinateX, y_truth) if obj is not None]
    n_planted = sum(len(m.particle_coordinates_px()) for m in truth.movies)
    assert len(hits) >= 0.8 * len(particles), f"{len(hits)} of {len(particles)} picks on a planted particle"
    assert len({(obj.x_px, obj.y_px) for obj, _, _ in hits}) >= 0.85 * n_planted
    diameter_px = SETTINGS.particle_diameter_a / SETTINGS.pixel_size_a
    assert max(np.hypot(obj.x_px - x, obj.y_px - y) for obj, x, y in hits) <= 0.3 * diameter_px


def test_missing_program_fails_naming_it_and_the_recipe_setting(tmp_path, airflow_env):
    run, _, _ = _run_recipe(tmp_path, airflow_env, """
        motioncorr: {}
        ctf: {tool: ctffind4, after: [motioncorr], retries: 0}
        pick: {after: [motioncorr]}
        extract: {after: [pick, ctf]}
        """)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "ctffind" in output and "stages.ctf.tool: ctffind4" in output


def _recorded_picks(store) -> list[dict]:
    """Each micrograph's picking row with the picks of its coordinates STAR file (micrograph stem, x, y)."""
    from sqlalchemy import select

    from airflow_provider_cryoem.results import schema

    table = schema.particle_picker
    with store.engine.connect() as connection:
        rows = connection.execute(select(table.c.number_of_particles, table.c.coordinates_full_path,
                                         table.c.summary_image_full_path, table.c.particle_picking_template,
                                         table.c.particle_diameter_a)).mappings().all()
    picks = []
    for row in rows:
        star = Path(row["coordinates_full_path"])
        table_ = starfile.read(star, always_dict=True)
        coordinates = next(iter(table_.values()))
        picks.append({**row, "micrograph": star.stem.removesuffix("_autopick"),
                      "x": coordinates["rlnCoordinateX"].to_numpy(), "y": coordinates["rlnCoordinateY"].to_numpy()})
    return picks


@pytest.mark.skipif(importlib.util.find_spec("topaz") is None,
                    reason="needs Topaz: pip install 'airflow-provider-cryoem[topaz]'")
def test_topaz_pretrained_model_picks_the_planted_particles(tmp_path, airflow_env):
    """Real Topaz (its pretrained resnet16 detector, on the CPU) as the pick stage, recorded as the built-in
    picker's picks are: a results row, a Relion coordinates STAR file and a picks image per micrograph.

    Measured against the simulator's planted particles (a pick counts when within a particle radius of one),
    at the recipe's default threshold (-3): precision 0.82-0.86, recall 1.00 (21-22 picks for 16 planted
    particles, 2 micrographs, seed 5; runs differ by a weak pick). benchmarks/bench_topaz_picking.py
    measures thresholds and conditions."""
    run, store, truth = _run_recipe(tmp_path, airflow_env, """
        motioncorr: {}
        pick: {tool: topaz, after: [motioncorr]}
        """)
    assert run.returncode == 0, run.stdout[-4000:]
    summary = store.session_summary("ext")
    assert summary.failures == []
    assert summary.stages["particle_picking"].succeeded == SETTINGS.n_movies
    recorded = _recorded_picks(store)
    assert sorted(r["micrograph"] for r in recorded) == sorted(PurePath(m.movie_name).stem for m in truth.movies)
    assert all(r["particle_picking_template"] == "resnet16" and r["particle_diameter_a"] == SETTINGS.particle_diameter_a
               for r in recorded)
    assert all(Path(r["summary_image_full_path"]).stat().st_size > 0 for r in recorded)
    assert all(r["number_of_particles"] == len(r["x"]) for r in recorded)
    relion = tmp_path / "session" / "processing" / "relion"
    (autopick,) = relion.glob("AutoPick/job*/autopick.star")
    assert len(starfile.read(autopick, always_dict=True)["coordinate_files"]) == SETTINGS.n_movies
    assert not list(relion.glob("AutoPick/job*/runs/**/preprocessed/*.mrc"))  # the downsampled copies are gone

    names = [r["micrograph"] for r in recorded for _ in r["x"]]
    xs, ys = np.concatenate([r["x"] for r in recorded]), np.concatenate([r["y"] for r in recorded])
    planted = planted_objects(truth, names, xs, ys)
    found = {(name, obj.x_px, obj.y_px) for name, obj in zip(names, planted) if obj is not None}
    n_planted = sum(len(m.particle_coordinates_px()) for m in truth.movies)
    precision, recall = sum(obj is not None for obj in planted) / len(planted), len(found) / n_planted
    # Chance: as many picks thrown at random would land within a radius of some particle with probability
    # `covered` (the share of the micrograph within a radius of one), and find a given particle with
    # probability 1 - (1 - covered / particles)^picks per micrograph.
    radius_px = SETTINGS.particle_diameter_a / SETTINGS.pixel_size_a / 2
    disc = np.pi * radius_px ** 2 / SETTINGS.image_size_px ** 2
    covered = SETTINGS.particles_per_micrograph * disc
    chance_recall = 1 - (1 - disc) ** (len(planted) / SETTINGS.n_movies)
    print(f"Topaz: {len(planted)} picks, {n_planted} planted: precision {precision:.2f}, recall {recall:.2f} "
          f"(chance: precision {covered:.2f}, recall {chance_recall:.2f})")
    assert precision > 2 * covered and recall > max(0.5, chance_recall), (precision, recall)
