"""Reaching the results store: ResultsHook over an Airflow connection or SQLite, and `cryoem summary`."""
from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from airflow_provider_cryoem.cli_commands import summary as summary_command
from airflow_provider_cryoem.hooks.results import ResultsHook
from airflow_provider_cryoem.results import (
    ResultsStore,
    ResultsUnavailableError,
    engine_from_url,
)
from airflow_provider_cryoem.results.migrations import LATEST_VERSION

from ._pg import pg_url  # noqa: F401  (fixture)

CONN_ID = "cryoem_results_test"
PASSWORD = "not-the-real-one"  # trust auth ignores it; it must never appear in an error


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def set_airflow_connection(monkeypatch: pytest.MonkeyPatch, database_url: str, port: int) -> None:
    url = make_url(database_url)
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}",
                       f"postgresql://{url.username}:{PASSWORD}@{url.host}:{port}/{url.database}")


def test_hook_names_the_connection_when_the_database_is_down_and_works_once_it_is_up(
        monkeypatch: pytest.MonkeyPatch, pg_url: str):
    port = closed_port()
    set_airflow_connection(monkeypatch, pg_url, port)
    with pytest.raises(ResultsUnavailableError) as down:
        ResultsHook(CONN_ID).get_store()
    message = str(down.value)
    assert CONN_ID in message and f"127.0.0.1:{port}" in message
    assert PASSWORD not in message

    set_airflow_connection(monkeypatch, pg_url, make_url(pg_url).port or 5432)  # the database is back
    store = ResultsHook(CONN_ID).get_store()
    session_id = store.get_or_create_session("hook-session", "/data/hook", "/processing/hook")
    assert store.get_or_create_session("hook-session", "/data/hook", "/processing/hook") == session_id
    assert store.engine.dialect.name == "postgresql"
    store.engine.dispose()


def test_hook_without_a_connection_uses_sqlite_in_the_processing_dir(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path):
    monkeypatch.delenv("CRYOEM_RESULTS_SQLITE", raising=False)
    store = ResultsHook(None, processing_dir=tmp_path / "processing").get_store()
    store.get_or_create_session("demo", "/data/demo", str(tmp_path / "processing"))
    assert (tmp_path / "processing" / "results.sqlite").is_file()
    assert store.schema_version() == LATEST_VERSION


def test_hook_sqlite_location_can_be_set_by_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("CRYOEM_RESULTS_SQLITE", str(tmp_path / "elsewhere" / "db.sqlite"))
    ResultsHook(None, processing_dir=tmp_path / "processing").get_store()
    assert (tmp_path / "elsewhere" / "db.sqlite").is_file()
    assert not (tmp_path / "processing" / "results.sqlite").exists()


def test_hook_without_connection_or_directory_says_what_is_missing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CRYOEM_RESULTS_SQLITE", raising=False)
    with pytest.raises(ValueError, match="CRYOEM_RESULTS_SQLITE"):
        ResultsHook(None).get_store()


def run_summary(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cryoem")
    summary_command.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture
def demo_database(tmp_path: Path) -> str:
    """A small session: two movies corrected, one failed, picks on both."""
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    store = ResultsStore(engine_from_url(url))
    store.ensure_schema()
    session_id = store.get_or_create_session("grid-3", "/data/grid-3", str(tmp_path))
    motion = store.start_processing_job(session_id, "spa_live", "motion_correction", False, run_id="r1")
    picking = store.start_processing_job(session_id, "spa_live", "particle_picking", False, run_id="r1")
    for i, (total_motion_a, particle_count) in enumerate([(2.0, 50), (4.0, 70)]):
        movie_id = store.register_movie(session_id, f"/data/grid-3/m{i}.tif")
        store.record_motion_correction(motion, movie_id, {
            "total_motion_a": total_motion_a, "early_motion_a": 1.0, "late_motion_a": total_motion_a - 1,
            "average_motion_per_frame_a": total_motion_a / 20, "micrograph": f"m{i}.mrc", "n_frames": 20})
        store.record_picking(picking, movie_id, {"particle_count": particle_count})
    broken = store.register_movie(session_id, "/data/grid-3/broken.tif")
    store.record_failure(motion, broken, "motion_correction", "not a TIFF file")
    store.engine.dispose()
    return url


def test_summary_command_prints_counts_medians_and_failures(demo_database: str, capsys: pytest.CaptureFixture):
    assert run_summary(["summary", "grid-3", "--db", demo_database]) == 0
    out = capsys.readouterr().out
    assert "3 movies" in out
    assert "median total motion (Å): 3.00" in out
    assert "median particles per micrograph: 60.00" in out
    assert "/data/grid-3/broken.tif: not a TIFF file" in out


def test_summary_command_json_matches_the_store(demo_database: str, capsys: pytest.CaptureFixture):
    assert run_summary(["summary", "grid-3", "--db", demo_database, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = ResultsStore(engine_from_url(demo_database)).session_summary("grid-3").model_dump(mode="json")
    assert printed == expected
    assert printed["stages"]["motion_correction"] == {"succeeded": 2, "failed": 1}


def test_summary_command_finds_the_demo_database_in_the_processing_dir(
        demo_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    monkeypatch.delenv("CRYOEM_RESULTS_SQLITE", raising=False)
    assert run_summary(["summary", "grid-3", "--processing-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["movies_registered"] == 3


@pytest.mark.parametrize(("argv", "message"), [
    (["summary", "no-such-grid", "--db", "DEMO"], "no-such-grid"),
    (["summary", "grid-3", "--processing-dir", "/nonexistent/processing"], "/nonexistent/processing"),
    (["summary", "grid-3", "--db", "mysql://root@localhost/x"], "supported back ends"),
])
def test_summary_command_explains_what_is_missing(demo_database: str, argv: list[str], message: str,
                                                  capsys: pytest.CaptureFixture):
    assert run_summary([demo_database if arg == "DEMO" else arg for arg in argv]) == 1
    assert message in capsys.readouterr().err


def test_summary_command_reports_an_unreachable_server_without_the_password(capsys: pytest.CaptureFixture):
    url = f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:{closed_port()}/results"
    assert run_summary(["summary", "grid-3", "--db", url]) == 1
    err = capsys.readouterr().err
    assert "results database unavailable" in err and PASSWORD not in err
