"""Who may see what: Airflow's own authentication and DAG permissions, applied to the dashboard's routes.

Airflow does not authenticate a plugin's FastAPI app (it is mounted beside the core API, which carries
its own dependencies), so every route here depends on `current_user`: Airflow's `get_user`, which reads
the JWT from an `Authorization: Bearer` header or from the UI's `_token` cookie. No token gives 401, a
bad or revoked one 401/403, as on Airflow's own API. A session is visible to a user who may read (GET)
at least one of the DAGs whose runs wrote it; the auth manager in use (simple, FAB, ...) decides.
"""
from __future__ import annotations

from collections.abc import Collection
from typing import Annotated

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, Request

CurrentUser = Annotated[BaseUser, Depends(get_user)]


def readable_dag_ids(user: BaseUser, dag_ids: Collection[str]) -> set[str]:
    """The DAG ids among `dag_ids` the user may read."""
    if not dag_ids:
        return set()
    return get_auth_manager().filter_authorized_dag_ids(dag_ids=set(dag_ids), user=user, method="GET")


def may_run_every_dag(user: BaseUser, dag_ids: Collection[str]) -> bool:
    """Whether the user may trigger runs (POST a DAG run) of every DAG in `dag_ids`: what ending a session
    from the dashboard asks, as it changes what those DAGs' runs do."""
    manager = get_auth_manager()
    return bool(dag_ids) and all(manager.is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN,
                                                           details=DagDetails(id=dag_id), user=user)
                                 for dag_id in dag_ids)


def login_url(request: Request) -> str:
    """Airflow's login page, coming back to this request's page afterwards."""
    return get_auth_manager().get_url_login(next_url=str(request.url))
