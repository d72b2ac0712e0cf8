"""The dashboard's JSON API and pages (FastAPI TestClient, the app mounted under /cryoem as the api-server
mounts it) over results databases filled by the real ResultsStore, on SQLite and PostgreSQL: numbers equal
the database's, Airflow's authentication and DAG permissions apply, images come only from recorded paths
under the data roots."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url

from airflow_provider_cryoem.config import SessionConfig
from airflow_provider_cryoem.dashboard import queries
from airflow_provider_cryoem.dashboard.app import URL_PREFIX, create_app
from airflow_provider_cryoem.devtools.session_results import (
    BFACTOR_A2,
    FAILURE_REASON,
    FAILURE_STAGE,
    ParticleResults,
    SimulatedSession,
    record_movie,
    record_particle_results,
    record_session,
    record_tilt_series,
)
from airflow_provider_cryoem.hooks.results import ResultsHook
from airflow_provider_cryoem.results import ResultsInputError, ResultsStore, engine_from_url, schema
from airflow_provider_cryoem.simulate import SpaSimulationSettings

from ._pg import fresh_database

CONN_ID = "cryoem_dashboard_test"
RESTRICTED = "no-tomo"  # a viewer who may not read the tomo_live DAG


@dataclass
class Results:
    """A results database with three sessions, and what the app needs to find it."""

    url: str
    engine: Engine
    store: ResultsStore
    data_root: Path
    spa: SimulatedSession
    ended: SimulatedSession
    tomo: SimulatedSession
    tomogram_id: int
    particles: ParticleResults


@pytest.fixture(scope="module")
def tokens() -> Iterator[dict[str, str]]:
    """JWTs of Airflow's simple auth manager, checked by the app as the api-server checks them (the token's
    revocation list lives in Airflow's metadata database, migrated here once)."""
    from airflow import settings
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    env = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.SQL_ALCHEMY_CONN}
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "dashboard-test-secret-" + "x" * 48)
        manager = init_auth_manager()
        yield {name: manager.generate_jwt(SimpleAuthManagerUser(username=name, role=role))
               for name, role in (("viewer", "viewer"), (RESTRICTED, "viewer"), ("runner", "user"))}


@pytest.fixture(autouse=True)
def restricted_viewer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simple auth manager gives every viewer every DAG; this one may not read tomo_live."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    allowed = SimpleAuthManager.is_authorized_dag

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None):  # noqa: ANN001, ANN202
        if user.username == RESTRICTED and details is not None and details.id == "tomo_live":
            return False
        return allowed(self, method=method, user=user, access_entity=access_entity, details=details)

    monkeypatch.setattr(SimpleAuthManager, "is_authorized_dag", is_authorized_dag)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def results(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    """A live SPA session (24 movies, every 6th failing CTF, thumbnails for two), an ended one and a
    tomography one, written through the real store; the app finds the database as the api-server does."""
    tmp = tmp_path_factory.mktemp(f"dashboard_{request.param}")
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp / 'results.sqlite'}"
            patch.setenv("CRYOEM_RESULTS_SQLITE", str(tmp / "results.sqlite"))
            patch.delenv("CRYOEM_RESULTS_CONN_ID", raising=False)
            context = None
        else:
            context = fresh_database(admin_url=request.getfixturevalue("pg_admin_url"))
            url = context.__enter__()
            airflow_uri = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            patch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", airflow_uri)
            patch.setenv("CRYOEM_RESULTS_CONN_ID", CONN_ID)
        data_root = tmp / "data"
        patch.setenv("CRYOEM_DATA_ROOTS", str(data_root))
        store = ResultsStore(engine_from_url(url))
        store.ensure_schema()
        spa = record_session(store, "visit-spa", data_root, SpaSimulationSettings(n_movies=24, seed=3),
                             failed_every=6, images_for=2)
        ended = record_session(store, "visit-ended", data_root, SpaSimulationSettings(n_movies=4, seed=4),
                               images_for=0, end_reason="end marker END_OF_SESSION found")
        tomo = record_session(store, "visit-tomo", data_root, SpaSimulationSettings(n_movies=6, seed=5),
                              recipe="tomo_live", images_for=0)
        tomogram_id = record_tilt_series(store, tomo)
        particles = record_particle_results(store, spa)
        try:
            yield Results(url=url, engine=store.engine, store=store, data_root=data_root, spa=spa, ended=ended,
                          tomo=tomo, tomogram_id=tomogram_id,
                          particles=particles)
        finally:
            store.engine.dispose()
            if context is not None:
                context.__exit__(None, None, None)


@pytest.fixture
def client(results: Results) -> TestClient:
    parent = FastAPI()
    parent.mount(URL_PREFIX, create_app())
    return TestClient(parent)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def scalar(engine: Engine, statement) -> int:  # noqa: ANN001
    with engine.connect() as connection:
        return connection.execute(statement).scalar_one()


