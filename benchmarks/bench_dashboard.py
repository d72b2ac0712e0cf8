"""The dashboard on a long session: API answer times through the real api-server, and the session page's
time to its first complete render in headless Chromium.

One results SQLite file gets a session of N movies (motion correction, CTF, picks and ice thickness for
each, every 20th failing CTF), rows as the pipeline records them, inserted in bulk
(devtools.session_results.bulk_record_session), and four 2D batches of 50 classes, a 3D batch, a refinement
with its postprocess.star and a B-factor series (record_particle_results). The api-server runs alone (devtools.local_airflow) with the
plugin; requests carry a token from the simple auth manager. Times are medians over --repeats requests (the
same answer again: the dashboard may reuse its last read; and right after a new movie: it may not); the
page time is the page's own clock from navigation start to the first complete render (plots, histograms,
movie table), read from `data-first-render-ms`.

    .venv/bin/python benchmarks/bench_dashboard.py [--movies 10000] [--repeats 5] [--no-browser]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from airflow_provider_cryoem.devtools.local_airflow import AirflowStack
from airflow_provider_cryoem.devtools.session_results import (
    bulk_record_session,
    record_movie,
    record_particle_results,
)
from airflow_provider_cryoem.results import ResultsStore, sqlite_engine
from airflow_provider_cryoem.simulate import SpaSimulationSettings

USER, PASSWORD = "viewer", "bench-password"


def _get(url: str, token: str) -> tuple[float, int]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        size = len(answer.read())
    return time.perf_counter() - started, size


def _page_render_ms(base: str, session_id: int, repeats: int) -> list[float]:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2200"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"{base}/auth/login?next={base}/cryoem/")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.NAME, "username"))
        driver.find_element(By.NAME, "username").send_keys(USER)
        driver.find_element(By.NAME, "password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(driver, 60).until(lambda d: d.current_url.rstrip("/").endswith("/cryoem"))
        times = []
        for _ in range(repeats):
            driver.get(f"{base}/cryoem/sessions/{session_id}")
            try:
                WebDriverWait(driver, 120, poll_frequency=0.05).until(
                    lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-first-render-ms"))
            except TimeoutException:
                raise RuntimeError(f"the page did not render: {driver.find_element(By.ID, 'error').text!r}, "
                                   f"browser log {driver.get_log('browser')}") from None
            times.append(float(driver.find_element(By.TAG_NAME, "body").get_attribute("data-first-render-ms")))
        return times
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movies", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium page timing")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_dashboard_") as tmp_name:
        tmp = Path(tmp_name)
        data, database = tmp / "data", tmp / "data" / "results.sqlite"
        store = ResultsStore(sqlite_engine(database))
        store.ensure_schema()
        started = time.perf_counter()
        session = bulk_record_session(store, "long-session", data, SpaSimulationSettings(n_movies=args.movies),
                                      failed_every=20)
        record_particle_results(store, session, batches_2d=4, classes_2d=50, particles_per_batch=50_000)
        print(f"recorded {args.movies} movies, 4 2D batches of 50 classes, 3D, refinement and B-factor in "
              f"{time.perf_counter() - started:.1f} s")
        home = tmp / "airflow"
        home.mkdir()
        (home / "passwords.json").write_text(json.dumps({USER: PASSWORD}))
        stack = AirflowStack(home, f"sqlite:///{home / 'airflow.db'}", extra_env={
            "CRYOEM_RESULTS_SQLITE": str(database), "CRYOEM_DATA_ROOTS": str(data),
            "CRYOEM_DASHBOARD_POLL_S": "3600"},
            settings={"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                      "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
                      "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json")})
        try:
            stack.start(components=("api-server",))
            base = f"http://127.0.0.1:{stack.api_port}"
            login = urllib.request.Request(f"{base}/auth/token", data=json.dumps(
                {"username": USER, "password": PASSWORD}).encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(login, timeout=30) as answer:
                token = json.load(answer)["access_token"]
            sid = session.session_id
            rows = []
            for label, path in (("sessions list", "/cryoem/api/sessions"),
                                ("session (counters, plots, histograms, limits, classes, 3D, 50 movies)",
                                 f"/cryoem/api/sessions/{sid}"),
                                ("movie page sorted by CTF resolution, offset 5000",
                                 f"/cryoem/api/sessions/{sid}/movies?sort=ctf_resolution_a&order=asc&offset=5000")):
                _get(base + path, token)  # warm: engine, first import of the app
                measured = [_get(base + path, token) for _ in range(args.repeats)]
                rows.append((label, statistics.median(t for t, _ in measured), measured[0][1]))
            fresh = []  # a live session: a new movie between polls, so nothing read before can be reused
            for _ in range(args.repeats):
                record_movie(store, session)
                fresh.append(_get(f"{base}/cryoem/api/sessions/{sid}", token))
            rows.append(("session, polled right after a new movie is recorded",
                         statistics.median(t for t, _ in fresh), fresh[0][1]))
            print(f"\n| {args.movies} movies | median s | answer kB |\n| --- | --- | --- |")
            for label, seconds, size in rows:
                print(f"| {label} | {seconds:.3f} | {size / 1000:.0f} |")
            if not args.no_browser and shutil.which("chromium") and shutil.which("chromedriver"):
                render = _page_render_ms(base, sid, args.repeats)
                print(f"| session page, navigation to first complete render (Chromium) | "
                      f"{statistics.median(render) / 1000:.3f} | |")
        except Exception:
            print(stack.diagnostics(), file=sys.stderr)
            raise
        finally:
            stack.stop()
            store.engine.dispose()


if __name__ == "__main__":
    main()
