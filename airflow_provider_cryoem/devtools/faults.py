"""A Celery deployment whose services can be broken on purpose, for the fault tests and the soak.

The stack of `live_stack` on CeleryExecutor, with a private broker (Redis with an append-only file, as a broker
that must keep queued messages over a restart is run) and the results database on a private PostgreSQL cluster
(a facility's results database is rarely the Airflow metadata server), so that either can be restarted without
touching anything else on the machine. Each fault is what an administrator or a crash would do to a real
deployment: a worker SIGKILLed and started again, the broker or the results server restarted, the scheduler and
the triggerer SIGKILLed and started again.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from .live_session import crash_scheduler_and_triggerer, live_stack
from .local_airflow import AirflowStack, CeleryWorker
from .local_postgres import PrivatePostgres, private_postgres_server
from .local_redis import PrivateRedis, private_redis_server

# How long the broker and the results database stay down when restarted.
DOWN_S = 8.0


@dataclass
class Fault:
    """One injected fault: what, when it began, and when the service was back."""

    name: str
    start_s: float
    back_s: float


def recovery_s(fault: Fault, runs: list[tuple[float, float]]) -> float | None:
    """From the fault to the end of the first task started once the service was back (`runs`: the (start, end)
    times of a stage's successful task instances); None when no task started after it."""
    after = [end_s for start_s, end_s in runs if start_s > fault.back_s]
    return min(after) - fault.start_s if after else None


@dataclass
class FaultyDeployment:
    """The running stack, its results database, and the services the faults act on."""

    stack: AirflowStack
    results: Engine
    broker: PrivateRedis
    results_server: PrivatePostgres

    def faults(self) -> dict[str, Callable[[], None]]:
        """Every fault this deployment can suffer, by name."""
        return {
            **{f"{name} SIGKILLed and restarted": (lambda name=name: self.kill_worker(name))
               for name in self.stack.celery_workers},
            "broker restarted": lambda: self.broker.restart(DOWN_S),
            "results PostgreSQL restarted": lambda: self.results_server.restart(DOWN_S),
            "scheduler and triggerer SIGKILLed and restarted": lambda: crash_scheduler_and_triggerer(self.stack),
        }

    def kill_worker(self, name: str) -> None:
        """SIGKILL a Celery worker with its process group (its running tasks die too), start it 2 s later."""
        self.stack.kill(name)
        time.sleep(2)
        self.stack.start_component(name)

    def inject(self, name: str) -> Fault:
        start_s = time.time()
        self.faults()[name]()
        return Fault(name, start_s, time.time())


@contextmanager
def faulty_celery_deployment(root: Path, admin_url: str, dag_ids: str | tuple[str, ...], recipes_dir: Path,
                             workers: Mapping[str, CeleryWorker], parallelism: int) -> Iterator[FaultyDeployment]:
    """`live_stack` on CeleryExecutor with `workers`, a restartable private broker and results server."""
    with private_redis_server(append_only=True) as broker, private_postgres_server() as results_server, \
            live_stack(root, admin_url, dag_ids, recipes_dir=recipes_dir, results_admin_url=results_server.url,
                       parallelism=parallelism, celery_broker_url=broker.url, celery_workers=workers) as (
            stack, results):
        yield FaultyDeployment(stack, results, broker, results_server)
