"""The dashboard in a real browser: Debian's Chromium, headless, driven by selenium, against the real Airflow
api-server (which mounts the plugin found through the package's entry point), logged in through the simple
auth manager's own login page. The numbers shown must be the results database's, and a page must update
by itself when the pipeline records a new movie.

Set CRYOEM_DASHBOARD_SCREENSHOTS=<folder> to keep screenshots of the pages (docs/ holds the README's).
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from airflow_provider_cryoem.dashboard.queries import METRICS
from airflow_provider_cryoem.devtools.local_airflow import AirflowStack
from airflow_provider_cryoem.devtools.session_results import (
    ParticleResults,
    SimulatedSession,
    record_movie,
    record_particle_results,
    record_session,
    record_tilt_series,
)
from airflow_provider_cryoem.results import ResultsStore, sqlite_engine
from airflow_provider_cryoem.simulate import SpaSimulationSettings

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                 reason="needs Debian's chromium and chromium-driver (scripts/install_system_deps.sh)")]

USER, PASSWORD = "viewer", "viewer-password"
WAIT_S = 60  # generous: the machine may be shared; a wait ends as soon as the page is right


@dataclass
class Server:
    base: str
    store: ResultsStore
    spa: SimulatedSession
    ended: SimulatedSession
    tomo: SimulatedSession
    particles: ParticleResults


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The api-server alone (the dashboard needs no scheduler) on its own port, SQLite metadata, a results
    SQLite file with a live session (12 movies, every 5th failing CTF, thumbnails for two, two 2D batches,
    a 3D batch, a refinement and a B-factor series), an ended one and a tomography one (a tilt series)."""
    tmp = tmp_path_factory.mktemp("dashboard_browser")
    data = tmp / "data"
    database = data / "results.sqlite"
    store = ResultsStore(sqlite_engine(database))
    store.ensure_schema()
    spa = record_session(store, "visit-browser", data, SpaSimulationSettings(n_movies=12, seed=7), failed_every=5,
                         images_for=2)
    ended = record_session(store, "visit-done", data, SpaSimulationSettings(n_movies=3, seed=8), images_for=0,
                           end_reason="idle for 600 s")
    particles = record_particle_results(store, spa)
    tomo = record_session(store, "visit-tomo", data, SpaSimulationSettings(n_movies=6, seed=9), recipe="tomo_live",
                          images_for=0)
    record_tilt_series(store, tomo)
    home = tmp / "airflow"
    home.mkdir()
    (home / "passwords.json").write_text(json.dumps({USER: PASSWORD, "admin": "admin-password"}))
    stack = AirflowStack(home, f"sqlite:///{home / 'airflow.db'}", extra_env={
        "CRYOEM_RESULTS_SQLITE": str(database), "CRYOEM_DATA_ROOTS": str(data), "CRYOEM_DASHBOARD_POLL_S": "1"},
        settings={"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                  "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer,admin:admin",
                  "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json")})
    try:
        stack.start(components=("api-server",))
        yield Server(base=f"http://127.0.0.1:{stack.api_port}", store=store, spa=spa, ended=ended, tomo=tomo,
                     particles=particles)
    finally:
        stack.stop()
        store.engine.dispose()


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[object]:
    """Headless Chromium, logged in through Airflow's login page (which sets the `_token` cookie)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2200"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        for _ in range(3):
            driver.get(f"{server.base}/auth/login?next={server.base}/cryoem/")
            wait(driver).until(lambda d: d.find_elements(By.NAME, "username"))
            driver.find_element(By.NAME, "username").send_keys(USER)
            driver.find_element(By.NAME, "password").send_keys(PASSWORD)
            driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait(driver).until(lambda d: d.current_url.rstrip("/").endswith("/cryoem"))
            # The login page sets the `_token` cookie from its script and then goes to `next`; on the loaded
            # machine the first page after it has come back as 401 (no cookie sent) now and then: log in again.
            driver.get(f"{server.base}/cryoem/")
            page = wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sessions, #login"))[0]
            if page.get_attribute("id") == "sessions":
                break
        else:
            raise AssertionError(f"three logins through Airflow's login page left the browser without a session "
                                 f"(cookies: {[c['name'] for c in driver.get_cookies()]})")
        yield driver
    finally:
        driver.quit()


def wait(driver: object, timeout_s: float = WAIT_S):  # noqa: ANN201
    """Waits that look again when the page redrew what they were reading (it polls every second); one that
    runs out says what the page showed (its error line, whether it ever rendered)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    class PageWait(WebDriverWait):
        def until(self, method, message=""):  # noqa: ANN001, ANN202
            try:
                return super().until(method, message)
            except TimeoutException:
                state = driver.execute_script(
                    "const e = document.getElementById('error');"
                    "return [location.href, e ? e.textContent : null, document.body.dataset.firstRenderMs || null,"
                    "        document.body.innerText.slice(0, 300)];")
                raise TimeoutException(f"page {state[0]}: error line {state[1]!r}, first render {state[2]} ms, "
                                       f"text {state[3]!r}") from None

    return PageWait(driver, timeout_s, poll_frequency=0.2,
                    ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))


