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


@contextmanager
def private_postgres_server() -> Iterator[str]:
    """Start a new cluster on a free 127.0.0.1 port; yields its admin URL; stops and deletes it after."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="cryoem-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = root / "data", root / "server.log", free_port()

    def pg(*args: str) -> None:
        done = subprocess.run([*as_user, *args], cwd=root, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise LocalPostgresError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}{server_log}")

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
           "--locale=C", "--no-sync")
        # fsync off: a cluster that is deleted after the run needs no durability, and the tests run faster.
        pg(str(bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(log),
           "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off")
        try:
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
        finally:
            pg(str(bin_dir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(data))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server(admin_url: str) -> Iterator[str]:
    """`admin_url` when a server listens there, else a private cluster's admin URL for the duration."""
    if listening(admin_url):
        yield admin_url
        return
    with private_postgres_server() as url:
        yield url
