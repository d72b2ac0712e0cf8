"""A stop request recorded for a live session (the dashboard's "End session now") ends that session at the
next folder scan, as the end-of-session marker would, and records who asked; other sessions go on."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from airflow_provider_cryoem.pipeline.session import close_batch, open_session
from airflow_provider_cryoem.pipeline.watch import WatchSettings, take_new_movies
from airflow_provider_cryoem.results import ResultsNotFoundError
from airflow_provider_cryoem.pipeline.stores import results_store


def _movie(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 100)
    past = time.time() - 60
    os.utime(path, (past, past))


def test_a_session_with_a_stop_request_ends_with_who_asked_and_another_session_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "data"
    monkeypatch.setenv("CRYOEM_DATA_ROOTS", str(root))
    monkeypatch.delenv("CRYOEM_RESULTS_CONN_ID", raising=False)
    monkeypatch.setenv("CRYOEM_RESULTS_SQLITE", str(tmp_path / "results.sqlite"))  # both sessions in one database
    opened, settings = {}, {}
    for name in ("stopped", "running"):
        watch = root / name / "raw"
        _movie(watch / "movie_001.tiff")
        conf = {"watch_dir": str(watch), "idle_timeout_s": 3600}
        opened[name] = (conf, open_session(conf, "spa_live", f"run_{name}", reprocess=False, logical_date=None,
                                           sessions_root=None))
        settings[name] = WatchSettings.model_validate(opened[name][1]["sessions"][0]["watch"])
    store = results_store(None, settings["stopped"].processing_path)
    assert store.stop_requested_by(settings["stopped"].session_id) is None
    assert store.request_stop(settings["stopped"].session_id, "alice")
    assert not store.request_stop(settings["stopped"].session_id, "bob")  # the first request is kept
    _movie(root / "stopped" / "raw" / "movie_002.tiff")  # waiting movies are not claimed once asked to stop

    found = take_new_movies(settings["stopped"], "run_stopped")
    assert found == {"movies": [], "session_over": True, "reason": "stopped from the dashboard by alice"}
    other = take_new_movies(settings["running"], "run_running")
    assert other == {"movies": ["movie_001.tiff"], "session_over": False, "reason": None}

    conf, opened_stopped = opened["stopped"]
    closed = close_batch(conf, opened_stopped, found)
    assert closed["session_over"] and closed["reason"] == "stopped from the dashboard by alice"
    summaries = {sid: store.session_summary(sid) for sid in (settings["stopped"].session_id,
                                                              settings["running"].session_id)}
    assert summaries[settings["stopped"].session_id].ended
    assert summaries[settings["stopped"].session_id].end_reason == "stopped from the dashboard by alice"
    assert not summaries[settings["running"].session_id].ended
    assert store.stop_requested_by(settings["running"].session_id) is None
    assert not store.request_stop(settings["stopped"].session_id, "carol")  # ended: nothing to ask
    with pytest.raises(ResultsNotFoundError):
        store.request_stop(10_000, "alice")