def movies_with(engine: Engine, table, session_id: int) -> int:  # noqa: ANN001
    job = schema.processing_job
    return scalar(engine, select(func.count(func.distinct(table.c.movie_id))).select_from(table.join(job))
                  .where(job.c.session_id == session_id))


def per_movie(engine: Engine, session_id: int, sql_value: str, join: str, order: str = "m.created_time_stamp, m.movie_number") -> list:
    """A per-movie value straight from the tables (one job per movie here), in the given movie order."""
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(text(
            f"SELECT {sql_value} FROM movie m JOIN {join} r ON r.movie_id = m.movie_id "
            f"WHERE m.session_id = :sid ORDER BY {order}"), {"sid": session_id})]


def test_the_plugin_is_registered_by_its_entry_point_with_an_app_and_a_nav_entry():
    assert any(point.value == "airflow_provider_cryoem.dashboard.plugin:CryoemDashboardPlugin"
               for point in entry_points(group="airflow.plugins"))
    from airflow import plugins_manager

    apps, _ = plugins_manager.get_fastapi_plugins()
    assert [app["url_prefix"] for app in apps if app["name"] == "Cryo-EM sessions"] == [URL_PREFIX]
    views, _ = plugins_manager._get_ui_plugins()
    view = next(view for view in views if view["url_route"] == "cryoem")
    assert view["href"] == "cryoem/" and view["destination"] == "nav"


def test_sessions_list_shows_every_readable_session_with_the_databases_counts(results: Results, client: TestClient,
                                                                             tokens: dict[str, str]):
    response = client.get(f"{URL_PREFIX}/api/sessions", headers=auth(tokens["viewer"]))
    assert response.status_code == 200
    page = response.json()
    assert page["total"] == scalar(results.engine, select(func.count()).select_from(schema.session)) == 3
    rows = {row["name"]: row for row in page["sessions"]}
    for simulated, name in ((results.spa, "visit-spa"), (results.ended, "visit-ended"), (results.tomo, "visit-tomo")):
        row, sid = rows[name], simulated.session_id
        movie = schema.movie
        assert row["session_id"] == sid
        assert row["movies"] == scalar(results.engine, select(func.count()).where(movie.c.session_id == sid))
        assert row["failed"] == scalar(results.engine, select(func.count()).where(
            movie.c.session_id == sid, movie.c.status == "failed"))
        assert row["files_claimed"] == scalar(results.engine, select(func.count()).select_from(
            schema.session_file).where(schema.session_file.c.session_id == sid))
        for stage, table in queries.PER_MOVIE_TABLES.items():
            assert row["processed"][stage] == movies_with(results.engine, table, sid), (name, stage)
        assert row["latest_run"]["run_id"] == simulated.run_id
    assert rows["visit-spa"]["failed"] == 4 and rows["visit-spa"]["processed"]["ctf"] == 20
    assert rows["visit-spa"]["state"] == "live" and rows["visit-spa"]["experiment"] == "spa"
    assert rows["visit-ended"]["state"] == "ended"
    assert rows["visit-ended"]["end_reason"] == "end marker END_OF_SESSION found"
    assert rows["visit-tomo"]["experiment"] == "tomography" and rows["visit-tomo"]["tilt_series"] == 1
    assert [row["name"] for row in page["sessions"]] == ["visit-tomo", "visit-ended", "visit-spa"]  # newest first

    second = client.get(f"{URL_PREFIX}/api/sessions?offset=1&limit=1", headers=auth(tokens["viewer"])).json()
    assert second["total"] == 3 and [row["name"] for row in second["sessions"]] == ["visit-ended"]


