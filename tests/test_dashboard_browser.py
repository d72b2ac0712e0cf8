"""The dashboard in a real browser: Debian's Chromium, headless, driven by selenium, against the real Airflow
api-server (which mounts the plugin found through the package's entry point), logged in through the simple
auth manager's own login page. The numbers shown must be the results database's, and a page must update
by itself when the pipeline records a new movie. The same server shows Airflow's own Trigger form for
spa_live (the DAGs are serialized into its metadata database first), which must show every session setting
with its label, unit, default and bounds and refuse values beyond them; an admin's *End session now* click
must record the stop request with the admin's name.

Set CRYOEM_DASHBOARD_SCREENSHOTS=<folder> to keep screenshots of the pages (docs/ holds the README's).
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from airflow_provider_cryoem.config import QUALITY_LIMIT_FIELDS, parse_session_config
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
from airflow_provider_cryoem.params import form_title, session_params
from airflow_provider_cryoem.recipes.schema import load_recipe
from airflow_provider_cryoem.results import ResultsStore, sqlite_engine
from airflow_provider_cryoem.simulate import SpaSimulationSettings

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                 reason="needs Debian's chromium and chromium-driver (scripts/install_system_deps.sh)")]

USER, PASSWORD = "viewer", "viewer-password"
ADMIN, ADMIN_PASSWORD = "admin", "admin-password"
TOMO_RECIPE = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "tomo_live.yaml")
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
                          images_for=0, config=parse_session_config(TOMO_RECIPE.session_defaults))
    record_tilt_series(store, tomo)
    home = tmp / "airflow"
    home.mkdir()
    (home / "passwords.json").write_text(json.dumps({USER: PASSWORD, ADMIN: ADMIN_PASSWORD}))
    stack = AirflowStack(home, f"sqlite:///{home / 'airflow.db'}", extra_env={
        "CRYOEM_RESULTS_SQLITE": str(database), "CRYOEM_DATA_ROOTS": str(data), "CRYOEM_DASHBOARD_POLL_S": "1"},
        settings={"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                  "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer,{ADMIN}:admin",
                  "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json")})
    try:
        stack.start(components=("api-server",))
        stack.cli("dags", "reserialize", timeout_s=300)  # the DAGs in the metadata database, for the Trigger form
        yield Server(base=f"http://127.0.0.1:{stack.api_port}", store=store, spa=spa, ended=ended, tomo=tomo,
                     particles=particles)
    finally:
        stack.stop()
        store.engine.dispose()


@contextmanager
def logged_in_chromium(server: Server, user: str, password: str) -> Iterator[object]:
    """Headless Chromium, logged in as `user` through Airflow's login page (which sets the `_token` cookie)."""
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
            driver.find_element(By.NAME, "username").send_keys(user)
            driver.find_element(By.NAME, "password").send_keys(password)
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


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[object]:
    """Logged in as a viewer: may read every DAG, trigger none."""
    with logged_in_chromium(server, USER, PASSWORD) as driver:
        yield driver


@pytest.fixture(scope="module")
def admin_browser(server: Server) -> Iterator[object]:
    """Logged in as an admin: may trigger DAGs (Airflow's Trigger form, the dashboard's End session now)."""
    with logged_in_chromium(server, ADMIN, ADMIN_PASSWORD) as driver:
        yield driver


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


