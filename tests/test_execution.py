"""Local execution of external programs and the transport-free Slurm text (scripts, commands, parsing)."""
from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_provider_cryoem.execution import (
    CommandSpec,
    ToolExecutionError,
    ToolNotFoundError,
    ToolTimeoutError,
    run_local,
)
from airflow_provider_cryoem.execution.slurm import (
    SlurmSettings,
    job_name,
    parse_found_jobs,
    parse_job_status,
    parse_submitted_job_id,
    reattachable_job,
    render_batch_script,
    submit_command,
)

HOSTILE_ARG = "dir with spaces/it's \"quoted\"; rm -rf $HOME `id` *.mrc"


def python_spec(code: str, *args: str, **kwargs) -> CommandSpec:
    return CommandSpec(program=sys.executable, args=["-c", code, *args], **kwargs)


# --- run_local ---------------------------------------------------------------------------------
def test_run_local_streams_each_line_to_logger_log_file_and_callback(tmp_path, caplog):
    log_path = tmp_path / "logs" / "run.log"
    seen: list[str] = []
    spec = python_spec("import sys\nfor i in range(3): print('frame', i, flush=True)\nprint('warn', file=sys.stderr)",
                       log_path=str(log_path))
    with caplog.at_level(logging.INFO, logger="airflow_provider_cryoem.execution.local"):
        result = run_local(spec, seen.append)
    assert seen == ["frame 0", "frame 1", "frame 2", "warn"]
    assert log_path.read_text().splitlines() == seen
    assert "frame 2" in caplog.text and "warn" in caplog.text
    assert result.returncode == 0 and result.output.splitlines() == seen


def test_progress_bar_redraws_reach_the_log_file_but_not_the_task_log_or_error_tail(tmp_path, caplog):
    script = ("import sys\nprint('start')\n"
              "for i in range(40): sys.stdout.write(f'  {i}/  9 sec {\".\" * i}~~(,_,\\\">' + chr(13))\n"
              "print()\nprint('failed here')\nsys.exit(2)")
    spec = python_spec(script, log_path=str(tmp_path / "run.out"))
    with caplog.at_level(logging.INFO, logger="airflow_provider_cryoem.execution.local"):
        with pytest.raises(ToolExecutionError) as caught:
            run_local(spec)
    assert caught.value.log_tail == ["start", "failed here"]
    label = f"[{Path(sys.executable).name}]"  # python or python3, as pytest was started
    assert f"{label} failed here" in caplog.text and f"{label}   3/  9 sec" not in caplog.text
    assert (tmp_path / "run.out").read_text().count("~~(,_,") == 40


def test_run_local_passes_hostile_argument_literally_and_feeds_stdin():
    result = run_local(python_spec("import sys; print(repr(sys.argv[1])); print(input())", HOSTILE_ARG,
                                   stdin_text="answer one\n"))
    assert result.output.splitlines() == [repr(HOSTILE_ARG), "answer one"]


def test_run_local_failure_names_program_and_shows_last_twenty_lines(tmp_path):
    spec = python_spec("import sys\nfor i in range(30): print('line', i)\nsys.exit(4)",
                       log_path=str(tmp_path / "x.log"))
    with pytest.raises(ToolExecutionError) as caught:
        run_local(spec)
    message = str(caught.value)
    assert sys.executable in message and "exited with status 4" in message and str(tmp_path / "x.log") in message
    assert caught.value.log_tail == [f"line {i}" for i in range(10, 30)]
    assert "line 9\n" not in message


def test_run_local_missing_program_raises_tool_not_found_naming_it():
    with pytest.raises(ToolNotFoundError, match="ctffind5_not_installed_here"):
        run_local(CommandSpec(program="ctffind5_not_installed_here"))


