"""The dashboard's FastAPI app: a JSON API over the results store and the pages that poll it.

Airflow's api-server mounts it under /cryoem (plugin.py). Routes, all behind Airflow's login (access.py):
  GET /                                   sessions page
  GET /sessions/{id}                      session page
  GET /api/sessions?offset&limit          sessions of the DAGs the user may read, newest first
  GET /api/sessions/{id}?offset&limit&sort&order&status
                                          counters, plot series, histograms, one page of movies, tilt series
  GET /api/sessions/{id}/movies?...       one page of the movie table alone
  GET /api/sessions/{id}/tilt_series      tilt series with tilt counts, residuals, tomogram images
  POST /api/sessions/{id}/stop            ask the live session to end now (users who may run all its DAGs;
                                          header X-Cryoem-Request: stop, which no cross-site form can send)
  GET /api/images/{kind}/{row_id}         an image recorded by a result row (images.py)
  GET /static/{name}                      the pages' script, style sheet and the vendored uPlot
The results database is the workers' one: the Airflow connection named by CRYOEM_RESULTS_CONN_ID, else
the SQLite file CRYOEM_RESULTS_SQLITE (demo), read through ResultsHook.get_reader; the one write, a stop
request, goes through ResultsHook.get_writer (no schema change).
"""
from __future__ import annotations

import functools
import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import Connection
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..hooks.results import ResultsHook
from ..io import ImageFileError
from ..pipeline.session import RESULTS_CONN_ENV
from ..results import ResultsNotFoundError, ResultsStore, ResultsUnavailableError
from ..results.engine import SQLITE_ENV
from . import images, queries
from .access import CurrentUser, login_url, may_run_every_dag, readable_dag_ids
from .plugin import URL_PREFIX

POLL_ENV = "CRYOEM_DASHBOARD_POLL_S"
HERE = Path(__file__).resolve().parent
STATIC_FILES = {  # name -> media type; nothing else under static/ is served
    "dashboard.js": "text/javascript", "dashboard.css": "text/css", "icon.svg": "image/svg+xml",
    "uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css",
}
MAX_PAGE = 500
STOP_HEADER = "X-Cryoem-Request"
T = TypeVar("T")
StoreFactory = Callable[[], ResultsStore]
templates = Jinja2Templates(directory=HERE / "templates")


@functools.lru_cache(maxsize=4)
def _reader(conn_id: str | None, sqlite_path: str | None) -> ResultsStore:
    return ResultsHook(conn_id).get_reader()


@functools.lru_cache(maxsize=4)
def _writer(conn_id: str | None, sqlite_path: str | None) -> ResultsStore:
    return ResultsHook(conn_id).get_writer()


def configured_writer() -> ResultsStore:
    """The writing store of the configured results database, for stop requests only."""
    return _writer(os.environ.get(RESULTS_CONN_ENV) or None, os.environ.get(SQLITE_ENV) or None)


def configured_store() -> ResultsStore:
    """The read-only store of the configured results database (one engine per configuration)."""
    return _reader(os.environ.get(RESULTS_CONN_ENV) or None, os.environ.get(SQLITE_ENV) or None)


def _visible(connection: Connection, user: BaseUser, session_id: int) -> None:
    """404 for a session that does not exist, 403 for one of DAGs the user may not read."""
    if not queries.has_tables(connection):
        raise ResultsNotFoundError(f"no session {session_id}: the results database has no tables yet")
    if not readable_dag_ids(user, queries.session_dag_ids(connection, session_id)):
        raise HTTPException(403, f"session {session_id} belongs to DAGs you may not read")


def _check_sort(sort: str) -> str:
    if sort not in queries.SORT_KEYS:
        raise HTTPException(422, f"sort must be one of {', '.join(queries.SORT_KEYS)}")
    return sort


