"""The Airflow plugin: the dashboard app mounted by the api-server under /cryoem, and a UI entry for it.

Registered by the `airflow.plugins` entry point (pyproject.toml), so installing the package is enough.
Entry-point plugins are loaded by every Airflow process that loads plugins (task processes too, for
macros), so the FastAPI app is built on the first request the api-server routes to it, not on import.
"""
from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/cryoem"  # where the api-server mounts the dashboard


class LazyDashboardApp:
    """An ASGI app that builds the dashboard's FastAPI app (dashboard.app.create_app) when first called."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._app is None:
            from .app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class CryoemDashboardPlugin(AirflowPlugin):
    """Cryo-EM sessions in the Airflow UI: a JSON API and pages over the results database."""

    name = "cryoem_dashboard"
    fastapi_apps = [{"app": LazyDashboardApp(), "url_prefix": URL_PREFIX, "name": "Cryo-EM sessions"}]
    external_views = [{
        "name": "Cryo-EM sessions",
        "href": "cryoem/",  # relative: Airflow's UI resolves it against its base URL
        "destination": "nav",
        "url_route": "cryoem",
        "nav_top_level": True,
        "icon": "cryoem/static/icon.svg",
    }]