def api_json(server: Server, path: str, user: str = USER, password: str = PASSWORD) -> dict:
    """GET one of Airflow's REST API answers with a token of `user`'s."""
    login = urllib.request.Request(f"{server.base}/auth/token", data=json.dumps(
        {"username": user, "password": password}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(login, timeout=10) as answer:
        token = json.load(answer)["access_token"]
    request = urllib.request.Request(server.base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def test_the_real_api_server_refuses_requests_without_a_login_and_lists_the_plugin(server: Server):
    for url in ("/cryoem/api/sessions", f"/cryoem/api/sessions/{server.spa.session_id}", "/cryoem/",
                f"/cryoem/api/images/micrograph/{server.spa.movies[0]}"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.base + url, timeout=10)
        assert refused.value.code == 401, url
    ours = next(p for p in api_json(server, "/api/v2/plugins")["plugins"] if p["name"] == "cryoem_dashboard")
    assert ours["fastapi_apps"][0]["url_prefix"] == "/cryoem" and ours["external_views"][0]["url_route"] == "cryoem"


def test_sessions_page_shows_the_databases_numbers_also_inside_airflows_ui(server: Server, browser: object):
    from selenium.webdriver.common.by import By

    browser.get(f"{server.base}/cryoem/")
    rows = wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr[data-session-id]"))
    assert len(rows) == db(server, "SELECT count(*) FROM session")[0][0]
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
        assert len(wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr"))) == len(rows)
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

    # The single-particle quality limits do not apply to tilts: tomo_live's form sets none, the page draws none.
    recorded = json.loads(db(server, "SELECT quality_limits FROM session WHERE session_id = :s", s=sid)[0][0])
    assert set(recorded) == set(QUALITY_LIMIT_FIELDS) and not any(recorded.values())
    wait(browser).until(lambda d: d.find_element(By.ID, "plot-ctf_resolution").get_attribute("data-points")
                        == str(movies_with(server, "ctf", sid)))
    assert all(drawn_lines(browser, f"plot-{chart}") == [] for chart in ("motion", "defocus", "astigmatism",
                                                                         "ctf_resolution"))
    assert browser.find_element(By.ID, "limits-section").get_attribute("hidden") is not None


def test_a_thumbnail_opens_enlarged_on_click_and_closes_again(server: Server, browser: object):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{server.base}/cryoem/sessions/{server.spa.session_id}")
    lightbox = None
    for kind in ("ctf_fit", "drift"):  # CTF fit 512 px, drift plot 480 px, both shown at most 256 px
        thumb = wait(browser).until(lambda d: d.find_elements(
            By.CSS_SELECTOR, f'#newest-thumbs figure[data-kind="{kind}"] img'))[0]
        natural_px = wait(browser).until(lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", thumb))
        assert thumb.size["width"] <= 256 + 2 < natural_px  # shown (in a 1 px border) smaller than the image is
        thumb.click()
        lightbox = browser.find_element(By.ID, "lightbox")
        wait(browser).until(lambda d: lightbox.is_displayed())
        enlarged = lightbox.find_element(By.TAG_NAME, "img")
        assert enlarged.get_attribute("src") == thumb.get_attribute("src")
        wait(browser).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                        enlarged))
        assert enlarged.size["width"] == natural_px  # at its own size: the window (1400 px) is wider
        assert lightbox.find_element(By.TAG_NAME, "a").get_attribute("href") == thumb.get_attribute("src")
        if kind == "ctf_fit":
            ActionChains(browser).send_keys(Keys.ESCAPE).perform()  # to the open dialog, which has the focus
            wait(browser).until(lambda d: not lightbox.is_displayed())
    screenshot(browser, "dashboard-enlarged-thumbnail.png")
    enlarged.click()  # a click on the enlarged image closes it too
    wait(browser).until(lambda d: not lightbox.is_displayed())


# The fields of one section of Airflow's trigger form as the browser shows them: each `element_<param>` input
# (a hidden one for a select), its label, help text, value and the bounds the form gave its input.
_FORM_FIELDS_JS = """
const region = document.querySelector(`[data-testid="config-form"] [id$=":content:${arguments[0]}"]`);
const fields = {};
for (const input of region.querySelectorAll('[name^="element_"]')) {
  const group = input.closest('[role="group"]');
  const help = group.querySelector('[data-part="helper-text"]');
  fields[input.name.slice("element_".length)] = {
    type: input.type, value: input.value, checked: input.checked, shown: group.getBoundingClientRect().height > 0,
    label: group.querySelector("label").textContent, help: help ? help.textContent : null,
    minimum: input.getAttribute("aria-valuemin"), maximum: input.getAttribute("aria-valuemax"),
    minLength: input.getAttribute("minlength"), maxLength: input.getAttribute("maxlength")};
}
return fields;"""


def open_form_section(driver: object, section: str) -> None:
    """Open one section of the trigger form (an accordion: opening one closes the others)."""
    from selenium.webdriver.common.by import By

    from selenium.common.exceptions import ElementClickInterceptedException

    button = driver.find_element(By.CSS_SELECTOR, f'[data-testid="config-form"] [id$=":trigger:{section}"]')

    def opened(_: object) -> bool:
        if button.get_attribute("aria-expanded") == "true":
            return True
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
        try:
            button.click()
        except ElementClickInterceptedException:  # the section closing slides the others for a moment
            pass
        return False

    wait(driver).until(opened)
    wait(driver).until(lambda d: d.execute_script(_FORM_FIELDS_JS, section) and all(
        one["shown"] for one in d.execute_script(_FORM_FIELDS_JS, section).values()))


def select_options(driver: object, name: str) -> list[str]:
    """The options a select of the trigger form offers; chooses its current option again to close it."""
    from selenium.webdriver.common.by import By

    select = driver.find_element(By.ID, f"element_{name}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", select)
    select.find_element(By.CSS_SELECTOR, "input").click()
    options = wait(driver).until(lambda d: select.find_elements(By.CSS_SELECTOR, '[role="option"]'))
    offered = [option.text for option in options]
    next(option for option in options if option.get_attribute("aria-selected") == "true").click()
    wait(driver).until(lambda d: not select.find_elements(By.CSS_SELECTOR, '[role="option"]'))
    return offered


def replace_value(driver: object, name: str, value: str) -> None:
    """Type `value` over a form field's value, then leave the field (when the form checks it)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.NAME, f"element_{name}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", field)
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value)
    field.send_keys(Keys.TAB)


def test_airflows_trigger_form_shows_every_session_setting_with_label_unit_default_and_bounds(
        server: Server, admin_browser: object):
    from selenium.webdriver.common.by import By

    driver = admin_browser
    params = api_json(server, "/api/v2/dags/spa_live/details", ADMIN, ADMIN_PASSWORD)["params"]
    assert set(params) == set(session_params())  # every session setting is a param of the DAG
    driver.get(f"{server.base}/dags/spa_live")
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="trigger-dag-button"]'))[0].click()
    form = wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="config-form"]'))[0]
    sections = list(dict.fromkeys(param["schema"]["section"] for param in params.values()))
    shown_sections = [item.get_attribute("id").split(":item:")[-1]
                      for item in form.find_elements(By.CSS_SELECTOR, ':scope > [data-part="item"]')]
    assert shown_sections == [*sections, "advancedOptions"]
    bounds_checked = 0
    labels = {}
    for section in sections:
        open_form_section(driver, section)
        fields = driver.execute_script(_FORM_FIELDS_JS, section)
        assert set(fields) == {name for name, param in params.items() if param["schema"]["section"] == section}
        for name, shown in fields.items():
            schema, default = params[name]["schema"], params[name]["value"]
            labels[name] = shown["label"].strip().removesuffix("*").strip()  # required fields are starred
            assert labels[name] == schema["title"] == form_title(name), name
            assert shown["help"] == params[name]["description"], name
            if schema["type"] == "boolean":
                assert shown["checked"] == default, name
            elif "enum" in schema:  # a select: its chosen option lives in a hidden input
                assert shown["type"] == "hidden" and shown["value"] == str(default), name
                assert select_options(driver, name) == [str(value) for value in schema["enum"]], name
            elif default is None or isinstance(default, str):
                assert shown["value"] == (default or ""), name
            else:
                assert float(shown["value"]) == default, name
            for key in ("minimum", "maximum", "minLength", "maxLength"):
                if key in schema:
                    assert float(shown[key]) == schema[key], (name, key)
                    bounds_checked += 1
    assert bounds_checked == sum(key in param["schema"] for param in params.values()
                                 for key in ("minimum", "maximum", "minLength", "maxLength")) > 60
    assert (labels["pixel_size_a"], labels["dose_per_frame_e_a2"], labels["tilt_axis_deg"],
            labels["idle_timeout_s"]) == ("Pixel size (Å)", "Dose per frame (e⁻/Å²)", "Tilt axis (°)", "Idle timeout (s)")
    screenshot(driver, "trigger-form-spa_live.png")

    # Out of bounds: above a maximum the form puts the maximum back when the field is left; below an
    # exclusive minimum (which the number field cannot hold) the Trigger button is answered with the
    # param's error in the form and no run is created.
    open_form_section(driver, "Microscope")
    voltage_max = params["voltage_kv"]["schema"]["maximum"]
    replace_value(driver, "voltage_kv", str(voltage_max * 10))
    wait(driver).until(lambda d: float(d.find_element(By.NAME, "element_voltage_kv").get_attribute("value"))
                       == voltage_max)
    open_form_section(driver, "Paths")
    for name in ("watch_dir", "processing_dir"):
        driver.find_element(By.NAME, f"element_{name}").send_keys(f"/data/visit/{name}")
    open_form_section(driver, "Acquisition")
    assert params["pixel_size_a"]["schema"]["exclusiveMinimum"] > 0
    replace_value(driver, "pixel_size_a", "0")
    driver.find_element(By.CSS_SELECTOR, '[data-testid="trigger-dag-submit"]').click()
    wait(driver).until(lambda d: "Invalid input for param pixel_size_a" in d.find_element(By.TAG_NAME, "body").text)
    assert api_json(server, "/api/v2/dags/spa_live/dagRuns", ADMIN, ADMIN_PASSWORD)["total_entries"] == 0


def test_end_session_now_records_the_stop_request_with_who_asked(server: Server, browser: object,
                                                                  admin_browser: object):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    stopping = record_session(server.store, "visit-stop", server.spa.watch_dir.parents[1],
                              SpaSimulationSettings(n_movies=2, seed=11), images_for=0)
    page = f"{server.base}/cryoem/sessions/{stopping.session_id}"
    browser.get(page)  # a viewer may not run the session's DAG: no button
    wait(browser).until(lambda d: field(d, "#state") == "live")
    assert browser.find_elements(By.ID, "end-session") == []

    admin_browser.get(page)
    button = wait(admin_browser).until(lambda d: [b for b in d.find_elements(By.ID, "end-session") if b.is_displayed()])[0]
    assert db(server, "SELECT stop_requested_by FROM session WHERE session_id = :s", s=stopping.session_id) == [(None,)]
    button.click()
    wait(admin_browser).until(expected_conditions.alert_is_present()).accept()  # "End this session now?"
    wait(admin_browser).until(lambda d: field(d, "#end-session-status").startswith("Stop requested"))
    (asked_by, asked_at), = db(server, "SELECT stop_requested_by, stop_requested_at FROM session WHERE session_id = :s",
                               s=stopping.session_id)
    assert asked_by == ADMIN and asked_at is not None
    assert not admin_browser.find_element(By.ID, "end-session").is_enabled()
    assert db(server, "SELECT count(*) FROM session WHERE stop_requested_by IS NOT NULL")[0][0] == 1