def field(scope: object, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return scope.find_element(By.CSS_SELECTOR, selector).text.strip()


def db(server: Server, sql: str, **params: object) -> list[tuple]:
    with server.store.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql), params)]


def movies_with(server: Server, table: str, session_id: int) -> int:
    return db(server, f"SELECT count(DISTINCT t.movie_id) FROM {table} t JOIN processing_job j "
                      f"ON j.processing_job_id = t.processing_job_id WHERE j.session_id = :sid", sid=session_id)[0][0]


def shown_equals(shown: str, value: float | None, decimals: int) -> bool:
    """A number as the page shows it (rounded to `decimals`) is the database's value."""
    if value is None:
        return shown == "–"
    return abs(float(shown) - value) <= 0.5 * 10 ** -decimals + 1e-9


def screenshot(driver: object, name: str, element: object | None = None) -> None:
    """The window, or one element of the page (a section below the window's height)."""
    folder = os.environ.get("CRYOEM_DASHBOARD_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        if element is not None:
            driver.execute_script("arguments[0].scrollIntoView();", element)
            element.screenshot(str(Path(folder) / name))
        else:
            driver.save_screenshot(str(Path(folder) / name))


def drawn_lines(driver: object, holder_id: str) -> list[dict]:
    """The fixed-value lines (quality limits, FSC 0.143) a chart drew, as its script reports them."""
    from selenium.webdriver.common.by import By

    return json.loads(driver.find_element(By.ID, holder_id).get_attribute("data-limit-lines") or "[]")


def red_along(driver: object, holder_id: str, line: dict, samples: int = 9) -> int:
    """How many of `samples` canvas pixels along a drawn line are the limit's red (the line is really there)."""
    from selenium.webdriver.common.by import By

    return driver.execute_script("""
        const [holder, line, samples] = arguments;
        const canvas = holder.querySelector("canvas");
        const context = canvas.getContext("2d");
        let red = 0;
        for (let i = 1; i <= samples; i++) {
          const along = Math.round(line.from + (line.to - line.from) * i / (samples + 1));
          const [x, y] = line.axis === "y" ? [along, line.at] : [line.at, along];
          const [r, g, b] = context.getImageData(x, y, 1, 1).data;
          if (r > 180 && g < 110 && b < 110) red++;
        }
        return red;""", driver.find_element(By.ID, holder_id), line, samples)


def test_the_real_api_server_refuses_requests_without_a_login_and_lists_the_plugin(server: Server):
    for url in ("/cryoem/api/sessions", f"/cryoem/api/sessions/{server.spa.session_id}", "/cryoem/",
                f"/cryoem/api/images/micrograph/{server.spa.movies[0]}"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.base + url, timeout=10)
        assert refused.value.code == 401, url
    login = urllib.request.Request(f"{server.base}/auth/token", data=json.dumps(
        {"username": USER, "password": PASSWORD}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(login, timeout=10) as answer:
        token = json.load(answer)["access_token"]
    plugins = urllib.request.Request(f"{server.base}/api/v2/plugins", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(plugins, timeout=10) as answer:
        ours = next(p for p in json.load(answer)["plugins"] if p["name"] == "cryoem_dashboard")
    assert ours["fastapi_apps"][0]["url_prefix"] == "/cryoem" and ours["external_views"][0]["url_route"] == "cryoem"


def test_sessions_page_shows_the_databases_numbers_also_inside_airflows_ui(server: Server, browser: object):
    from selenium.webdriver.common.by import By

    browser.get(f"{server.base}/cryoem/")
    rows = wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr[data-session-id]"))
    assert len(rows) == 3
    screenshot(browser, "dashboard-sessions.png")
    for simulated in (server.spa, server.ended):
        sid = simulated.session_id
        row = browser.find_element(By.CSS_SELECTOR, f'#sessions tbody tr[data-session-id="{sid}"]')
        assert field(row, '[data-field="movies"]') == str(db(server, "SELECT count(*) FROM movie WHERE session_id = :s", s=sid)[0][0])
        assert field(row, '[data-field="failed"]') == str(db(
            server, "SELECT count(*) FROM movie WHERE session_id = :s AND status = 'failed'", s=sid)[0][0])
        assert field(row, '[data-field="files_claimed"]') == str(db(
            server, "SELECT count(*) FROM session_file WHERE session_id = :s", s=sid)[0][0])
        for stage, table in (("motion_correction", "motion_correction"), ("ctf", "ctf"),
                             ("particle_picking", "particle_picker"), ("ice_thickness", "relative_ice_thickness")):
            assert field(row, f'[data-field="{stage}"]') == str(movies_with(server, table, sid)), stage
        assert field(row, '[data-field="latest_run"]').startswith("spa_live")
    tomo = browser.find_element(By.CSS_SELECTOR, f'#sessions tbody tr[data-session-id="{server.tomo.session_id}"]')
    assert field(tomo, '[data-field="experiment"]') == "tomography"
    done = browser.find_element(By.CSS_SELECTOR, f'#sessions tbody tr[data-session-id="{server.ended.session_id}"]')
    assert field(done, '[data-field="state"]') == "ended" and field(done, '[data-field="end_reason"]') == "idle for 600 s"

    browser.get(f"{server.base}/plugin/cryoem")  # the nav entry: Airflow's UI shows the page in its frame
    frame = wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "iframe[title='Cryo-EM sessions']"))[0]
    browser.switch_to.frame(frame)
    try:
        assert len(wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr"))) == 3
    finally:
        browser.switch_to.default_content()
    screenshot(browser, "dashboard-in-airflow.png")


def test_session_page_shows_counts_plots_thumbnails_and_movies_equal_to_the_database(server: Server, browser: object):
    from selenium.webdriver.common.by import By

    sid = server.spa.session_id
    browser.get(f"{server.base}/cryoem/sessions/{sid}")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#movies tbody tr"))
    summary = server.store.session_summary(sid)
    for stage, count in summary.stages.items():
        row = browser.find_element(By.CSS_SELECTOR, f'#stages tr[data-stage="{stage}"]')
        assert (field(row, '[data-field="succeeded"]'), field(row, '[data-field="failed"]')) == (
            str(count.succeeded), str(count.failed)), stage
    assert shown_equals(field(browser, '#medians [data-field="median_total_motion_a"]'), summary.median_total_motion_a, 2)
    assert shown_equals(field(browser, '#medians [data-field="median_fit_resolution_a"]'), summary.median_fit_resolution_a, 2)

    # Plots: one point per movie with a value; thumbnails of the newest movie with images actually load.
    motion_values = movies_with(server, "motion_correction", sid)
    wait(browser).until(lambda d: d.find_element(By.ID, "plot-motion").get_attribute("data-points") == str(motion_values))
    for chart in ("motion", "defocus", "astigmatism", "ctf_resolution", "ice", "particles"):
        assert browser.find_elements(By.CSS_SELECTOR, f"#plot-{chart} canvas"), chart
    assert len(browser.find_elements(By.CSS_SELECTOR, "#histograms canvas")) == len(METRICS)
    images = browser.find_elements(By.CSS_SELECTOR, "#newest-thumbs img")
    assert len(images) == 4
    wait(browser).until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
                                      for img in images))

    # The movie table: newest first, every value the database's (to the decimals shown), failures with reasons.
    rows = browser.find_elements(By.CSS_SELECTOR, "#movies tbody tr")
    assert len(rows) == 12
    values = {row[0]: row for row in db(server, """
        SELECT m.movie_number, mc.total_motion_a, c.defocus_u_a, c.estimated_resolution_a, p.number_of_particles,
               m.failure_reason
        FROM movie m JOIN motion_correction mc ON mc.movie_id = m.movie_id
        LEFT JOIN ctf c ON c.movie_id = m.movie_id LEFT JOIN particle_picker p ON p.movie_id = m.movie_id
        WHERE m.session_id = :s""", s=sid)}
    assert [int(field(row, '[data-field="movie_number"]')) for row in rows] == sorted(values, reverse=True)
    for row in rows:
        number, motion, defocus_u, resolution, particles, reason = values[int(field(row, '[data-field="movie_number"]'))]
        assert shown_equals(field(row, '[data-field="total_motion_a"]'), motion, 2)
        assert shown_equals(field(row, '[data-field="defocus_u_a"]'), defocus_u, 0)
        assert shown_equals(field(row, '[data-field="ctf_resolution_a"]'), resolution, 2)
        assert shown_equals(field(row, '[data-field="particles"]'), particles, 0)
        assert field(row, '[data-field="failure_reason"]') == (reason or "")
    screenshot(browser, "dashboard-session.png")

    # Sorting happens on the server: best CTF resolution first after two clicks on its header.
    header = browser.find_element(By.CSS_SELECTOR, '#movies th[data-sort="ctf_resolution_a"]')
    header.click()
    browser.find_element(By.CSS_SELECTOR, '#movies th[data-sort="ctf_resolution_a"]').click()
    best = min(row[3] for row in values.values() if row[3] is not None)
    wait(browser).until(lambda d: shown_equals(field(d, '#movies tbody tr [data-field="ctf_resolution_a"]'), best, 2))


def test_the_session_page_updates_without_reloading_when_a_movie_is_recorded(server: Server, browser: object):
    from selenium.webdriver.common.by import By

    sid = server.spa.session_id
    browser.get(f"{server.base}/cryoem/sessions/{sid}")
    wait(browser).until(lambda d: field(d, '#facts [data-field="movies"]') not in ("", "–"))
    before = int(field(browser, '#facts [data-field="movies"]'))
    browser.execute_script("window.notReloaded = true;")
    movie_id = record_movie(server.store, server.spa, images=True)  # what the pipeline's next task writes
    number, name = db(server, "SELECT movie_number, movie_full_path FROM movie WHERE movie_id = :m", m=movie_id)[0]
    wait(browser).until(lambda d: field(d, '#facts [data-field="movies"]') == str(before + 1))
    wait(browser).until(lambda d: field(d, '#stages tr[data-stage="motion_correction"] [data-field="succeeded"]')
                        == str(movies_with(server, "motion_correction", sid)))
    wait(browser).until(lambda d: field(d, "#movies tbody tr [data-field='movie_number']") == str(number))
    wait(browser).until(lambda d: field(d, "#newest-name") == name)
    assert browser.execute_script("return window.notReloaded === true;")


def test_the_plots_draw_the_sessions_quality_limits_and_count_the_movies_beyond_them(server: Server, browser: object):
    from selenium.webdriver.common.by import By

    sid = server.spa.session_id
    browser.get(f"{server.base}/cryoem/sessions/{sid}")
    limits = json.loads(db(server, "SELECT quality_limits FROM session WHERE session_id = :s", s=sid)[0][0])
    worst = limits["max_ctf_fit_resolution_a"]
    lines = wait(browser).until(lambda d: drawn_lines(d, "plot-ctf_resolution"))
    assert [(line["value"], line["axis"]) for line in lines] == [(worst, "y")]
    assert red_along(browser, "plot-ctf_resolution", lines[0]) >= 6  # drawn, in red, where the value lies
    defocus = drawn_lines(browser, "plot-defocus")
    assert sorted(line["value"] for line in defocus) == [limits["min_defocus_a"], limits["max_defocus_a"]]
    histogram = wait(browser).until(lambda d: drawn_lines(d, "histogram-ctf_resolution_a"))
    assert [(line["value"], line["axis"]) for line in histogram] == [(worst, "x")]
    assert red_along(browser, "histogram-ctf_resolution_a", histogram[0]) >= 6
    assert drawn_lines(browser, "plot-ice") == []  # no ice limits set

    beyond = db(server, "SELECT count(*) FROM ctf c JOIN processing_job j ON j.processing_job_id = c.processing_job_id "
                        "WHERE j.session_id = :s AND c.estimated_resolution_a > :w", s=sid, w=worst)[0][0]
    row = browser.find_element(By.CSS_SELECTOR, '#limits tr[data-metric="ctf_resolution_a"]')
    assert field(row, '[data-field="beyond"]') == str(beyond) and field(row, '[data-field="range"]') == f"– … {worst:g}"


def test_class_galleries_mark_the_selected_classes_with_scores_and_3d_shows_fsc_and_bfactor(
        server: Server, browser: object):
    from selenium.webdriver.common.by import By

    browser.get(f"{server.base}/cryoem/sessions/{server.spa.session_id}")
    newest = server.particles.class2d_groups[-1]
    gallery = wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#classes2d details[data-group-id="{newest}"][open]'))[0]
    classes = {row[0]: row[1:] for row in db(server, "SELECT class_number, selected, selection_score, particles_per_class "
                                                     "FROM particle_classification WHERE particle_classification_group_id = :g",
                                             g=newest)}
    figures = gallery.find_elements(By.CSS_SELECTOR, "figure[data-class]")
    assert len(figures) == len(classes) == 12
    for figure in figures:
        selected, score, particles = classes[int(figure.get_attribute("data-class"))]
        assert figure.get_attribute("data-selected") == ("true" if selected else "false")
        assert ("selected" in figure.get_attribute("class").split()) == bool(selected)
        assert field(figure, '[data-field="score"]') == f"score {score:.2f}"
        assert field(figure, '[data-field="particles"]').startswith(f"{particles} ptcl")
    assert 0 < sum(selected for selected, _, _ in classes.values()) < 12
    images = gallery.find_elements(By.TAG_NAME, "img")
    wait(browser).until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
                                      for img in images))
    older = browser.find_element(By.CSS_SELECTOR, f'#classes2d details[data-group-id="{server.particles.class2d_groups[0]}"]')
    assert older.get_attribute("open") is None  # older batches folded
    screenshot(browser, "dashboard-classes.png", browser.find_element(By.ID, "classes2d-section"))

    (resolution, bfactor), = db(server, "SELECT estimated_resolution_a, b_factor_a2 FROM refinement")
    row = browser.find_element(By.CSS_SELECTOR, f'#refinements tr[data-refinement-id="{server.particles.refinement_id}"]')
    assert shown_equals(field(row, '[data-field="resolution_a"]'), resolution, 2)
    assert shown_equals(field(row, '[data-field="bfactor_a2"]'), bfactor, 0)
    from airflow_provider_cryoem.io import read_star

    shells = len(read_star(server.particles.postprocess_star)["fsc"])
    wait(browser).until(lambda d: d.find_element(By.ID, "plot-fsc").get_attribute("data-points") == str(shells))
    fsc_lines = drawn_lines(browser, "plot-fsc")
    assert [line["value"] for line in fsc_lines] == [0.143] and red_along(browser, "plot-fsc", fsc_lines[0]) >= 6
    points = db(server, "SELECT count(*) FROM bfactor_fit")[0][0]
    assert browser.find_element(By.ID, "plot-bfactor").get_attribute("data-points") == str(points)
    assert "B = 300 Å²" in field(browser, "#plot-bfactor .u-title")
    selected_3d = browser.find_elements(By.CSS_SELECTOR, '#classes3d figure[data-selected="true"]')
    assert [figure.get_attribute("data-class") for figure in selected_3d] == ["1"]
    screenshot(browser, "dashboard-3d.png", browser.find_element(By.ID, "map-section"))


