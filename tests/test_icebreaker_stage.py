"""The IceBreaker ice-thickness stage (`ice`, tool `icebreaker`): real IceBreaker through a recipe, its rows
in relative_ice_thickness and the Relion project, and its readings against the simulator's planted ice."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path, PurePath

import mrcfile
import numpy as np
import pytest
import starfile
from scipy.stats import spearmanr
from sqlalchemy import select

from airflow_provider_cryoem.pipeline.external import (
    ToolChoiceError,
    icebreaker_program_dir,
    icebreaker_step,
    local_executor,
)
from airflow_provider_cryoem.pipeline.stages import MovieContext
from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.recipes.schema import Recipe
from airflow_provider_cryoem.recipes.stages import IceThicknessParams
from airflow_provider_cryoem.relion_project import OpticsGroup, RelionProject, icebreaker_jobs
from airflow_provider_cryoem.relion_project.pipeline import read_pipeline
from airflow_provider_cryoem.results import schema
from airflow_provider_cryoem.simulate import (
    END_MARKER_NAME,
    GAIN_REFERENCE_NAME,
    SpaSimulationSettings,
    write_spa_session,
)
from airflow_provider_cryoem.simulate.specimen import ICE_INELASTIC_MFP_A

from .conftest import AIRFLOW

needs_icebreaker = pytest.mark.skipif(shutil.which("ib_job") is None and icebreaker_program_dir(None) is None,
                                      reason="needs IceBreaker: pip install 'airflow-provider-cryoem[icebreaker]'")

# Four holes whose ice differs (600 ± 450 Å at their centres, 100 Å more from one edge to the other, in a
# direction drawn per micrograph); 2 Å pixels, 8 frames of 5 e⁻/Å².
SETTINGS = SpaSimulationSettings(n_movies=4, image_size_px=384, n_frames=8, pixel_size_a=2.0, dose_per_frame_e_a2=5.0,
                                 particle_diameter_a=128, particles_per_micrograph=10, seed=5, ice_thickness_a=600,
                                 ice_thickness_spread_a=450)
RECIPE = """\
name: ice_live
mode: live
stages:
  motioncorr: {tool: builtin, params: {patches_x: 1, patches_y: 1}}
  ice: {tool: icebreaker, after: [motioncorr], retries: 0}
