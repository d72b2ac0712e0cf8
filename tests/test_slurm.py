"""End to end against a REAL single-node Slurm cluster reached over a real sshd (scripts/local_slurm.sh).

The session fixture starts the cluster (root, Debian 12; about 15 s the first time, instant after).
Jobs run real programs: Python, and Relion's relion_image_handler on a simulated micrograph.
"""
from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from airflow_provider_cryoem.execution import CommandSpec
from airflow_provider_cryoem.execution.slurm import (
    find_jobs_command,
    job_name,
    parse_found_jobs,
)
from airflow_provider_cryoem.hooks.slurm import (
    SlurmConnectionError,
    SlurmHook,
    SlurmJobError,
)
from airflow_provider_cryoem.io import read_mrc, write_mrc
from airflow_provider_cryoem.operators.slurm import SlurmCommandOperator
from airflow_provider_cryoem.simulate import SpaSimulationSettings, simulate_movie
from airflow_provider_cryoem.triggers.slurm import SlurmJobTrigger

from ._slurm_jobs import POLL_S, FakeTaskInstance, check_failing_job_is_reported_and_rerun, python_spec

REPO = Path(__file__).resolve().parents[1]
RUN_ID = f"{os.getpid()}-{time.time_ns()}"  # job names unique to this test run


def unique_name(stage: str) -> str:
    return job_name(f"pytest-{RUN_ID}", "item", stage)


@pytest.fixture(scope="session")
def cluster():
    """Start Slurm + sshd, publish the Airflow connection, and submit the slow time-limit job early."""
    setup = subprocess.run(["bash", str(REPO / "scripts" / "local_slurm.sh")], check=True, capture_output=True,
                           text=True, timeout=600)
    started_here = "starting slurmctld" in setup.stderr
    conn = json.loads(Path("/var/lib/cryoem-slurm/airflow_conn.json").read_text())
    os.environ["AIRFLOW_CONN_CRYOEM_SLURM"] = json.dumps(conn)
    hook = SlurmHook()
    # --time=1 is Slurm's shortest limit and slurmctld checks it every ~30 s: start now, check last.
    timeout_job = hook.submit(python_spec("import time; time.sleep(600)", timeout_s=60), unique_name("timeout"))
    yield SimpleNamespace(conn=conn, hook=hook, timeout_job=timeout_job)
    hook.run_remote(f"scancel --name={timeout_job.job_name}")
    if started_here:  # leave a cluster someone else started running, stop our own
        subprocess.run(["bash", str(REPO / "scripts" / "local_slurm.sh"), "stop"], check=True, timeout=60)


def test_python_command_gets_hostile_session_path_as_one_literal_argument(cluster, tmp_path):
    session_dir = tmp_path / "visit 1; it's \"odd\" $(id)"
    session_dir.mkdir()
    spec = python_spec("import pathlib, sys; d = pathlib.Path(sys.argv[1]); "
                       "(d / 'motion.json').write_text('{\"total_motion_a\": 1.5}'); print('argv', sys.argv[1:])",
                       str(session_dir), cwd=str(session_dir))
    job = cluster.hook.submit(spec, unique_name("motioncorr"))
    status = cluster.hook.wait(job, POLL_S, timeout_s=60)
    assert (status.state, status.exit_code) == ("COMPLETED", 0)
    assert json.loads((session_dir / "motion.json").read_text()) == {"total_motion_a": 1.5}
    assert cluster.hook.read_output(job).strip() == f"argv {[str(session_dir)]}"


def test_relion_program_runs_as_slurm_job_on_simulated_micrograph(cluster, tmp_path):
    movie = simulate_movie(SpaSimulationSettings(image_size_px=128, n_frames=2, n_movies=1, pixel_size_a=3.0,
                                                 particles_per_micrograph=3), 0)
    source = write_mrc(tmp_path / "micrograph.mrc", movie.clean_micrograph, pixel_size_a=3.0)
    spec = CommandSpec(program="relion_image_handler", cwd=str(tmp_path),
                       args=["--i", str(source), "--o", str(tmp_path / "doubled.mrc"), "--multiply_constant", "2"])
    job = cluster.hook.submit(spec, unique_name("imagehandler"))
    status = cluster.hook.wait(job, POLL_S, timeout_s=60)
    cluster.hook.raise_for_status(spec.program, job, status)
    np.testing.assert_allclose(read_mrc(tmp_path / "doubled.mrc"), 2 * movie.clean_micrograph, rtol=1e-5,
                               atol=1e-6)