def test_the_tomography_session_page_shows_series_residuals_and_central_slice(server: Server, browser: object):
    from selenium.webdriver.common.by import By

    sid = server.tomo.session_id
    browser.get(f"{server.base}/cryoem/sessions/{sid}")
    row = wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#series tbody tr[data-series-id]"))[0]
    (series_id, name, reason), = db(server, "SELECT tilt_series_id, name, completed_reason FROM tilt_series "
                                            "WHERE session_id = :s", s=sid)
    tilts = db(server, "SELECT count(*) FROM tilt WHERE tilt_series_id = :t", t=series_id)[0][0]
    assert field(row, '[data-field="name"]') == name and field(row, '[data-field="tilts"]') == str(tilts)
    assert field(row, '[data-field="status"]') == f"complete ({reason})"
    residuals = db(server, "SELECT count(*) FROM tilt_image_alignment a JOIN tomogram t ON t.tomogram_id = a.tomogram_id "
                           "WHERE t.tilt_series_id = :t AND a.residual_error_px IS NOT NULL", t=series_id)[0][0]
    wait(browser).until(lambda d: d.find_element(By.ID, "plot-residuals").get_attribute("data-points") == str(residuals))
    for kind in ("central_slice", "denoised_slice", "segmentation_slice", "segmentation_projection"):
        image = browser.find_element(By.CSS_SELECTOR, f'#series-thumbs figure[data-kind="{kind}"] img')
        wait(browser).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                        image))
    assert browser.find_element(By.ID, "classes2d-section").get_attribute("hidden") is not None
    screenshot(browser, "dashboard-tomography.png", browser.find_element(By.ID, "tomography"))
