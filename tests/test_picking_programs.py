"""Topaz and crYOLO as the pick stage's programs: command lines where they run (this worker, Slurm), and the
picks they write reaching the results store and the Relion project as the built-in picker's do.

crYOLO cannot be installed here (it needs Python < 3.9): tests/fake_cryolo.py stands in for
cryolo_predict.py. Real Topaz runs in tests/test_external_stages.py (under `airflow dags test`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path, PurePath

import numpy as np
import pytest
import starfile

from airflow_provider_cryoem.config import parse_session_config
from airflow_provider_cryoem.execution import CommandSpec
from airflow_provider_cryoem.operators.movie_steps import ParticlePickingOperator
from airflow_provider_cryoem.operators.step import StepConfigurationError
from airflow_provider_cryoem.pipeline import movie_batch
from airflow_provider_cryoem.pipeline.external import ToolChoiceError, slurm_job_item, topaz_pick_step
from airflow_provider_cryoem.pipeline.session import open_session, plan_batches
from airflow_provider_cryoem.pipeline.stages import MovieContext
from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.recipes.schema import load_recipe
from airflow_provider_cryoem.recipes.stages import MotionCorrectionParams, PickingParams
from airflow_provider_cryoem.simulate import GAIN_REFERENCE_NAME, SpaSimulationSettings, write_spa_session
from airflow_provider_cryoem.tools import topaz

from . import fake_cryolo

FIXTURES = Path(__file__).parent / "fixtures" / "tools"
WEIGHTS = "/models/gmodel_phosnet_202005_N63_c17.h5"
SETTINGS = SpaSimulationSettings(n_movies=2, image_size_px=256, n_frames=6, particle_diameter_a=80,
                                 particles_per_micrograph=4, seed=4)


@pytest.fixture
def motion_corrected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two simulated movies opened as one micro-batch and motion-corrected: (items, config, upstream, truth)."""
    root = tmp_path / "data"
    monkeypatch.setenv("CRYOEM_DATA_ROOTS", str(root))
    monkeypatch.delenv("CRYOEM_RESULTS_CONN_ID", raising=False)
    watch = root / "visit" / "raw"
    truth = write_spa_session(SETTINGS, watch)
    conf = {"watch_dir": str(watch), "pixel_size_a": SETTINGS.pixel_size_a,
            "particle_diameter_a": SETTINGS.particle_diameter_a,
            "gain_reference_path": str(watch / GAIN_REFERENCE_NAME)}
    opened = open_session(conf, "spa_live", "run_1", reprocess=False, logical_date=None, sessions_root=None)
    [items] = plan_batches(opened, {"movies": [m.movie_name for m in truth.movies]}, max_per_task=10,
                           parallel_tasks=1)
    config = parse_session_config(conf)
    motion = movie_batch.process_batch("motioncorr", "builtin", "local", items, config,
                                       MotionCorrectionParams(patches_x=1, patches_y=1), {}, "run_1")
    assert [o["status"] for o in motion] == ["ok", "ok"]
    return items, config, {"motioncorr": {o["movie"]: o for o in motion}}, truth


