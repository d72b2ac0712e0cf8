"""The Celery broker of the CeleryExecutor tests: the machine's Redis, or a private one when none answers.

Like devtools/local_postgres.py for PostgreSQL: a fresh machine (a CI runner) may have no Redis running, so
the test set-up starts Debian's `redis-server` (installed when missing, as root) on a free 127.0.0.1 port,
without persistence, and stops it at the end.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from .local_airflow import free_port, stop_process, wait_until
from .local_postgres import apt_install

REDIS_URL = os.environ.get("CRYOEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class LocalRedisError(RuntimeError):
    """Redis could not be installed or started; carries the server's log."""


def redis_answers(url: str) -> bool:
    """Whether a Redis server at the URL's host and port answers PING."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def private_redis_server() -> Iterator[str]:
    """Start a throwaway Redis on a free port (no snapshots, no append-only file); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None and apt_install("redis-server"):
        binary = shutil.which("redis-server")
    if binary is None:
        raise LocalRedisError("no Redis answers and redis-server is not installed: run the tests as root once "
                              "(apt-get install redis-server) or set CRYOEM_TEST_REDIS_URL")
    root = Path(tempfile.mkdtemp(prefix="cryoem-redis-"))
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    log = root / "redis.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                    "--appendonly", "no", "--dir", str(root)], stdout=out, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            if process.poll() is not None:
                raise LocalRedisError(f"redis-server exited with {process.returncode}:\n{log.read_text()[-2000:]}")
            return redis_answers(url)

        wait_until(up, 30, "the private Redis to answer")
        yield url
    finally:
        stop_process(process)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def redis_server(url: str = REDIS_URL) -> Iterator[str]:
    """`url` when a Redis answers there, else a private server's URL for the duration."""
    if redis_answers(url):
        yield url
        return
    with private_redis_server() as private_url:
        yield private_url