def test_session_detail_counters_series_histograms_and_movie_page_equal_the_database(
        results: Results, client: TestClient, tokens: dict[str, str]):
    sid = results.spa.session_id
    detail = client.get(f"{URL_PREFIX}/api/sessions/{sid}?limit=10", headers=auth(tokens["viewer"])).json()
    summary = results.store.session_summary(sid)
    assert detail["summary"]["stages"] == summary.model_dump(mode="json")["stages"]
    assert detail["summary"]["stages"][FAILURE_STAGE]["failed"] == len(results.spa.failed) == 4
    assert detail["summary"]["median_total_motion_a"] == pytest.approx(summary.median_total_motion_a)

    motion = per_movie(results.engine, sid, "r.total_motion_a", "motion_correction")
    assert detail["series"]["total_motion_a"]["v"] == pytest.approx(motion)
    assert detail["series"]["total_motion_a"]["count"] == 24 and not detail["series"]["total_motion_a"]["downsampled"]
    assert detail["series"]["total_motion_a"]["t"] == sorted(detail["series"]["total_motion_a"]["t"])
    defocus_u = per_movie(results.engine, sid, "r.defocus_u_a", "ctf")
    assert detail["series"]["defocus_u_a"]["v"] == pytest.approx(defocus_u) and len(defocus_u) == 20
    assert detail["series"]["ice_thickness"]["v"] == pytest.approx(
        per_movie(results.engine, sid, "r.median", "relative_ice_thickness"))
    assert detail["series"]["particles"]["v"] == per_movie(results.engine, sid, "r.number_of_particles",
                                                           "particle_picker")
    for key, values in (("total_motion_a", motion), ("defocus_u_a", defocus_u)):
        histogram = detail["histograms"][key]
        assert sum(histogram["counts"]) == len(values) and len(histogram["counts"]) == queries.HISTOGRAM_BINS
        assert histogram["edges"][0] == pytest.approx(min(values)) and histogram["edges"][-1] == pytest.approx(max(values))

    page = detail["movies"]
    assert page["total"] == 24 and len(page["movies"]) == 10
    assert [movie["movie_number"] for movie in page["movies"]] == list(range(24, 14, -1))
    assert detail["newest_movie"]["movie_number"] == 2  # the newest movie with thumbnails
    assert set(detail["newest_movie"]["images"]) == {"micrograph", "drift", "ctf_fit", "picks"}
    assert detail["tilt_series"] == []


def test_the_sessions_quality_limits_come_with_the_plots_and_movies_beyond_them_are_counted(
        results: Results, client: TestClient, tokens: dict[str, str]):
    sid = results.spa.session_id
    detail = client.get(f"{URL_PREFIX}/api/sessions/{sid}", headers=auth(tokens["viewer"])).json()
    recorded = json.loads(scalar(results.engine, select(schema.session.c.quality_limits)
                                 .where(schema.session.c.session_id == sid)))
    assert recorded == SessionConfig().quality_limits()  # what a run's opening records
    limits = detail["limits"]
    assert limits["ctf_resolution_a"] == {"low": None, "high": recorded["max_ctf_fit_resolution_a"],
                                          "settings": ["max_ctf_fit_resolution_a"]}
    assert limits["defocus_u_a"]["low"] == limits["defocus_v_a"]["low"] == recorded["min_defocus_a"]
    assert "ice_thickness" not in limits and "particles" not in limits  # no limit set by default
    worse = per_movie(results.engine, sid, "r.estimated_resolution_a", "ctf")
    beyond = sum(value > recorded["max_ctf_fit_resolution_a"] for value in worse)
    assert detail["beyond_limits"]["ctf_resolution_a"] == beyond > 0
    assert detail["beyond_limits"]["total_motion_a"] == sum(
        value > recorded["max_total_motion_a"] for value in per_movie(results.engine, sid, "r.total_motion_a",
                                                                     "motion_correction"))

    # A run that opens the session with other limits replaces them; an unset side is no limit.
    results.store.set_quality_limits(sid, SessionConfig(max_ctf_fit_resolution_a=None, min_particles_per_micrograph=25,
                                                        max_relative_ice_thickness=1.0).quality_limits())
    try:
        detail = client.get(f"{URL_PREFIX}/api/sessions/{sid}", headers=auth(tokens["viewer"])).json()
        assert "ctf_resolution_a" not in detail["limits"]
        assert detail["limits"]["particles"]["low"] == 25 and detail["limits"]["ice_thickness"]["high"] == 1.0
        picks = per_movie(results.engine, sid, "r.number_of_particles", "particle_picker")
        assert detail["beyond_limits"]["particles"] == sum(value < 25 for value in picks)
    finally:
        results.store.set_quality_limits(sid, SessionConfig().quality_limits())
    with pytest.raises(ResultsInputError, match="max_total_motion_a"):
        results.store.set_quality_limits(sid, {"max_total_motion_a": float("nan")})