def test_run_local_stops_program_that_exceeds_its_timeout():
    started = time.monotonic()
    with pytest.raises(ToolTimeoutError, match="time limit of 0.5 s") as caught:
        run_local(python_spec("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout_s=0.5))
    assert time.monotonic() - started < 10
    assert caught.value.log_tail == ["started"]


def test_run_local_missing_working_directory_is_named(tmp_path):
    with pytest.raises(ToolExecutionError, match="does not exist"):
        run_local(python_spec("pass", cwd=str(tmp_path / "absent")))


# --- batch script and sbatch command -----------------------------------------------------------
def test_batch_script_runs_program_with_literal_arguments_env_and_stdin(tmp_path):
    settings = SlurmSettings(setup_lines=["export FROM_SITE=yes"])
    spec = python_spec("import os, sys; print(sys.argv[1]); print(os.environ['FROM_SITE'], "
                       "os.environ['CRYOEM_X']); print(input()); print(os.getcwd())",
                       HOSTILE_ARG, cwd=str(tmp_path), env={"CRYOEM_X": "a 'b' $c"}, stdin_text="from stdin\n")
    script = tmp_path / "job.sh"
    script.write_text(render_batch_script(spec, settings))
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [HOSTILE_ARG, "yes a 'b' $c", "from stdin", str(tmp_path)]


def test_batch_script_loads_modules_quoted():
    script = render_batch_script(CommandSpec(program="relion_refine"),
                                 SlurmSettings(modules="relion/5.0, cuda/12;evil"))
    assert "module load relion/5.0\n" in script and "module load 'cuda/12;evil'\n" in script


def test_submit_command_keeps_each_site_value_one_shell_word():
    settings = SlurmSettings(partition="gpu", account="em a; touch /tmp/x", qos="high", gres="gpu:1", memory="16G",
                             remote_workdir="/scratch/my jobs")
    command = submit_command(CommandSpec(program="MotionCor2", threads=4, timeout_s=125), settings,
                             job_name("s", "m", "motioncorr"))
    words = shlex.split(command)
    sbatch = words[words.index("sbatch"):]
    assert "--account=em a; touch /tmp/x" in sbatch
    expected = {"--partition=gpu", "--qos=high", "--gres=gpu:1", "--mem=16G", "--cpus-per-task=4", "--time=3"}
    assert expected <= set(sbatch)
    assert sbatch[-1].startswith("/scratch/my jobs/cryoem-motioncorr-")


def test_job_name_is_stable_per_unit_of_work_and_changes_with_attempt():
    first = job_name("visit 1", "movie_0001.tiff", "motioncorr")
    assert first == job_name("visit 1", "movie_0001.tiff", "motioncorr")
    assert first != job_name("visit 1", "movie_0001.tiff", "motioncorr", attempt=1)
    assert first != job_name("visit 1", "movie_0002.tiff", "motioncorr")
    assert first.startswith("cryoem-motioncorr-") and shlex.quote(first) == first


# --- parsing what Slurm prints ------------------------------------------------------------------
# Lines as Slurm 22.05 printed them on the local test cluster (scripts/local_slurm.sh).
SCONTROL_FAILED = ("JobId=7 JobName=cryoem-ctf-1 UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=1 Nice=0 "
                   "Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 "
                   "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:01 TimeLimit=UNLIMITED "
                   "WorkDir=/data/my visit StdErr=/root/x.err")
JOBCOMP_TIMEOUT = ("JobId=9 UserId=root(0) GroupId=root(0) Name=cryoem-x JobState=TIMEOUT Partition=cryoem "
                   "TimeLimit=1 StartTime=2026-11-25T07:54:48 EndTime=2026-11-25T07:56:08 NodeList=vm NodeCnt=1 "
                   "ProcCnt=1 WorkDir=/root ReservationName= Tres=cpu=1 Account= QOS= WcKey= Cluster=unknown "
                   "SubmitTime=2026-11-25T07:54:47 EligibleTime=2026-11-25T07:54:47 DerivedExitCode=0:0 "
                   "ExitCode=0:15")


def test_parse_scontrol_status_reads_state_exit_code_and_reason():
    status = parse_job_status(7, SCONTROL_FAILED)
    assert (status.state, status.exit_code, status.signal, status.reason, status.source) == \
        ("FAILED", 3, 0, "NonZeroExitCode", "scontrol")
    assert status.finished and not status.succeeded and not status.retryable


def test_parse_jobcomp_status_when_scontrol_forgot_the_job():
    status = parse_job_status(9, JOBCOMP_TIMEOUT)
    assert (status.state, status.exit_code, status.signal, status.source) == ("TIMEOUT", 0, 15, "jobcomp")
    assert not status.succeeded


def test_parse_sacct_status_and_unknown_job():
    status = parse_job_status(12, "sacct|12|CANCELLED by 0|0:15")
    assert status.state == "CANCELLED" and status.source == "sacct"
    assert parse_job_status(12, "") is None
    assert parse_job_status(12, SCONTROL_FAILED) is None  # a line about another job


@pytest.mark.parametrize(("state", "finished", "succeeded", "retryable"), [
    ("PENDING", False, False, False), ("RUNNING", False, False, False), ("COMPLETED", True, True, False),
    ("FAILED", True, False, False), ("TIMEOUT", True, False, False), ("OUT_OF_MEMORY", True, False, False),
    ("CANCELLED", True, False, False), ("NODE_FAIL", True, False, True), ("PREEMPTED", True, False, True),
])
def test_slurm_states_map_to_wait_success_or_failure(state, finished, succeeded, retryable):
    status = parse_job_status(5, f"JobId=5 JobName=x JobState={state} Reason=None ExitCode=0:0")
    assert (status.finished, status.succeeded, status.retryable) == (finished, succeeded, retryable)


def test_reattach_prefers_newest_live_or_completed_job_and_ignores_failed_ones():
    assert reattachable_job(parse_found_jobs("4|COMPLETED\n9|FAILED\n")) == 4
    assert reattachable_job(parse_found_jobs("4|FAILED\n9|RUNNING\n11|PENDING\n")) == 11
    assert reattachable_job(parse_found_jobs("4|FAILED\n5|TIMEOUT\n")) is None


def test_sbatch_job_id_is_parsed_with_or_without_cluster_name():
    assert parse_submitted_job_id("123\n") == 123
    assert parse_submitted_job_id("123;cluster\n") == 123
    with pytest.raises(ValueError, match="did not print a job id"):
        parse_submitted_job_id("sbatch: error: Batch job submission failed")


def test_slurm_settings_from_connection_extras():
    settings = SlurmSettings.from_extras({"key_file": "/k", "slurm_partition": "gpu", "slurm_modules": "a, b",
                                          "slurm_setup_lines": "source /x\nexport Y=1", "slurm_gpus": "2",
                                          "slurm_qos": ""})
    assert (settings.partition, settings.modules, settings.setup_lines, settings.gpus, settings.qos) == \
        ("gpu", ["a", "b"], ["source /x", "export Y=1"], 2, None)
    with pytest.raises(ValueError, match="memory"):
        SlurmSettings.from_extras({"slurm_memory": "lots"})