def test_failing_job_error_carries_state_exit_code_and_stderr_tail_and_is_rerun_not_reattached(cluster):
    check_failing_job_is_reported_and_rerun(cluster.hook, unique_name("ctf"))


def test_retry_reattaches_to_running_job_without_second_submission(cluster):
    name = unique_name("class2d")
    spec = python_spec("import time; time.sleep(120)")
    first = cluster.hook.submit(spec, name)
    retried = SlurmHook().submit(spec, name)  # a fresh hook, as in a new task try
    try:
        assert retried.reattached and retried.job_id == first.job_id
        _, listing, _ = cluster.hook.run_remote(find_jobs_command(name))
        assert [job_id for job_id, _ in parse_found_jobs(listing)] == [first.job_id]
    finally:
        cluster.hook.cancel(first.job_id)


def test_on_kill_cancels_the_running_job(cluster):
    operator = SlurmCommandOperator(task_id="kill_me", command=python_spec("import time; time.sleep(300)"),
                                    job_name=unique_name("refine"), poll_interval_s=POLL_S)
    outcome: dict[str, BaseException] = {}

    def run_task() -> None:
        try:
            operator.execute({"ti": FakeTaskInstance("kill_me")})
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    worker = threading.Thread(target=run_task)
    worker.start()
    deadline = time.monotonic() + 30
    while operator._job is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert operator._job is not None, "the job was not submitted"
    operator.on_kill()
    worker.join(timeout=60)
    assert cluster.hook.status(operator._job.job_id).state == "CANCELLED"
    assert isinstance(outcome.get("error"), AirflowFailException) and "CANCELLED" in str(outcome["error"])


def test_deferrable_operator_completes_through_the_trigger(cluster, tmp_path):
    operator = SlurmCommandOperator(task_id="deferred", deferrable=True, poll_interval_s=POLL_S,
                                    command=python_spec("print('particles: 42')"), job_name=unique_name("pick"))
    context = {"ti": FakeTaskInstance("deferred")}
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    classpath, kwargs = deferred.value.trigger.serialize()
    module_name, class_name = classpath.rsplit(".", 1)
    trigger = getattr(importlib.import_module(module_name), class_name)(**kwargs)  # as the triggerer does

    async def first_event():
        async for event in trigger.run():
            return event

    event = asyncio.run(asyncio.wait_for(first_event(), timeout=60))
    result = operator.execute_complete(context, event.payload)
    assert result["state"] == "COMPLETED" and result["exit_code"] == 0
    assert cluster.hook.read_output(cluster.hook.job(result["job_id"], result["job_name"])) == "particles: 42\n"


def test_trigger_reports_failure_with_stderr_tail(cluster):
    operator = SlurmCommandOperator(task_id="deferred_fail", deferrable=True, poll_interval_s=POLL_S,
                                    command=python_spec("import sys; sys.exit('no particles found')"),
                                    job_name=unique_name("extract"))
    context = {"ti": FakeTaskInstance("deferred_fail")}
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)

    async def first_event():
        async for event in deferred.value.trigger.run():
            return event

    event = asyncio.run(asyncio.wait_for(first_event(), timeout=60))
    assert event.payload["status"] == "failed" and event.payload["stderr_tail"] == ["no particles found"]
    with pytest.raises(AirflowFailException, match="(?s)ended FAILED.*no particles found"):
        operator.execute_complete(context, event.payload)


def test_ssh_authentication_failure_names_the_connection(cluster, tmp_path):
    stranger_key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger_key)], check=True)
    bad = {**cluster.conn, "extra": {**cluster.conn["extra"], "key_file": str(stranger_key)}}
    os.environ["AIRFLOW_CONN_CRYOEM_SLURM_STRANGER"] = json.dumps(bad)
    try:
        with pytest.raises(SlurmConnectionError, match="authentication.*'cryoem_slurm_stranger'") as caught:
            SlurmHook("cryoem_slurm_stranger", conn_retry_attempts=1).status(1)
    finally:
        del os.environ["AIRFLOW_CONN_CRYOEM_SLURM_STRANGER"]
    assert "PRIVATE KEY" not in str(caught.value)


def test_logs_contain_no_password_or_private_key(cluster, caplog, capfd):
    password = "pw-Sup3r-s3cret-4711"
    with_password = {**cluster.conn, "password": password}
    os.environ["AIRFLOW_CONN_CRYOEM_SLURM_PW"] = json.dumps(with_password)
    key_text = Path(cluster.conn["extra"]["key_file"]).read_text()
    key_body = max(key_text.splitlines(), key=len)
    try:
        with caplog.at_level(logging.DEBUG):
            hook = SlurmHook("cryoem_slurm_pw")
            job = hook.submit(python_spec("print('done')"), unique_name("postprocess"))
            hook.raise_for_status("python", job, hook.wait(job, POLL_S, timeout_s=60))
    finally:
        del os.environ["AIRFLOW_CONN_CRYOEM_SLURM_PW"]
    captured = capfd.readouterr()
    everything = caplog.text + captured.out + captured.err
    assert "submitted python" in everything or "Running command" in everything  # the logs were captured
    assert password not in everything and key_body not in everything


