"""The dashboard behind Airflow's FAB auth manager (apache-airflow-providers-fab, in the test extra): the
real api-server refuses an anonymous request (401) and serves a user logged in through FAB's token
endpoint (200, the session listed). The code uses only the auth-manager interface; this checks it with
the second auth manager Airflow ships, beside the simple one of the other dashboard tests."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from airflow_provider_cryoem.devtools.local_airflow import AirflowStack
from airflow_provider_cryoem.devtools.session_results import record_session
from airflow_provider_cryoem.results import ResultsStore, sqlite_engine
from airflow_provider_cryoem.simulate import SpaSimulationSettings

pytest.importorskip("airflow.providers.fab", reason="apache-airflow-providers-fab is in the test extra")
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
USER, PASSWORD = "fab-viewer", "fab-password-1"


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Accept": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_with_the_fab_auth_manager_the_dashboard_refuses_anonymous_requests_and_serves_a_logged_in_user(
        tmp_path: Path):
    data = tmp_path / "data"
    store = ResultsStore(sqlite_engine(data / "results.sqlite"))
    store.ensure_schema()
    session = record_session(store, "visit-fab", data, SpaSimulationSettings(n_movies=3, seed=12), images_for=0)
    home = tmp_path / "airflow"
    stack = AirflowStack(home, f"sqlite:///{home / 'airflow.db'}", extra_env={
        "CRYOEM_RESULTS_SQLITE": str(data / "results.sqlite"), "CRYOEM_DATA_ROOTS": str(data)},
        settings={"AIRFLOW__CORE__AUTH_MANAGER": FAB})
    try:
        stack.start(components=("api-server",))
        stack.cli("users", "create", "--username", USER, "--password", PASSWORD, "--role", "Viewer",
                  "--firstname", "Fab", "--lastname", "Viewer", "--email", "fab-viewer@example.org")
        base = f"http://127.0.0.1:{stack.api_port}"
        status, _ = _get(f"{base}/cryoem/api/sessions")
        assert status == 401
        login = urllib.request.Request(f"{base}/auth/token", data=json.dumps(
            {"username": USER, "password": PASSWORD}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(login, timeout=60) as answer:
            token = json.load(answer)["access_token"]
        status, body = _get(f"{base}/cryoem/api/sessions", token)
        assert status == 200, body[:300]
        assert [row["session_id"] for row in json.loads(body)["sessions"]] == [session.session_id]
    except Exception:
        print(stack.diagnostics())
        raise
    finally:
        stack.stop()
        store.engine.dispose()
