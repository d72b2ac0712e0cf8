"""The tests' PostgreSQL: the configured server, or a private throwaway cluster when nothing listens there.

Why: the results store and the live-Airflow tests need a real PostgreSQL, and a fresh machine (container,
CI runner) has none. Like scripts/local_slurm.sh for Slurm, the test set-up then brings up its own: Debian's
`postgresql` is installed when missing (root only), `initdb` makes a cluster in a temporary directory and
`pg_ctl` runs it on a free 127.0.0.1 port with trust auth, as the `postgres` user when we are root (the
server refuses to run as root); it is stopped and deleted at the end.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from airflow_provider_cryoem.devtools.local_airflow import free_port

PG_LIB = Path("/usr/lib/postgresql")  # Debian: /usr/lib/postgresql/<major>/bin, initdb is not on PATH


class LocalPostgresError(RuntimeError):
    """PostgreSQL could not be installed, initialised or started; carries the server's log."""


def listening(admin_url: str) -> bool:
    """Whether anything accepts TCP connections at the URL's host and port (auth is not checked here)."""
    url = make_url(admin_url)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=5):
            return True
    except OSError:
        return False


def apt_install(package: str) -> bool:
    """Install Debian's `package` for a test server; False (nothing done) unless we are root."""
    if os.geteuid() != 0:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True, env=env)
    return True


def _bin_dir() -> Path:
    """The newest installed server's programs; installs Debian's `postgresql` first if there is none."""
    def newest() -> Path | None:
        found = sorted(PG_LIB.glob("*/bin/pg_ctl"), key=lambda p: [int(n) for n in p.parts[-3].split(".")])
        return found[-1].parent if found else None

    if newest() is None and not apt_install("postgresql"):
        raise LocalPostgresError("no PostgreSQL server is reachable and none is installed: run the tests "
                                 "as root once (apt-get install postgresql) or set CRYOEM_TEST_PG_ADMIN_URL")
    bin_dir = newest()
    if bin_dir is None:
        raise LocalPostgresError(f"apt-get installed postgresql but there is no {PG_LIB}/*/bin/pg_ctl")
    return bin_dir


class PrivatePostgres:
    """A new cluster in a temporary folder on a free 127.0.0.1 port; `restart()` stops it (fast shutdown:
    open connections are cut) and starts it again on the same port, as a database server restart would."""

    def __init__(self) -> None:
        self.bin_dir = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="cryoem-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data, self.log, self.port = self.root / "data", self.root / "server.log", free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, program: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bin_dir / program), *args], cwd=self.root,
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            server_log = self.log.read_text() if self.log.exists() else ""
            raise LocalPostgresError(f"{program} {' '.join(args)} failed:\n{done.stdout}{done.stderr}{server_log}")

    def init(self) -> None:
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
                 "--no-sync")

    def start(self) -> None:
        # fsync off: a cluster that is deleted after the run needs no durability, and the tests run faster.
        self._pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                 "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off")

    def stop(self) -> None:
        self._pg("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))

    def restart(self, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@contextmanager
def private_postgres_server() -> Iterator[PrivatePostgres]:
    """Start a new cluster on a free 127.0.0.1 port; yields it (admin URL `url`); stops and deletes it after."""
    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(server.root, ignore_errors=True)


@contextmanager
def postgres_server(admin_url: str) -> Iterator[str]:
    """`admin_url` when a server listens there, else a private cluster's admin URL for the duration."""
    if listening(admin_url):
        yield admin_url
        return
    with private_postgres_server() as server:
        yield server.url