def test_class_batches_show_each_class_with_its_selection_score_and_image(
        results: Results, client: TestClient, tokens: dict[str, str]):
    headers = auth(tokens["viewer"])
    detail = client.get(f"{URL_PREFIX}/api/sessions/{results.spa.session_id}", headers=headers).json()
    table = schema.particle_classification
    with results.engine.connect() as connection:
        rows = {(row.particle_classification_group_id, row.class_number): row
                for row in connection.execute(select(table))}
    batches = detail["classes_2d"]
    assert [batch["group_id"] for batch in batches] == results.particles.class2d_groups[::-1]  # newest first
    for batch in batches:
        assert len(batch["classes"]) == batch["classes_per_batch"] == 12
        particles = [one["particles"] for one in batch["classes"]]
        assert particles == sorted(particles, reverse=True)
        for one in batch["classes"]:
            row = rows[(batch["group_id"], one["class_number"])]
            assert (one["selected"], one["score"], one["particles"]) == (row.selected, row.selection_score,
                                                                          row.particles_per_class)
        selected = [one["score"] for one in batch["classes"] if one["selected"]]
        rejected = [one["score"] for one in batch["classes"] if not one["selected"]]
        assert selected and rejected and min(selected) >= SessionConfig().class_selection_min_score > max(rejected)
    one = batches[0]["classes"][0]
    image = client.get(f"{URL_PREFIX}/api/images/class2d/{one['image_id']}", headers=headers)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    from PIL import Image

    drawn = Image.open(io.BytesIO(image.content))
    assert drawn.size == (128, 128) and drawn.mode == "L"  # the 64-px average enlarged twice

    (classes_3d,) = detail["classes_3d"]
    assert classes_3d["initial_model_resolution_a"] == 16.0
    assert [one["class_number"] for one in classes_3d["classes"] if one["selected"]] == [1]
    volume = client.get(f"{URL_PREFIX}/api/images/class3d/{classes_3d['classes'][0]['image_id']}", headers=headers)
    assert volume.status_code == 200 and Image.open(io.BytesIO(volume.content)).size == (96, 96)

    # A recorded stack outside the data roots is refused like any image.
    with results.engine.begin() as connection:
        connection.execute(table.update().where(table.c.particle_classification_id == one["image_id"])
                           .values(class_image_full_path="000001@/etc/outside.mrcs"))
    try:
        assert client.get(f"{URL_PREFIX}/api/images/class2d/{one['image_id']}", headers=headers).status_code == 403
    finally:
        with results.engine.begin() as connection:
            connection.execute(table.update().where(table.c.particle_classification_id == one["image_id"])
                               .values(class_image_full_path=rows[(batches[0]["group_id"], one["class_number"])]
                                       .class_image_full_path))


def test_refinements_come_with_relions_fsc_curve_and_the_bfactor_series_with_its_fit(
        results: Results, client: TestClient, tokens: dict[str, str]):
    detail = client.get(f"{URL_PREFIX}/api/sessions/{results.spa.session_id}", headers=auth(tokens["viewer"])).json()
    (refined,) = detail["refinements"]
    assert refined["refinement_id"] == results.particles.refinement_id and refined["fsc_problem"] is None
    fsc = refined["fsc"]
    crossing = next(f for f, c in zip(fsc["frequency_inv_a"], fsc["corrected"]) if c < 0.143)
    assert 1 / crossing <= refined["resolution_a"] < 1 / crossing + 0.5  # the shell after the recorded resolution
    bfactor = detail["bfactor"]
    assert bfactor["particles"] == sorted(bfactor["particles"]) and len(bfactor["particles"]) == 4
    assert bfactor["bfactor_a2"] == pytest.approx(BFACTOR_A2)  # the series was recorded along B = BFACTOR_A2
    assert bfactor["bfactor_a2"] == pytest.approx(results.store.session_summary(results.spa.session_id).bfactor_a2)


def test_the_fsc_curve_is_read_from_a_real_relion_postprocess_star(tmp_path: Path):
    """tests/fixtures/tools/relion_3.1.3_postprocess.star: written by Relion 3.1.3's relion_postprocess (Debian
    package) on two simulated 48³ half maps at 2 Å/px with a soft spherical mask (final resolution 5.33 Å)."""
    fixture = Path(__file__).parent / "fixtures" / "tools" / "relion_3.1.3_postprocess.star"
    curve = queries.fsc_curve(fixture, [fixture.parent])
    assert len(curve.frequency_inv_a) == len(curve.corrected) == len(curve.unmasked) == 25
    assert curve.frequency_inv_a[-1] == pytest.approx(0.25)  # Nyquist at 2 Å/px
    first_below = next(index for index, value in enumerate(curve.corrected) if value < 0.143)
    assert 1 / curve.frequency_inv_a[first_below - 1] == pytest.approx(5.333333, abs=1e-3)  # rlnFinalResolution
    with pytest.raises(ValueError, match="outside"):
        queries.fsc_curve(fixture, [tmp_path])
    broken = tmp_path / "postprocess.star"
    broken.write_text("data_general\n\n_rlnFinalResolution 4.0\n")
    with pytest.raises(ValueError, match="data_fsc"):
        queries.fsc_curve(broken, [tmp_path])


