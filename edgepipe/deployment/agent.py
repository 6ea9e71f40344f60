"""The host's view of the device agent: where its file is, what version it speaks, and how to talk to it.

The agent is a single file shipped in ``device_agents/`` (inside a wheel: ``edgepipe/_shipped/``, see
``edgepipe.shipped``). It is cached
on the board under its version and hash, so a changed agent is sent again and an unchanged one never is.
"""

from __future__ import annotations

import ast
import json
import sys
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from edgepipe import shipped
from edgepipe.config.target import Target
from edgepipe.deployment.cache import RemoteCache
from edgepipe.errors import AgentError
from edgepipe.provenance import sha256_file
from edgepipe.transport.base import Transport

AGENT_FILE = shipped.folder("device_agents") / "edgepipe_agent.py"
PROBE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class AgentInfo:
    path: Path
    version: str
    job_protocol: str
    result_protocol: str
    sha256: str

    def remote_path(self, workdir: str) -> str:
        return f"{workdir.rstrip('/')}/agent/edgepipe_agent-{self.version}-{self.sha256[:12]}.py"


_READING = threading.Lock()


def agent_info(path: Path = AGENT_FILE) -> AgentInfo:
    """Read the version constants from the agent's source (without importing it), once per process.

    One thread at a time: on CPython before 3.11.8 ``ast.parse`` in two threads at once can fail with
    "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905), which is what a farm run
    hit when the workers of all its boards started their first deploy together (3.11.7 here)."""
    with _READING:
        return _read_agent_info(path)


@cache
def _read_agent_info(path: Path) -> AgentInfo:
    if not path.is_file():
        raise AgentError(f"the device agent {path} is missing from this installation", hint="reinstall edgepipe")
    constants: dict[str, str] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for name in node.targets:
                if isinstance(name, ast.Name) and isinstance(node.value.value, str):
                    constants[name.id] = node.value.value
    return AgentInfo(
        path, constants["AGENT_VERSION"], constants["JOB_PROTOCOL"], constants["RESULT_PROTOCOL"], sha256_file(path)
    )


def helper_python(target: Target) -> str:
    """The Python that runs edgepipe's small helper scripts on the board (it needs only the stdlib)."""
    if target.transport == "local":
        return target.python or sys.executable
    if target.transport == "qemu":
        return sys.executable  # the image's files are this machine's files
    return target.agent_install.python


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
