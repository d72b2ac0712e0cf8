"""Programs run here inherit no Airflow secrets; a Slurm submission logs no batch script (issue 12, item 4)."""
from __future__ import annotations

import io
import json
import logging

import pytest

from airflow_provider_cryoem.execution import CommandSpec, run_local
from airflow_provider_cryoem.execution.local import EXTRA_ALLOWED_ENV
from airflow_provider_cryoem.hooks.slurm import SlurmHook

SECRET = "s3cr3t-4711"


def child_env() -> dict[str, str]:
    """The environment `env` prints when run through the local executor."""
    output = run_local(CommandSpec(program="env", args=["-0"])).output
    return dict(entry.split("=", 1) for entry in output.rstrip("\n").split("\0") if entry)


def test_local_programs_get_no_airflow_connections_database_url_or_secrets(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_X", f"postgres://user:{SECRET}@db/x")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"postgresql://airflow:{SECRET}@db/airflow")
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", SECRET)
    monkeypatch.setenv("CRYOEM_RESULTS_URL", f"postgresql://cryoem:{SECRET}@db/results")
    monkeypatch.setenv("CRYOEM_RESULTS_CONN_ID", "results_db")
    monkeypatch.setenv("RELION_API_TOKEN", SECRET)
    monkeypatch.setenv("GITHUB_TOKEN", SECRET)
    monkeypatch.setenv("UNRELATED_SETTING", "x")
    for name, value in {"RELION_SCRATCH_DIR": "/scratch", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMP_NUM_THREADS": "3",
                        "CUDA_VISIBLE_DEVICES": "1", "CRYOEM_DATA_ROOTS": "/data", "LC_ALL": "C.UTF-8",
                        "IMOD_DIR": "/opt/imod"}.items():
        monkeypatch.setenv(name, value)

    env = child_env()

    assert not [name for name in env if name.startswith("AIRFLOW")]
    assert SECRET not in json.dumps(env)
    assert "CRYOEM_RESULTS_CONN_ID" not in env and "UNRELATED_SETTING" not in env
    assert env["PATH"] and env["HOME"]
    assert {name: env[name] for name in ("RELION_SCRATCH_DIR", "OMPI_ALLOW_RUN_AS_ROOT", "OMP_NUM_THREADS",
                                         "CUDA_VISIBLE_DEVICES", "CRYOEM_DATA_ROOTS", "LC_ALL", "IMOD_DIR")} == {
        "RELION_SCRATCH_DIR": "/scratch", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMP_NUM_THREADS": "3",
        "CUDA_VISIBLE_DEVICES": "1", "CRYOEM_DATA_ROOTS": "/data", "LC_ALL": "C.UTF-8", "IMOD_DIR": "/opt/imod"}


def test_site_allow_list_adds_names_but_not_secrets_and_spec_env_is_passed_as_given(monkeypatch) -> None:
    monkeypatch.setenv("LM_LICENSE_FILE", "27000@licence")
    monkeypatch.setenv("SITE_SCRATCH", "/fast")
    monkeypatch.setenv("SITE_DB_PASSWORD", SECRET)
    monkeypatch.setenv(EXTRA_ALLOWED_ENV, "LM_LICENSE_FILE, SITE_*")
    env = child_env()
    assert env["LM_LICENSE_FILE"] == "27000@licence" and env["SITE_SCRATCH"] == "/fast"
    assert "SITE_DB_PASSWORD" not in env

    spec_env = run_local(CommandSpec(program="env", env={"TOOL_TOKEN": "given"})).output
    assert "TOOL_TOKEN=given" in spec_env.splitlines()


class _Stream(io.BytesIO):
    """A paramiko ChannelFile stand-in: bytes to read and the channel's exit status."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.channel = type("Channel", (), {"recv_exit_status": staticmethod(lambda: 0)})()


class _FakeClient:
    """Records the command lines a hook sends; answers as `sbatch --parsable` does."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def exec_command(self, command: str, timeout: float | None = None, **kwargs):
        self.commands.append(command)
        return None, _Stream(b"4711\n"), _Stream(b"")


def test_slurm_submission_logs_no_batch_script_or_setup_lines(monkeypatch, caplog, capfd) -> None:
    setup_marker = f"export SITE_LICENCE_KEY={SECRET}"
    monkeypatch.setenv("AIRFLOW_CONN_CRYOEM_SLURM_TEST", json.dumps({
        "conn_type": "ssh", "host": "login.example.org", "login": "cryoem",
        "extra": {"slurm_setup_lines": f"module purge\n{setup_marker}", "slurm_remote_workdir": "/scratch/jobs"}}))
    hook = SlurmHook("cryoem_slurm_test")
    client = _FakeClient()
    monkeypatch.setattr(hook, "_client", lambda: client)
    monkeypatch.setattr(hook, "find_job", lambda name: None)
    spec = CommandSpec(program="relion_refine", env={"RELION_LICENCE": SECRET})

    with caplog.at_level(logging.DEBUG):
        job = hook.submit(spec, "cryoem-refine-0123456789abcdef")

    assert job.job_id == 4711 and len(client.commands) == 1  # the script did go to the cluster
    captured = capfd.readouterr()  # Airflow's hook loggers write through structlog to the console
    logged = caplog.text + captured.out + captured.err
    assert "submitted relion_refine as Slurm job 4711" in logged
    assert "/scratch/jobs/cryoem-refine-0123456789abcdef.sh" in logged
    assert SECRET not in logged and "SITE_LICENCE_KEY" not in logged and "module purge" not in logged
    assert client.commands[0] not in logged  # nor the base64-coded line that writes the script


@pytest.mark.parametrize("name", ["AIRFLOW_CONN_X", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_HOME"])
def test_airflow_variables_are_not_inherited_even_when_a_site_allows_everything(monkeypatch, name: str) -> None:
    monkeypatch.setenv(name, SECRET)
    monkeypatch.setenv(EXTRA_ALLOWED_ENV, "A*")
    assert name not in child_env()