def test_the_movie_table_is_sorted_paged_and_filtered_in_sql_with_failure_reasons(
        results: Results, client: TestClient, tokens: dict[str, str]):
    sid = results.spa.session_id
    url = f"{URL_PREFIX}/api/sessions/{sid}/movies"
    best_first = per_movie(results.engine, sid, "r.estimated_resolution_a", "ctf", order="r.estimated_resolution_a")
    first = client.get(f"{url}?sort=ctf_resolution_a&order=asc&limit=7", headers=auth(tokens["viewer"])).json()
    second = client.get(f"{url}?sort=ctf_resolution_a&order=asc&limit=7&offset=7", headers=auth(tokens["viewer"])).json()
    shown = [movie["ctf_resolution_a"] for movie in first["movies"] + second["movies"]]
    assert shown == pytest.approx(best_first[:14])
    last = client.get(f"{url}?sort=ctf_resolution_a&order=asc&limit=10&offset=18", headers=auth(tokens["viewer"])).json()
    assert [movie["ctf_resolution_a"] for movie in last["movies"]][:2] == pytest.approx(best_first[18:])
    assert [movie["ctf_resolution_a"] for movie in last["movies"]][2:] == [None] * 4  # failed CTF sorts last

    failed = client.get(f"{url}?status=failed", headers=auth(tokens["viewer"])).json()
    assert failed["total"] == 4
    assert sorted(movie["movie_id"] for movie in failed["movies"]) == sorted(results.spa.failed)
    assert {movie["failure_reason"] for movie in failed["movies"]} == {f"{FAILURE_STAGE}: {FAILURE_REASON}"}
    assert client.get(f"{url}?sort=movie_full_path", headers=auth(tokens["viewer"])).status_code == 422
    assert client.get(f"{url}?limit=100000", headers=auth(tokens["viewer"])).status_code == 422


def test_tomography_series_show_tilt_counts_residuals_and_images(results: Results, client: TestClient,
                                                                  tokens: dict[str, str]):
    sid = results.tomo.session_id
    series = client.get(f"{URL_PREFIX}/api/sessions/{sid}/tilt_series", headers=auth(tokens["viewer"])).json()
    assert len(series) == 1
    one = series[0]
    assert (one["name"], one["status"], one["tilts"], one["expected_tilts"]) == ("TS_01", "complete", 6, 7)
    assert one["tomogram"]["tomogram_id"] == results.tomogram_id
    assert one["tomogram"]["residual_error_mean_px"] == 1.25
    residuals = one["tomogram"]["residuals"]
    assert [r["tilt_angle_deg"] for r in residuals] == pytest.approx([-5.9, -2.9, 0.1, 3.1, 6.1, 9.1])
    assert [r["residual_error_px"] for r in residuals] == pytest.approx([1.6, 1.3, 1.0, 1.3, 1.6, 1.9])
    processed = schema.processed_tomogram
    with results.engine.connect() as connection:
        ids = dict(connection.execute(select(processed.c.processing_type, processed.c.processed_tomogram_id)
                                      .where(processed.c.tomogram_id == results.tomogram_id)).all())
    assert one["tomogram"]["images"] == {"central_slice": results.tomogram_id, "denoised_slice": ids["Denoised"],
                                         "segmentation_slice": ids["Segmented"],
                                         "segmentation_projection": ids["Segmented"]}
    for kind, row_id in one["tomogram"]["images"].items():
        image = client.get(f"{URL_PREFIX}/api/images/{kind}/{row_id}", headers=auth(tokens["viewer"]))
        assert image.status_code == 200 and image.headers["content-type"] == "image/png", kind
    assert client.get(f"{URL_PREFIX}/api/sessions/{sid}", headers=auth(tokens["viewer"])).json()["tilt_series"] == series


def test_every_endpoint_refuses_a_request_without_a_valid_airflow_login(results: Results, client: TestClient,
                                                                         tokens: dict[str, str]):
    sid = results.spa.session_id
    urls = ["/", f"/sessions/{sid}", "/api/sessions", f"/api/sessions/{sid}", f"/api/sessions/{sid}/movies",
            f"/api/sessions/{sid}/tilt_series", f"/api/images/micrograph/{results.spa.movies[0]}",
            "/static/dashboard.js", "/static/uPlot.iife.min.js"]
    for url in urls:
        assert client.get(URL_PREFIX + url).status_code == 401, url
        assert client.get(URL_PREFIX + url, headers=auth("not.a.token")).status_code in (401, 403), url
        assert client.get(URL_PREFIX + url, headers=auth(tokens["viewer"])).status_code == 200, url
    page = client.get(f"{URL_PREFIX}/sessions/{sid}")
    assert "text/html" in page.headers["content-type"] and 'id="login"' in page.text and "/auth/login" in page.text
    client.cookies.set("_token", tokens["viewer"])  # how the browser sends it after Airflow's login page
    assert client.get(f"{URL_PREFIX}/api/sessions").status_code == 200