def test_cryolo_picks_reach_the_results_and_the_relion_project_as_box_centres(motion_corrected, tmp_path,
                                                                               monkeypatch):
    """The stand-in checks the command line and writes a CBOX file in the fixture's layout with boxes centred
    on the planted particles, and one below the threshold: the recorded picks are exactly those centres."""
    items, config, upstream, truth = motion_corrected
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "cryolo_predict.py"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(fake_cryolo.__file__)} \"$@\"\n")
    script.chmod(0o755)
    planted = {PurePath(m.movie_name).stem: m.particle_coordinates_px() for m in truth.movies}
    (tmp_path / "planted.json").write_text(json.dumps(planted))
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("CRYOEM_FAKE_CRYOLO_PICKS", str(tmp_path / "planted.json"))

    params = PickingParams(cryolo={"weights_path": WEIGHTS, "threshold": 0.3})
    outcomes = movie_batch.process_batch("pick", "cryolo", "local", items, config, params, upstream, "run_1")
    assert [o["status"] for o in outcomes] == ["ok", "ok"], outcomes

    relion = Path(items[0]["relion_dir"])
    listed = starfile.read(next(relion.glob("AutoPick/job*/autopick.star")), always_dict=True)["coordinate_files"]
    assert len(listed) == SETTINGS.n_movies
    for outcome in outcomes:
        result = outcome["result"]
        stem = PurePath(outcome["movie"]).stem
        picks = starfile.read(result["coordinates_star"])
        assert np.column_stack([picks["rlnCoordinateX"], picks["rlnCoordinateY"]]) == \
            pytest.approx(np.asarray(planted[stem]), abs=0.06)  # centres, most confident first; 0.05 dropped
        assert result["particle_count"] == len(planted[stem])
        assert Path(result["summary_image"]).stat().st_size > 0
        assert result["picking_template"] == WEIGHTS
        config_file = Path(result["cbox"]).parent.parent / "cryolo_config.json"
        diameter_px = round(SETTINGS.particle_diameter_a / SETTINGS.pixel_size_a)
        assert json.loads(config_file.read_text())["model"]["anchors"] == [diameter_px, diameter_px]
    summary = results_store(None, items[0]["processing_path"]).session_summary(items[0]["session_id"])
    assert summary.stages["particle_picking"].succeeded == SETTINGS.n_movies


def test_cryolo_needs_its_weights_named_when_the_recipe_or_the_operator_is_built(tmp_path):
    recipe = tmp_path / "cryolo_live.yaml"
    recipe.write_text("name: cryolo_live\nstages:\n  motioncorr: {}\n  pick: {tool: cryolo, after: [motioncorr]}\n")
    with pytest.raises(ValueError, match=r"stages\.pick\.params\.cryolo\.weights_path: crYOLO needs"):
        load_recipe(recipe)
    with pytest.raises(StepConfigurationError, match=r"settings\.cryolo\.weights_path: crYOLO needs"):
        ParticlePickingOperator(task_id="pick", tool="cryolo", movies=[])
    ParticlePickingOperator(task_id="pick", tool="cryolo", movies=[], settings={"cryolo": {"weights_path": WEIGHTS}})


def _topaz_context(tmp_path: Path, runs_on, **topaz_settings) -> MovieContext:
    from airflow_provider_cryoem.relion_project import OpticsGroup, RelionProject

    project = RelionProject(tmp_path / "relion", optics=OpticsGroup(
        movie_pixel_size_a=0.5, micrograph_pixel_size_a=0.5, voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.1))
    project.reserve_jobs()
    micrograph = project.job("motioncorr").file_for(tmp_path / "raw" / "mic.tiff", ".mrc")
    config = parse_session_config({"watch_dir": str(tmp_path / "raw"), "pixel_size_a": 0.5,
                                   "particle_diameter_a": 160})
    item = {"movie": "mic.tiff", "watch_dir": str(tmp_path / "raw"), "experiment": "spa"}
    return MovieContext(item, config, PickingParams(topaz=topaz_settings, max_particles=2),
                        {"motioncorr": {"micrograph": str(micrograph)}}, project, runs_on)


def _value(spec: CommandSpec, flag: str) -> str:
    """The value of Topaz's `flag` (the last one: `python -m topaz.commands.extract -m resnet16` has two -m)."""
    return spec.args[len(spec.args) - spec.args[::-1].index(flag)]


def _recording_executor(commands: list[CommandSpec]):
    def execute(spec: CommandSpec) -> str:
        commands.append(spec)
        if "extract" in " ".join(spec.args[:2]):  # Topaz writes its picks table where -o says
            output = Path(_value(spec, "-o"))
            output.write_text((FIXTURES / "topaz_picks.txt").read_text())
        return ""
    return execute


