"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a cluster in a temporary directory,
run in the foreground as the unprivileged ``postgres`` user (``initdb`` refuses root), on 127.0.0.1 and a free
port, with fsync off (nothing here must survive a power cut). Each test gets a database of its own.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

POSTGRES_ROOT = Path("/usr/lib/postgresql")


def binaries() -> Path | None:
    versions = sorted(
        (p for p in POSTGRES_ROOT.glob("*/bin") if (p / "postgres").is_file()), key=lambda p: p.parent.name
    )
    return versions[-1] if versions else None


def available() -> str | None:
    """Why a server cannot be started here, or None."""
    if binaries() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no postgres user (Debian's postgresql package creates it)"
    if os.geteuid() != 0:
        return "starting the server as the postgres user needs root"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def server() -> Iterator[str]:
    """Start a server; yields the URL of its ``postgres`` database (the superuser, trusted on 127.0.0.1)."""
    import psycopg

    found = binaries()
    assert found is not None, available()
    user = pwd.getpwnam("postgres")
    directory = Path(tempfile.mkdtemp(prefix="edgepipe-postgres-"))  # not under pytest's root-only 0700 tree
    os.chown(directory, user.pw_uid, user.pw_gid)
    data = directory / "data"
    as_postgres = {"user": user.pw_uid, "group": user.pw_gid, "cwd": directory}
    subprocess.run([str(found / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120, **as_postgres)  # fmt: skip
    port = _free_port()
    log = (directory / "postgres.log").open("ab")
    process = subprocess.Popen(
        [str(found / "postgres"), "-D", str(data), "-k", str(directory), "-p", str(port),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
         "-c", "full_page_writes=off", "-c", "max_connections=200"],
        stdout=log, stderr=log, **as_postgres,
    )  # fmt: skip
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((directory / "postgres.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)  # fast shutdown
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


def new_database(server_url: str) -> str:
    """A fresh, empty database on the server; its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + f"/{name}"