def test_a_user_sees_only_sessions_of_dags_they_may_read(results: Results, client: TestClient,
                                                         tokens: dict[str, str]):
    headers = auth(tokens[RESTRICTED])
    page = client.get(f"{URL_PREFIX}/api/sessions", headers=headers).json()
    assert page["total"] == 2 and {row["name"] for row in page["sessions"]} == {"visit-spa", "visit-ended"}
    sid = results.tomo.session_id
    for url in (f"/api/sessions/{sid}", f"/api/sessions/{sid}/movies", f"/api/sessions/{sid}/tilt_series",
                f"/sessions/{sid}", f"/api/images/central_slice/{results.tomogram_id}"):
        assert client.get(URL_PREFIX + url, headers=headers).status_code == 403, url
    assert client.get(f"{URL_PREFIX}/api/sessions/{results.spa.session_id}", headers=headers).status_code == 200
    assert client.get(f"{URL_PREFIX}/api/sessions/999999", headers=headers).status_code == 404


def _record_image_path(results: Results, session: SimulatedSession, path: str) -> int:
    """A new movie of `session` whose recorded micrograph snapshot is `path`; the motion row's id."""
    movie_id = record_movie(results.store, session)
    table = schema.motion_correction
    with results.engine.begin() as connection:
        connection.execute(table.update().where(table.c.movie_id == movie_id).values(micrograph_snapshot_full_path=path))
        return connection.execute(select(table.c.motion_correction_id).where(table.c.movie_id == movie_id)).scalar_one()


def test_images_are_served_by_row_id_only_from_recorded_paths_under_the_data_roots(
        results: Results, client: TestClient, tokens: dict[str, str], tmp_path: Path):
    headers = auth(tokens["viewer"])
    session = record_session(results.store, f"visit-images-{tmp_path.name}", results.data_root,
                             SpaSimulationSettings(n_movies=1, seed=6), images_for=1)
    motion = schema.motion_correction
    with results.engine.connect() as connection:
        row_id, recorded = connection.execute(select(motion.c.motion_correction_id, motion.c.micrograph_snapshot_full_path)
                                              .where(motion.c.movie_id == session.movies[0])).one()
    served = client.get(f"{URL_PREFIX}/api/images/micrograph/{row_id}", headers=headers)
    assert served.status_code == 200 and served.content == Path(recorded).read_bytes()
    assert served.headers["content-type"] == "image/jpeg" and served.headers["x-content-type-options"] == "nosniff"

    # A path in the request is never read: kinds and row ids only.
    for attempt in ("/api/images/micrograph/..%2F..%2F..%2Fetc%2Fpasswd", "/api/images/..%2F..%2Fetc%2Fpasswd/1",
                    "/api/images/%2Fetc%2Fpasswd/1", f"/api/images/micrograph/{row_id}/../../../../etc/passwd",
                    f"/api/images/micrograph/{row_id}%2F..%2F..%2Fetc%2Fpasswd"):
        response = client.get(URL_PREFIX + attempt, headers=headers)
        assert response.status_code in (404, 422) and b"root:" not in response.content, attempt

    # Recorded paths that lead outside the data roots, or to something not an image, are refused.
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    secret.write_bytes(served.content)
    link = session.processing_dir / "link.png"
    link.symlink_to(secret)
    star = session.processing_dir / "picks.star"
    star.write_text("data_\n")
    relative_escape = os.path.relpath(secret, session.processing_dir)
    assert relative_escape.startswith("..")
    for path, status in ((str(secret), 403), (relative_escape, 403), (str(link), 403), (str(star), 403),
                         (str(session.processing_dir / "gone.png"), 404), ("/etc/passwd", 403)):
        refused = client.get(f"{URL_PREFIX}/api/images/micrograph/{_record_image_path(results, session, path)}",
                             headers=headers)
        assert refused.status_code == status and secret.read_bytes() not in refused.content, path
    inside = _record_image_path(results, session, Path(recorded).name)  # relative: inside the processing folder
    assert client.get(f"{URL_PREFIX}/api/images/micrograph/{inside}", headers=headers).content == served.content
    assert client.get(f"{URL_PREFIX}/api/images/micrograph/999999", headers=headers).status_code == 404


def test_ctf_image_is_the_picture_beside_the_recorded_diagnostic_spectrum(
        results: Results, client: TestClient, tokens: dict[str, str], tmp_path: Path):
    """A CTF row records the .ctf MRC (Relion's rlnCtfImage); the dashboard serves `<stem>_ctf.png` beside it."""
    session = record_session(results.store, f"visit-ctf-{tmp_path.name}", results.data_root,
                             SpaSimulationSettings(n_movies=1, seed=7), images_for=1)
    ctf = schema.ctf
    with results.engine.begin() as connection:
        row_id, picture = connection.execute(select(ctf.c.ctf_id, ctf.c.fft_theoretical_full_path)
                                             .where(ctf.c.movie_id == session.movies[0])).one()
        spectrum = session.processing_dir / "CtfFind" / "mic.ctf"
        spectrum.parent.mkdir(parents=True, exist_ok=True)
        spectrum.write_bytes(b"MRC spectrum, not for browsers")
        connection.execute(ctf.update().where(ctf.c.ctf_id == row_id).values(fft_theoretical_full_path=str(spectrum)))
    url = f"{URL_PREFIX}/api/images/ctf_fit/{row_id}"
    assert client.get(url, headers=auth(tokens["viewer"])).status_code == 404  # no picture drawn beside it yet
    spectrum.with_name("mic_ctf.png").write_bytes(Path(picture).read_bytes())
    served = client.get(url, headers=auth(tokens["viewer"]))
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content == Path(picture).read_bytes()


