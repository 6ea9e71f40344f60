"""The host's view of the device agent: where its source is, what version it speaks, the one file the board gets,
and how to talk to it.

The agent's source is ``device_agents/`` (inside a wheel: ``edgepipe/_shipped/``, see ``edgepipe.shipped``): a
``__main__.py`` and the ``edgepipe_agent`` package, small modules by concern. Python runs that folder as it is
(``python -I device_agents run -``: what the host's own reference run does), and runs a zip of it the same way,
which is what the board gets: ONE file, ``edgepipe_agent-<version>-<sha12>.pyz``, built here byte for byte the
same from the same source (fixed order, times and modes; stored, not compressed, so no zlib version changes
it). It is cached on the board under its version and hash, so a changed agent is sent again and an unchanged one
never is.
"""

from __future__ import annotations

import ast
import io
import json
import os
import sys
import threading
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from edgepipe import shipped
from edgepipe.config.target import Target
from edgepipe.deployment.cache import RemoteCache
from edgepipe.errors import AgentError
from edgepipe.files import user_cache, write_atomic
from edgepipe.provenance import sha256_bytes
from edgepipe.transport.base import Transport

AGENT_SOURCE = shipped.folder("device_agents")
PACKAGE = "edgepipe_agent"
PROBE_TIMEOUT_S = 120.0
KEPT_BUILDS = 8  # in this machine's cache (~63 KB each)


@dataclass(frozen=True)
class AgentInfo:
    path: Path  # the .pyz built on this machine, what the board gets
    version: str
    job_protocol: str
    result_protocol: str
    sha256: str

    def remote_path(self, workdir: str) -> str:
        return f"{workdir.rstrip('/')}/agent/edgepipe_agent-{self.version}-{self.sha256[:12]}.pyz"


_READING = threading.Lock()


def agent_info(source: Path = AGENT_SOURCE) -> AgentInfo:
    """Read the version constants from the agent's source (without importing it) and build its .pyz, once per
    process.

    One thread at a time: on CPython before 3.11.8 ``ast.parse`` in two threads at once can fail with
    "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905), which is what a farm run
    hit when the workers of all its boards started their first deploy together (3.11.7 here)."""
    with _READING:
        return _read_agent_info(source)


def agent_sources(source: Path = AGENT_SOURCE) -> list[Path]:
    """The files of the agent, in the order the archive holds them: the entry point, then the package."""
    return [source / "__main__.py", *sorted((source / PACKAGE).glob("*.py"))]


def build_archive(source: Path = AGENT_SOURCE) -> bytes:
    """The agent as one zip application: the same bytes from the same source on any machine."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in agent_sources(source):
            entry = zipfile.ZipInfo(path.relative_to(source).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, path.read_bytes())
    return buffer.getvalue()


@cache
def _read_agent_info(source: Path) -> AgentInfo:
    protocol = source / PACKAGE / "protocol.py"
    if not (source / "__main__.py").is_file() or not protocol.is_file():
        raise AgentError(f"the device agent in {source} is missing from this installation", hint="reinstall edgepipe")
    constants: dict[str, str] = {}
    for node in ast.parse(protocol.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for name in node.targets:
                if isinstance(name, ast.Name) and isinstance(node.value.value, str):
                    constants[name.id] = node.value.value
    archive = build_archive(source)
    sha256 = sha256_bytes(archive)
    version = constants["AGENT_VERSION"]
    built = user_cache() / "agent-build" / f"edgepipe_agent-{version}-{sha256[:12]}.pyz"
    if not built.is_file() or built.read_bytes() != archive:
        write_atomic(built, archive)
    else:
        os.utime(built)
    _forget_old_builds(built)
    return AgentInfo(built, version, constants["JOB_PROTOCOL"], constants["RESULT_PROTOCOL"], sha256)


def _forget_old_builds(current: Path) -> None:
    """Every agent source edgepipe runs with (each upgrade, each edit of a checkout) leaves a build; keep the
    ones used last (a process still running an older edgepipe holds its build only for the length of a deploy)."""
    builds = sorted(current.parent.glob("edgepipe_agent-*.pyz"), key=_modified, reverse=True)
    for old in [build for build in builds if build != current][KEPT_BUILDS - 1 :]:
        old.unlink(missing_ok=True)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed by another edgepipe meanwhile
        return 0.0


def agent_python(target: Target) -> str:
    return target.agent_python(sys.executable)


def install_agent(transport: Transport, cache: RemoteCache, target: Target) -> str:
    """Make sure this agent version is on the board; returns its path there."""
    info = agent_info()
    return cache.ensure(info.path, info.remote_path(target.workdir), info.sha256, label="agent")


def probe(transport: Transport, target: Target, agent_path: str, python: str) -> dict[str, Any]:
    """The agent's ``probe``: board state, runtimes, free disk. Raises AgentError when it cannot run."""
    result = transport.run([python, agent_path, "probe", target.workdir], timeout=PROBE_TIMEOUT_S)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise AgentError(
            f"the agent cannot run with {python} on {transport.describe()} (exit {result.returncode}): {last[0]}",
            hint=f"run 'edgepipe agent install --target {target.name}', or set the target's python",
        )
    try:
        return dict(json.loads(result.stdout))
    except ValueError:
        raise AgentError(f"the agent's probe printed something that is not JSON: {result.stdout[:200]!r}") from None