"""


def _thickness_map_a(movie, settings: SpaSimulationSettings) -> np.ndarray:
    """The planted ice thickness at each pixel of frame 0 (simulate/specimen.py's gradient)."""
    size = settings.image_size_px
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    direction = np.deg2rad(movie.ice_gradient_direction_deg)
    along = (np.cos(direction) * (xx - 0.5 * size) + np.sin(direction) * (yy - 0.5 * size)) / size
    return movie.ice_thickness_centre_a + settings.ice_gradient_a * along


@needs_icebreaker
def test_icebreaker_stage_ranks_micrographs_by_their_planted_ice(tmp_path, airflow_env):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "ice_live.yaml").write_text(RECIPE)
    watch_dir = tmp_path / "session" / "raw"
    truth = write_spa_session(SETTINGS, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    conf = {"session_name": "ice", "watch_dir": str(watch_dir), "particle_diameter_a": SETTINGS.particle_diameter_a,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME)}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(tmp_path), "CRYOEM_RECIPES_DIR": str(recipes)}
    run = subprocess.run([AIRFLOW, "dags", "test", "ice_live", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    store = results_store(None, str(tmp_path / "session" / "processing"))
    summary = store.session_summary("ice")
    assert summary.failures == []
    assert summary.stages["ice_thickness"].succeeded == SETTINGS.n_movies
    table, movie = schema.relative_ice_thickness, schema.movie
    with store.engine.connect() as connection:
        rows = connection.execute(select(table, movie.c.movie_full_path).join(movie)).all()
    assert len(rows) == SETTINGS.n_movies  # one row per movie
    by_movie = {PurePath(row.movie_full_path).name: row for row in rows}
    planted = {m.movie_name: m for m in truth.movies}
    assert set(by_movie) == set(planted)
    for row in rows:
        assert 0 < row.minimum <= row.q1 <= row.median <= row.q3 <= row.maximum

    # Thicker ice lets fewer electrons through: IceBreaker's median ranks the holes in the opposite order of
    # their planted thickness. Measured (seed 5: 417, 781, 791, 969 Å): Spearman -1.0, and the medians
    # read back through the simulator's exp(-t / 300 nm) and dose give the planted thickness within 10 Å.
    names = sorted(planted)
    thickness = [planted[name].ice_thickness_centre_a for name in names]
    medians = [by_movie[name].median for name in names]
    assert spearmanr(thickness, medians)[0] == pytest.approx(-1.0)
    dose_px = SETTINGS.n_frames * SETTINGS.dose_per_frame_e_a2 * SETTINGS.pixel_size_a**2
    for name, median in zip(names, medians):
        read_a = -ICE_INELASTIC_MFP_A * np.log(median / 10_000 / dose_px)
        assert read_a == pytest.approx(planted[name].ice_thickness_centre_a, abs=40), name

    # The Relion project as cryoem-services leaves it: IceBreaker/job006 grouping (job.star, its micrographs
    # listed with their motion), IceBreaker/job007 summary (five_figs_test.csv), both Succeeded at the end.
    relion = tmp_path / "session" / "processing" / "relion"
    grouped = starfile.read(relion / "IceBreaker/job006/grouped_micrographs.star", always_dict=True)["micrographs"]
    assert len(grouped) == SETTINGS.n_movies
    corrected = starfile.read(relion / "MotionCorr/job002/corrected_micrographs.star", always_dict=True)["micrographs"]
    motion = dict(zip(corrected.rlnMicrographName, corrected.rlnAccumMotionTotal))
    for name, total in zip(grouped.rlnMicrographName, grouped.rlnAccumMotionTotal):
        assert name.startswith("IceBreaker/job006/Movies/") and name.endswith("_fractions_grouped.mrc")
        assert (relion / name).is_file()
        assert total == pytest.approx(motion[name.replace("IceBreaker/job006", "MotionCorr/job002")
                                            .replace("_grouped.mrc", ".mrc")])
    assert sorted((relion / "IceBreaker/job006/done_mics.txt").read_text().split()) == \
        sorted(PurePath(name).with_suffix(".mrc").name for name in planted)
    assert "icebreaker.micrograph_analysis.micrographs" in (relion / "IceBreaker/job006/job.star").read_text()
    assert "icebreaker.micrograph_analysis.summary" in (relion / "IceBreaker/job007/job.star").read_text()
    five = (relion / "IceBreaker/job007/five_figs_test.csv").read_text().splitlines()
    assert five[0] == "path,min,q1,q2=median,q3,max" and len(five) == 1 + SETTINGS.n_movies
    csv_medians = {line.split(",")[0]: int(line.split(",")[3]) for line in five[1:]}
    assert sorted(csv_medians.values()) == sorted(int(m) for m in medians)
    assert set(csv_medians) == set(grouped.rlnMicrographName)
    pipeline = read_pipeline(relion, "relion5")
    for job in ("IceBreaker/job006/", "IceBreaker/job007/"):
        assert pipeline.process(job).status.name == "SUCCEEDED", job
    assert ("MotionCorr/job002/corrected_micrographs.star", "IceBreaker/job006/") in pipeline.input_edges
    assert ("IceBreaker/job006/grouped_micrographs.star", "IceBreaker/job007/") in pipeline.input_edges

    # Within a micrograph: the grouped image (16 regions of like intensity) follows the planted gradient.
    # Measured per-pixel Spearman against the thickness map: -0.67 to -0.74 (100 Å over the image).
    for name in names:
        image = mrcfile.read(relion / f"IceBreaker/job006/Movies/{PurePath(name).stem}_grouped.mrc")
        step = 6
        rho = spearmanr(_thickness_map_a(planted[name], SETTINGS)[::step, ::step].ravel(),
                        image[::step, ::step].ravel())[0]
        assert rho < -0.5, (name, rho)


def _context(tmp_path: Path, params: IceThicknessParams) -> MovieContext:
    project = RelionProject(tmp_path / "relion", optics=OpticsGroup(
        movie_pixel_size_a=1.0, micrograph_pixel_size_a=1.0, voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.1))
    project.reserve_jobs()
    micrograph = project.job("motioncorr").file_for(tmp_path / "raw" / "m1.tiff", ".mrc")
    micrograph.parent.mkdir(parents=True)
    mrcfile.write(micrograph, np.full((64, 64), 10.0, dtype=np.float32))
    item = {"movie": "m1.tiff", "watch_dir": str(tmp_path / "raw"), "experiment": "spa"}
    return MovieContext(item, None, params, {"motioncorr": {"micrograph": str(micrograph)}}, project)


def test_missing_icebreaker_names_the_recipe_setting_and_the_extra(tmp_path):
    ctx = _context(tmp_path, IceThicknessParams(program_dir=str(tmp_path / "nowhere")))
    with pytest.raises(ToolChoiceError) as raised:
        icebreaker_step(ctx, local_executor("ice", "icebreaker"))
    message = str(raised.value)
    assert "ib_job" in message and "stages.ice.tool: icebreaker" in message
    assert "airflow-provider-cryoem[icebreaker]" in message


def test_ice_rows_of_the_relion_project_are_replaced_on_retry(tmp_path):
    ctx = _context(tmp_path, IceThicknessParams())
    project = ctx.project
    project.reserve_jobs(icebreaker_jobs(enhance_contrast=True))
    mic = ctx.upstream["motioncorr"]["micrograph"]
    assert [project.job(kind).name for kind in icebreaker_jobs(True)] == \
        ["IceBreaker/job006/", "IceBreaker/job007/", "IceBreaker/job008/"]
    grouped = project.job("icebreaker_micrographs").path / "Movies" / "m1_grouped.mrc"
    figures = {"minimum": 1.0, "q1": 2.0, "median": 3.0, "q3": 4.0, "maximum": 5.0}
    for attempt in range(2):  # a retried task writes the same rows again
        project.add_icebreaker_micrograph("icebreaker_micrographs", mic, grouped, 3.0 + attempt, 1.0, 2.0)
        csv = project.add_ice_thickness(grouped, {**figures, "median": 3.0 + attempt})
    rows = starfile.read(project.job("icebreaker_micrographs").path / "grouped_micrographs.star",
                         always_dict=True)["micrographs"]
    assert rows.rlnMicrographName.tolist() == ["IceBreaker/job006/Movies/m1_grouped.mrc"]
    assert rows.rlnAccumMotionTotal.tolist() == [4.0]
    assert csv.read_text().splitlines() == ["path,min,q1,q2=median,q3,max",
                                            "IceBreaker/job006/Movies/m1_grouped.mrc,1,2,4,4,5"]
    assert (project.job("icebreaker_micrographs").path / "done_mics.txt").read_text() == "m1.mrc\n"


def test_a_recipe_must_choose_icebreaker_for_the_ice_stage():
    with pytest.raises(ValueError, match=r"stages.ice.tool: unknown tool 'builtin'.*icebreaker"):
        Recipe.model_validate({"name": "x", "stages": {"motioncorr": {}, "ice": {"after": ["motioncorr"]}}})
    with pytest.raises(ValueError, match="stages.ice.after: stage 'ice' needs the results of 'motioncorr'"):
        Recipe.model_validate({"name": "x", "stages": {"motioncorr": {}, "ice": {"tool": "icebreaker"}}})