def create_app(store: StoreFactory = configured_store, writer: StoreFactory = configured_writer) -> FastAPI:
    """The dashboard app over the results store that `store()` gives (the configured one by default);
    `writer()` records stop requests."""
    app = FastAPI(title="Cryo-EM sessions", docs_url=None, redoc_url=None, openapi_url=None)

    def read(reader: Callable[[Connection], T]) -> T:
        try:
            results = store()
        except ValueError as exc:  # neither a connection nor a SQLite file configured
            raise HTTPException(503, f"the dashboard has no results database: set {RESULTS_CONN_ENV} (an "
                                     f"Airflow Postgres connection) or {SQLITE_ENV} for the api-server ({exc})")
        try:
            return results.read(reader)
        except ResultsNotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        except ResultsUnavailableError as exc:
            raise HTTPException(503, str(exc)) from None

    @app.exception_handler(StarletteHTTPException)
    async def _page_errors(request: Request, exc: StarletteHTTPException) -> Response:
        """JSON for the API; for a page, a small HTML page (with Airflow's login link when logged out)."""
        path = request.url.path.removeprefix(request.scope.get("root_path", ""))
        if path.startswith(("/api/", "/static/")):
            return await http_exception_handler(request, exc)
        login = (f'<p><a id="login" href="{html.escape(login_url(request))}">Log in to Airflow</a></p>'
                 if exc.status_code == 401 else "")
        return HTMLResponse(f"<!doctype html><title>Cryo-EM sessions</title><h1>{exc.status_code}</h1>"
                            f"<p>{html.escape(str(exc.detail))}</p>{login}", status_code=exc.status_code,
                            headers=exc.headers)

    @app.get("/api/sessions")
    def list_sessions(user: CurrentUser, offset: int = Query(0, ge=0),
                      limit: int = Query(50, ge=1, le=MAX_PAGE)) -> queries.SessionPage:
        def reader(connection: Connection) -> queries.SessionPage:
            if not queries.has_tables(connection):
                return queries.SessionPage(total=0, offset=offset, limit=limit, sessions=[])
            readable = readable_dag_ids(user, queries.dag_ids(connection))
            return queries.list_sessions(connection, readable, offset, limit)
        return read(reader)

    @app.get("/api/sessions/{session_id}")
    def session(user: CurrentUser, session_id: int, offset: int = Query(0, ge=0),
                limit: int = Query(50, ge=1, le=MAX_PAGE), sort: str = "movie_number",
                order: Literal["asc", "desc"] = "desc",
                status: Literal["all", "failed"] = "all") -> queries.SessionDetail:
        _check_sort(sort)

        def reader(connection: Connection) -> queries.SessionDetail:
            _visible(connection, user, session_id)
            return queries.session_detail(connection, session_id, offset, limit, sort, order, status)
        return read(reader)

    @app.post("/api/sessions/{session_id}/stop")
    def stop(request: Request, user: CurrentUser, session_id: int) -> dict[str, object]:
        """Record a request to end the live session now; its next folder scan ends it (pipeline/watch.py)."""
        if request.headers.get(STOP_HEADER) != "stop":
            raise HTTPException(403, f"a stop request needs the header {STOP_HEADER}: stop (sent by the page)")
        dag_ids = read(lambda connection: (_visible(connection, user, session_id),
                                           queries.session_dag_ids(connection, session_id))[1])
        if not may_run_every_dag(user, dag_ids):
            raise HTTPException(403, f"ending session {session_id} needs permission to run its DAGs "
                                     f"({', '.join(sorted(dag_ids))})")
        if read(queries.current_version) < queries.STOP_REQUEST_VERSION:
            raise HTTPException(409, "the results database has no stop requests yet: the pipeline's next run "
                                     "upgrades it")
        try:
            recorded = writer().request_stop(session_id, user.get_name())
        except ResultsUnavailableError as exc:
            raise HTTPException(503, str(exc)) from None
        return {"session_id": session_id, "requested": recorded,
                "detail": "the session ends at its next folder scan" if recorded
                else "a stop was requested before, or the session has ended"}

    @app.get("/api/sessions/{session_id}/movies")
    def movies(user: CurrentUser, session_id: int, offset: int = Query(0, ge=0),
               limit: int = Query(50, ge=1, le=MAX_PAGE), sort: str = "movie_number",
               order: Literal["asc", "desc"] = "desc", status: Literal["all", "failed"] = "all") -> queries.MoviePage:
        _check_sort(sort)

        def reader(connection: Connection) -> queries.MoviePage:
            _visible(connection, user, session_id)
            return queries.movie_page(connection, session_id, offset, limit, sort, order, status)
        return read(reader)

    @app.get("/api/sessions/{session_id}/tilt_series")
    def tilt_series(user: CurrentUser, session_id: int) -> list[queries.TiltSeriesView]:
        def reader(connection: Connection) -> list[queries.TiltSeriesView]:
            _visible(connection, user, session_id)
            return queries.tilt_series_views(connection, session_id)
        return read(reader)

    @app.get("/api/images/{kind}/{row_id}")
    def image(user: CurrentUser, kind: Literal[images.IMAGE_KINDS], row_id: int) -> Response:  # type: ignore[valid-type]
        def reader(connection: Connection) -> images.RecordedImage:
            recorded = images.recorded_image(connection, kind, row_id)
            _visible(connection, user, recorded.session_id)
            return recorded
        recorded = read(reader)
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=60"}
        try:
            if kind in images.CLASS_IMAGE_KINDS:
                return Response(images.class_image_png(recorded), media_type="image/png", headers=headers)
            path = images.servable_path(recorded)
        except images.ImageRefusedError as exc:
            raise HTTPException(403, str(exc)) from None
        except ResultsNotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        except ImageFileError:  # its message names the file: not for the browser
            raise HTTPException(404, "the recorded class image is not a readable MRC file") from None
        return FileResponse(path, media_type=images.MEDIA_TYPES[path.suffix.lower()], headers=headers)

    @app.get("/static/{name}")
    def static(user: CurrentUser, name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(HERE / "static" / name, media_type=STATIC_FILES[name],
                            headers={"Cache-Control": "private, max-age=300"})

    @app.get("/", response_class=HTMLResponse)
    def sessions_page(request: Request, user: CurrentUser) -> HTMLResponse:
        return templates.TemplateResponse(request, "sessions.html", _page_context(request))

    @app.get("/sessions/{session_id}", response_class=HTMLResponse)
    def session_page(request: Request, user: CurrentUser, session_id: int) -> HTMLResponse:
        dag_ids = read(lambda connection: (_visible(connection, user, session_id),
                                           queries.session_dag_ids(connection, session_id))[1])
        return templates.TemplateResponse(request, "session.html", {
            **_page_context(request), "session_id": session_id, "can_stop": may_run_every_dag(user, dag_ids)})

    return app


def _page_context(request: Request) -> dict[str, object]:
    """Where the page finds its API (the app's mount path, Airflow's own root included) and Airflow's UI."""
    root = request.scope.get("root_path", "").rstrip("/")
    return {"root": root, "airflow_root": root.removesuffix(URL_PREFIX),
            "poll_ms": int(1000 * float(os.environ.get(POLL_ENV, "5")))}

