"""The Celery broker of the CeleryExecutor tests and the soak: a private Redis of their own.

Private, not the machine's Redis, because the fault tests restart the broker; and a fresh machine (a CI runner)
may have no Redis at all. The set-up starts Debian's `redis-server` (installed when missing, as root) on a free
127.0.0.1 port and stops it at the end.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from .local_airflow import free_port, stop_process, wait_until
from .local_postgres import apt_install


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


class PrivateRedis:
    """A throwaway redis-server on a free port and its own folder; `restart()` takes it down and brings it back
    on the same port and folder, as an administrator's restart of the broker would.

    `append_only`: keep an append-only file, as a broker that must not lose queued messages over a restart is
    configured (the default, no persistence, is enough for a broker that is never restarted)."""

    def __init__(self, append_only: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None and apt_install("redis-server"):
            binary = shutil.which("redis-server")
        if binary is None:
            raise LocalRedisError("redis-server is not installed: run the tests as root once "
                                  "(apt-get install redis-server)")
        self.binary, self.append_only = binary, append_only
        self.root = Path(tempfile.mkdtemp(prefix="cryoem-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = self.root / "redis.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                 "--appendonly", "yes" if self.append_only else "no", "--dir", str(self.root)],
                stdout=out, stderr=subprocess.STDOUT)
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                raise LocalRedisError(f"redis-server exited with {process.returncode}:\n"
                                      f"{self.log.read_text()[-2000:]}")
            return redis_answers(self.url)

        wait_until(up, 30, "the private Redis to answer")

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def restart(self, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@contextmanager
def private_redis_server(append_only: bool = False) -> Iterator[PrivateRedis]:
    """Start a throwaway Redis on a free port; yields it (its `url`); stops it and deletes its folder after."""
    server = PrivateRedis(append_only)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