def test_topaz_on_slurm_runs_the_topaz_command_on_the_gpu_with_distinct_jobs(tmp_path):
    commands: list[CommandSpec] = []
    placement = {"slurm_conn_id": "cluster", "partition": "gpu", "gpus": 1, "cpus": 6, "memory_gb": 16,
                 "time_limit_min": 30}
    result = topaz_pick_step(_topaz_context(tmp_path, placement), _recording_executor(commands))
    preprocess, extract = commands
    assert (preprocess.program, preprocess.args[0], extract.args[0]) == ("topaz", "preprocess", "extract")
    # 160 Å at 0.5 Å/px: Relion's rule gives max(4, round(2 × 320 / 71)) = 9; radius 320 / 2 / 9 → 18 px
    assert _value(preprocess, "-s") == "9"
    assert _value(extract, "-r") == "18"
    assert _value(extract, "-d") == "0" and _value(extract, "-j") == "6"
    assert _value(extract, "-m") == "resnet16"
    assert slurm_job_item(preprocess) != slurm_job_item(extract)  # the extract never re-attaches to preprocess
    # the fixture's picks ×9, strongest first, cut to max_particles
    assert result["coordinates_px"] == [[360.0, 2700.0], [2097.0, 1359.0]]
    assert result["rejected"] == {"max_particles": 1} and result["particle_count"] == 2
    assert result["picking_template"] == "resnet16" and result["downscale"] == 9


def test_topaz_here_runs_its_command_modules_on_the_cpu(tmp_path):
    commands: list[CommandSpec] = []
    topaz_pick_step(_topaz_context(tmp_path, "local", downscale=4, radius_px=7, threshold=-1, model="resnet8",
                                   patch_size_px=512), _recording_executor(commands))
    preprocess, extract = commands
    if preprocess.program == sys.executable:  # Topaz is installed beside Airflow
        assert preprocess.args[:2] == ["-m", "topaz.commands.preprocess"]
        assert extract.args[:2] == ["-m", "topaz.commands.extract"]
    else:
        assert (preprocess.program, preprocess.args[0]) == ("topaz", "preprocess")
    assert _value(extract, "-d") == "-1"
    assert [_value(extract, flag) for flag in ("-r", "-t", "-m", "-p")] == ["7", "-1", "resnet8", "512"]
    assert _value(preprocess, "-s") == "4"


def test_a_missing_topaz_names_the_recipe_setting_and_the_extra(tmp_path):
    from airflow_provider_cryoem.pipeline.external import local_executor

    ctx = _topaz_context(tmp_path, "local", program=str(tmp_path / "no-topaz-here"))
    with pytest.raises(ToolChoiceError) as raised:
        topaz_pick_step(ctx, local_executor("pick", "topaz"))
    message = str(raised.value)
    assert "stages.pick.tool: topaz" in message and "airflow-provider-cryoem[topaz]" in message


def test_relion_topaz_downscale_rule():
    assert topaz.relion_downscale(140, 1.0) == 4  # small particles: never below 4
    assert topaz.relion_downscale(320, 0.83) == 11


def test_a_python_named_as_the_topaz_program_runs_its_command_modules(tmp_path):
    commands: list[CommandSpec] = []
    placement = {"slurm_conn_id": "cluster", "gpus": 0, "cpus": 2, "memory_gb": 8, "time_limit_min": 30}
    topaz_pick_step(_topaz_context(tmp_path, placement, program="/opt/topaz/bin/python3"),
                    _recording_executor(commands))
    assert [(c.program, c.args[:2]) for c in commands] == [
        ("/opt/topaz/bin/python3", ["-m", "topaz.commands.preprocess"]),
        ("/opt/topaz/bin/python3", ["-m", "topaz.commands.extract"])]
    assert _value(commands[1], "-d") == "-1"  # no GPU asked for
