"""The tests' MariaDB (ISPyB runs on it): the configured server, or a private throwaway one when none listens.

As for PostgreSQL (local_postgres.py): Debian's `mariadb-server` is installed when missing (root only),
`mariadb-install-db` makes a data directory in a temporary folder and `mariadbd` serves it on a free
127.0.0.1 port without grant tables (any user, no password: it is private and deleted at the end).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from airflow_provider_cryoem.devtools.local_airflow import free_port, stop_process
from airflow_provider_cryoem.devtools.local_postgres import apt_install, listening

MARIADB_ADMIN_URL = os.environ.get("CRYOEM_TEST_MARIADB_ADMIN_URL", "mysql+pymysql://root@127.0.0.1:3306/")
_START_TIMEOUT_S = 60


class LocalMariaDBError(RuntimeError):
    """MariaDB could not be installed, initialised or started; carries the server's log."""


def _server_programs() -> tuple[str, str]:
    """(mariadb-install-db, mariadbd); installs Debian's `mariadb-server` first if they are missing."""
    def found() -> tuple[str, str] | None:
        install = shutil.which("mariadb-install-db")
        server = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/libexec")
        return (install, server) if install and server else None

    if found() is None and not apt_install("mariadb-server"):
        raise LocalMariaDBError("no MariaDB server is reachable and none is installed: run the tests as root "
                                "once (apt-get install mariadb-server) or set CRYOEM_TEST_MARIADB_ADMIN_URL")
    programs = found()
    if programs is None:
        raise LocalMariaDBError("apt-get installed mariadb-server but mariadb-install-db/mariadbd are not on PATH")
    return programs


@contextmanager
def private_mariadb_server() -> Iterator[str]:
    """Start a new server on a free 127.0.0.1 port; yields its admin URL; stops it and deletes its data after."""
    install, server = _server_programs()
    root = Path(tempfile.mkdtemp(prefix="cryoem-mariadb-"))
    data, log, port = root / "data", root / "server.log", free_port()
    user = ["--user=root"] if os.geteuid() == 0 else []
    done = subprocess.run([install, "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method=normal",
                           "--skip-test-db", *user], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise LocalMariaDBError(f"mariadb-install-db failed:\n{done.stdout}{done.stderr}")
    # No durability needed for a server deleted after the run: no flush at commit, no doublewrite.
    process = subprocess.Popen([server, "--no-defaults", f"--datadir={data}", f"--port={port}",
                                "--bind-address=127.0.0.1", f"--socket={root / 'mysqld.sock'}",
                                f"--pid-file={root / 'mysqld.pid'}", f"--log-error={log}", "--skip-grant-tables",
                                "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", *user],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"mysql+pymysql://root@127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not listening(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise LocalMariaDBError(f"mariadbd did not start:\n{log.read_text() if log.exists() else ''}")
            time.sleep(0.2)
        yield url
    finally:
        stop_process(process, grace_s=60)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def mariadb_server(admin_url: str = MARIADB_ADMIN_URL) -> Iterator[str]:
    """`admin_url` when a server listens there, else a private server's admin URL for the duration."""
    if listening(admin_url):
        yield admin_url
        return
    with private_mariadb_server() as url:
        yield url