def test_pages_and_static_files_are_served_with_the_api_path_of_the_mount(results: Results, client: TestClient,
                                                                          tokens: dict[str, str]):
    headers = auth(tokens["viewer"])
    sessions = client.get(f"{URL_PREFIX}/", headers=headers)
    assert sessions.status_code == 200 and f'data-api="{URL_PREFIX}/api"' in sessions.text
    assert 'data-page="sessions"' in sessions.text
    session = client.get(f"{URL_PREFIX}/sessions/{results.spa.session_id}", headers=headers)
    assert f'data-session-id="{results.spa.session_id}"' in session.text
    assert client.get(f"{URL_PREFIX}/sessions/999999", headers=headers).status_code == 404
    script = client.get(f"{URL_PREFIX}/static/uPlot.iife.min.js", headers=headers)
    assert script.status_code == 200 and script.text.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32)")
    assert client.get(f"{URL_PREFIX}/static/..%2Fapp.py", headers=headers).status_code == 404
    assert client.get(f"{URL_PREFIX}/static/queries.py", headers=headers).status_code == 404


def test_the_dashboards_reader_cannot_write(results: Results):
    store = ResultsHook(os.environ.get("CRYOEM_RESULTS_CONN_ID")).get_reader()
    try:
        assert store.schema_version() > 0
        with pytest.raises(Exception, match="(?i)read.?only|readonly"):
            store.get_or_create_session("written-by-the-dashboard", "/data/x", "/data/y")
    finally:
        store.engine.dispose()


def test_downsampling_keeps_at_most_the_limit_with_spikes_and_extremes():
    rng = np.random.default_rng(0)
    t = np.arange(10_000, dtype=float)
    v = rng.normal(30.0, 1.0, size=10_000)
    v[7777], v[123] = 95.0, -20.0
    kept_t, kept_v = queries.downsample(t, v)
    assert len(kept_v) <= queries.MAX_POINTS and np.all(np.diff(kept_t) > 0)
    assert 95.0 in kept_v and -20.0 in kept_v and 7777.0 in kept_t
    short_t, short_v = queries.downsample(t[:50], v[:50])
    assert np.array_equal(short_v, v[:50])


def test_plots_of_a_long_session_are_downsampled_but_histograms_count_every_movie():
    n = 5000
    times = 1.7e9 + 5.0 * np.arange(n)
    values = {metric.key: np.full(n, np.nan) for metric in queries.METRICS}
    values["total_motion_a"] = (np.arange(n) % 97).astype(float)
    values["particles"][::3] = 100.0  # a third of the movies picked: fewer than MAX_POINTS
    series, histograms = queries.plots(times, values)
    assert series["total_motion_a"].count == n and series["total_motion_a"].downsampled
    assert len(series["total_motion_a"].v) <= queries.MAX_POINTS and max(series["total_motion_a"].v) == 96.0
    picked = len(range(0, n, 3))
    assert sum(histograms["total_motion_a"].counts) == n and sum(histograms["particles"].counts) == picked
    assert series["particles"].count == picked and not series["particles"].downsampled
    assert series["particles"].t == times[::3].tolist()
    assert series["defocus_u_a"].count == 0 and histograms["defocus_u_a"].counts == []


def test_a_bulk_recorded_session_has_the_rows_the_store_writes(tmp_path: Path):
    """bulk_record_session (the benchmark's 10,000 movies) writes what record_session writes, faster."""
    from airflow_provider_cryoem.devtools.session_results import bulk_record_session

    store = ResultsStore(engine_from_url(f"sqlite:///{tmp_path / 'results.sqlite'}"))
    store.ensure_schema()
    settings = SpaSimulationSettings(n_movies=40, seed=9)
    bulk = bulk_record_session(store, "bulk", tmp_path / "data", settings, failed_every=20)
    one_by_one = record_session(store, "one-by-one", tmp_path / "data", settings, failed_every=20, images_for=0)
    bulk_summary, summary = store.session_summary(bulk.session_id), store.session_summary(one_by_one.session_id)
    assert bulk_summary.stages == summary.stages and summary.stages[FAILURE_STAGE].failed == 2
    assert (bulk_summary.files_claimed, bulk_summary.movies_registered) == (40, 40)
    assert bulk_summary.median_total_motion_a == pytest.approx(summary.median_total_motion_a)  # same seed, values
    page = store.read(lambda connection: queries.movie_page(connection, bulk.session_id, limit=2, order="asc"))
    assert (page.movies[1].acquired - page.movies[0].acquired).total_seconds() == settings.acquisition_interval_s
    failed = store.read(lambda connection: queries.movie_page(connection, bulk.session_id, status="failed"))
    assert [movie.movie_number for movie in failed.movies] == [40, 20]
    assert {movie.failure_reason for movie in failed.movies} == {f"{FAILURE_STAGE}: {FAILURE_REASON}"}
    store.engine.dispose()