def test_setup_script_run_again_keeps_daemons_and_connection(cluster):
    pid_files = [Path("/run/slurmctld.pid"), Path("/run/slurmd.pid"), Path("/var/lib/cryoem-slurm/sshd.pid")]
    before = [path.read_text() for path in pid_files]
    rerun = subprocess.run(["bash", str(REPO / "scripts" / "local_slurm.sh")], check=True, capture_output=True,
                           text=True, timeout=120)
    assert [path.read_text() for path in pid_files] == before
    assert f"export AIRFLOW_CONN_CRYOEM_SLURM='{json.dumps(cluster.conn)}'" in rerun.stdout
    assert "starting" not in rerun.stderr


def test_trigger_on_kill_cancels_the_job(cluster):
    job = cluster.hook.submit(python_spec("import time; time.sleep(300)"), unique_name("initialmodel"))
    trigger = SlurmJobTrigger(ssh_conn_id="cryoem_slurm", job_id=job.job_id, stderr_path=job.stderr_path)
    asyncio.run(trigger.on_kill())
    status = cluster.hook.wait(job, POLL_S, timeout_s=30)
    assert status.state == "CANCELLED"


def test_recipe_stage_runs_relion_motion_correction_as_a_slurm_job(cluster, tmp_path, airflow_env):
    """A spa_live-like recipe whose motion correction is Relion placed on the cluster, end to end."""
    from airflow_provider_cryoem.pipeline.stores import results_store
    from airflow_provider_cryoem.simulate import (
        END_MARKER_NAME,
        GAIN_REFERENCE_NAME,
        write_spa_session,
    )

    from .conftest import AIRFLOW

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "slurm_live.yaml").write_text(
        "name: slurm_live\nbatching: {parallel_tasks: 1}\nstages:\n"
        "  motioncorr: {tool: relion, params: {patches_x: 1, patches_y: 1},"
        " runs_on: {slurm_conn_id: cryoem_slurm, cpus: 1, time_limit_min: 10}}\n"
        "  ctf: {after: [motioncorr]}\n  pick: {after: [motioncorr]}\n  extract: {after: [pick, ctf]}\n")
    settings = SpaSimulationSettings(n_movies=2, image_size_px=384, n_frames=8, particle_diameter_a=80,
                                     particles_per_micrograph=6, seed=3)
    watch_dir = tmp_path / "session" / "raw"
    write_spa_session(settings, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    conf = {"session_name": "on_slurm", "watch_dir": str(watch_dir), "particle_diameter_a": 80,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME)}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(tmp_path), "CRYOEM_RECIPES_DIR": str(recipes),
           "AIRFLOW_CONN_CRYOEM_SLURM": json.dumps(cluster.conn)}
    run = subprocess.run([AIRFLOW, "dags", "test", "slurm_live", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:]
    summary = results_store(None, str(tmp_path / "session" / "processing")).session_summary("on_slurm")
    assert summary.failures == [] and summary.stages["motion_correction"].succeeded == settings.n_movies
    output = run.stdout + run.stderr
    assert "submitted relion_run_motioncorr as Slurm job" in output
    # the task submitted both movies' jobs, then waited for them in the trigger (dags test runs it inline)
    # and read them back when it ran again: one job per movie, none submitted twice
    assert "motioncorr: 2 movies wait for Slurm jobs; deferring on job" in output
    assert output.count("submitted relion_run_motioncorr as Slurm job") == settings.n_movies
    jobs = cluster.hook.run_remote("squeue -h -t all -o '%j %T'")[1].splitlines()
    assert sum(line.startswith("cryoem-motioncorr-") and line.endswith("COMPLETED") for line in jobs) >= 2


def test_a_tilt_series_is_denoised_and_segmented_as_slurm_jobs(cluster, tmp_path, airflow_env):
    """A tomography session of one series whose denoise (Topaz's runner) and segment (membrain-seg, a random-weight
    checkpoint: output meaningless, code path real) stages are placed on the cluster; the node has no GPU, so
    the placement asks for none (on a GPU partition: gpus: 1, then -d 0 and --gpus=1)."""
    import shutil

    from airflow_provider_cryoem.devtools.membrain_checkpoint import write_random_checkpoint
    from airflow_provider_cryoem.pipeline.stores import results_store
    from airflow_provider_cryoem.simulate import (
        END_MARKER_NAME,
        GAIN_REFERENCE_NAME,
        TomoSimulationSettings,
        write_tomo_session,
    )

    from .conftest import AIRFLOW

    subprocess.run(["bash", str(REPO / "scripts" / "membrain_env.sh")], check=True, capture_output=True, timeout=900)
    membrain = shutil.which("membrain", path=str(REPO / ".venv-membrain" / "bin"))
    checkpoint = write_random_checkpoint(tmp_path / "models" / "random.ckpt", membrain)
    placement = "{slurm_conn_id: cryoem_slurm, cpus: 1, memory_gb: 4, time_limit_min: 15}"
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tomo_slurm.yaml").write_text(
        "name: tomo_slurm\nstages:\n"
        "  motioncorr: {tool: builtin, params: {patches_x: 1, patches_y: 1}}\n"
        "  ctf: {after: [motioncorr]}\n  tilt_series: {after: [ctf]}\n  tomogram: {after: [tilt_series]}\n"
        f"  denoise: {{tool: topaz, after: [tomogram], runs_on: {placement},"
        f" params: {{program: {sys.executable}, patch_size_px: 64, padding_px: 16}}}}\n"
        f"  segment: {{tool: membrain, after: [denoise], runs_on: {placement},"
        f" params: {{program: {membrain}, sliding_window_size_px: 64}}}}\n")
    settings = TomoSimulationSettings(n_series=1, image_size_px=128, n_frames=2, tilt_min_deg=-30, tilt_max_deg=30,
                                      tilt_step_deg=10, thickness_nm=60, vesicle_radius_min_a=120,
                                      vesicle_radius_max_a=220, seed=2)
    watch_dir = tmp_path / "session" / "raw"
    truth = write_tomo_session(settings, watch_dir)
    (watch_dir / END_MARKER_NAME).write_text("")
    conf = {"session_name": "tomo_on_slurm", "watch_dir": str(watch_dir), "pixel_size_a": settings.pixel_size_a,
            "dose_per_frame_e_a2": settings.dose_per_frame_e_a2, "tilt_axis_deg": settings.tilt_axis_deg,
            "gain_reference_path": str(watch_dir / GAIN_REFERENCE_NAME), "thickness_nm": settings.thickness_nm,
            "tilt_range_deg": 30, "tomogram_binning": 2, "movie_glob": "*.tif",
            "membrain_checkpoint_path": str(checkpoint)}
    env = {**airflow_env, "CRYOEM_DATA_ROOTS": str(tmp_path), "CRYOEM_RECIPES_DIR": str(recipes),
           "AIRFLOW_CONN_CRYOEM_SLURM": json.dumps(cluster.conn)}
    run = subprocess.run([AIRFLOW, "dags", "test", "tomo_slurm", "--conf", json.dumps(conf)], env=env,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:]
    store = results_store(None, str(tmp_path / "session" / "processing"))
    summary = store.session_summary("tomo_on_slurm")
    assert summary.failures == [], summary.failures
    [series] = store.tilt_series_of_session(summary.session_id)
    assert series.name == truth.series[0].name
    processed = {row["processing_type"]: row for row in store.processed_tomograms(series.tilt_series_id)}
    assert sorted(processed) == ["Denoised", "Segmented"] and all(
        Path(row["file_path"]).is_file() for row in processed.values())
    log = run.stdout + run.stderr
    assert "as Slurm job" in log
    for stage in ("denoise", "segment"):  # batch stages wait for their jobs in the triggerer, not in the worker
        assert re.search(rf"{stage}: Slurm job cryoem-{stage}-\w+ has not ended yet; deferring on job \d+", log), stage
    jobs = cluster.hook.run_remote("squeue -h -t all -o '%j %T'")[1].splitlines()
    for stage in ("denoise", "segment"):
        assert any(line.startswith(f"cryoem-{stage}-") and line.endswith("COMPLETED") for line in jobs), stage


def test_job_over_its_time_limit_ends_in_timeout(cluster):
    """Runs last: the job was submitted when the cluster fixture started (60-90 s in Slurm)."""
    status = cluster.hook.wait(cluster.timeout_job, poll_interval_s=2, timeout_s=150)
    assert status.state == "TIMEOUT" and not status.retryable
    with pytest.raises(SlurmJobError, match="ended TIMEOUT"):
        cluster.hook.raise_for_status("python", cluster.timeout_job, status)
