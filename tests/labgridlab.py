"""A real labgrid installation for the tests: ``labgrid-coordinator`` on a free loopback port (its places file in a
directory of its own), ``labgrid-exporter`` publishing resources, and ``labgrid-client`` to make places, tag them
and lock them as another user — the commands a lab's admins and users type.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _start(command: list[str], cwd: Path, log: Path, ready: str, seconds: float = 30) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready in log.read_text(errors="replace"):
            return process
        if process.poll() is not None:
            break
        time.sleep(0.1)
    _stop(process)
    raise AssertionError(f"{command[2]} did not start:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@contextmanager
def coordinator(directory: Path, port: int = 0) -> Iterator[str]:
    """A coordinator keeping its places in ``directory`` (a second one started there, on the same ``port``, is
    the first restarted: the places stay, acquisitions and reservations are forgotten); yields ``HOST:PORT``."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "coordinator.log"
    log.unlink(missing_ok=True)
    command = [sys.executable, "-m", "labgrid.remote.coordinator", "-l", f"127.0.0.1:{port}"]
    process = _start(command, directory, log, "listening on")
    try:
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
        assert found, log.read_text()
        yield f"127.0.0.1:{found.group(1)}"
    finally:
        _stop(process)


@contextmanager
def exporter(address: str, directory: Path, name: str, groups: dict[str, dict[str, Any]]) -> Iterator[None]:
    """An exporter called ``name`` publishing ``groups`` (group -> {resource class: parameters})."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"{name}.yaml"
    config.write_text(json.dumps(groups))  # JSON is YAML
    command = [sys.executable, "-m", "labgrid.remote.exporter", "-c", address, "-n", name, "--hostname", "127.0.0.1",
               str(config)]  # fmt: skip
    process = _start(command, directory, directory / f"{name}.log", "connected to coordinator")
    try:
        yield
    finally:
        _stop(process)


def client(address: str, *args: str, user: str | None = None, check: bool = True) -> str:
    """``labgrid-client -x ADDRESS ARGS...`` (as ``user``, when given); its output."""
    env = {**os.environ}
    if user:
        env["LG_USERNAME"] = user
    done = subprocess.run(
        [sys.executable, "-m", "labgrid.remote.client", "-x", address, *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"labgrid-client {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def who(address: str) -> list[tuple[str, str]]:
    """(user, place) of every acquired place."""
    lines = client(address, "who").splitlines()[1:]
    return sorted((line.split()[0], line.split()[2]) for line in lines if line.strip())