def test_a_poll_with_nothing_new_reuses_the_last_read_and_new_results_show_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The per-movie pass (plots and summary) is cached per session on a change marker; a new movie, a new
    result row, or an entry older than PER_MOVIE_CACHE_S (a retry rewriting a row in place) reads again."""
    store = ResultsStore(engine_from_url(f"sqlite:///{tmp_path / 'results.sqlite'}"))
    store.ensure_schema()
    session = record_session(store, "polled", tmp_path / "data", SpaSimulationSettings(n_movies=6, seed=11),
                             images_for=0)
    reads: list[int] = []
    read_per_movie = queries._per_movie
    monkeypatch.setattr(queries, "_per_movie", lambda connection, sid: reads.append(sid) or read_per_movie(connection, sid))

    def detail() -> queries.SessionDetail:
        return store.read(lambda connection: queries.session_detail(connection, session.session_id))

    first = detail()
    assert detail() == first and reads == [session.session_id]
    record_movie(store, session, fail=True)  # a movie with motion correction and a CTF failure only
    after_movie = detail()
    assert len(reads) == 2 and after_movie.series["total_motion_a"].count == 7
    assert after_movie.series["defocus_u_a"].count == 6 and after_movie.summary.stages[FAILURE_STAGE].failed == 1
    assert after_movie.summary.stages == store.session_summary(session.session_id).stages

    rewritten = session.movies[0]
    with store.engine.begin() as connection:  # a retry of the same job rewrites its row: no new id, same counts
        connection.execute(schema.motion_correction.update().where(
            schema.motion_correction.c.movie_id == rewritten).values(total_motion_a=99.5))
    assert 99.5 not in detail().series["total_motion_a"].v and len(reads) == 2  # reused while young
    monkeypatch.setattr(queries, "PER_MOVIE_CACHE_S", 0.0)
    assert 99.5 in detail().series["total_motion_a"].v and len(reads) == 3
    store.engine.dispose()


def test_only_a_user_who_may_run_the_sessions_dags_can_ask_it_to_end_and_the_request_is_recorded(
        results: Results, client: TestClient, tokens: dict[str, str]):
    sid, url = results.spa.session_id, f"{URL_PREFIX}/api/sessions/{results.spa.session_id}/stop"
    stop_header = {"X-Cryoem-Request": "stop"}
    page = client.get(f"{URL_PREFIX}/sessions/{sid}", headers=auth(tokens["runner"])).text
    assert 'id="end-session"' in page
    assert 'id="end-session"' not in client.get(f"{URL_PREFIX}/sessions/{sid}", headers=auth(tokens["viewer"])).text
    assert client.post(url).status_code == 401
    refused = client.post(url, headers={**auth(tokens["viewer"]), **stop_header})
    assert refused.status_code == 403 and "permission to run its DAGs (spa_live)" in refused.json()["detail"]
    tomo = f"{URL_PREFIX}/api/sessions/{results.tomo.session_id}/stop"
    assert client.post(tomo, headers={**auth(tokens[RESTRICTED]), **stop_header}).status_code == 403
    assert client.post(url, headers=auth(tokens["runner"])).status_code == 403  # no header: not from the page
    assert results.store.stop_requested_by(sid) is None
    try:
        answer = client.post(url, headers={**auth(tokens["runner"]), **stop_header})
        assert answer.status_code == 200 and answer.json()["requested"] is True
        assert results.store.stop_requested_by(sid) == "runner"
        again = client.post(url, headers={**auth(tokens["runner"]), **stop_header})
        assert again.status_code == 200 and again.json()["requested"] is False
        assert results.store.stop_requested_by(results.ended.session_id) is None  # other sessions untouched
        assert client.post(f"{URL_PREFIX}/api/sessions/999999/stop",
                           headers={**auth(tokens["runner"]), **stop_header}).status_code == 404
    finally:  # the module's sessions are shared by the other tests
        with results.engine.begin() as connection:
            connection.execute(schema.session.update().where(schema.session.c.session_id == sid)
                               .values(stop_requested_at=None, stop_requested_by=None))
