"""Where a result came from: tool versions, machine, and content hashes, recorded in every result file."""

from __future__ import annotations

import hashlib
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

TOOLS = (
    "edgepipe",
    "tensorflow-cpu",
    "tensorflow",
    "tf-keras",
    "tensorflow-model-optimization",
    "ai-edge-litert",
    "numpy",
    "pydantic",
    "scikit-learn",
)


def tool_versions() -> dict[str, str]:
    """Installed versions (read from package metadata, so nothing heavy is imported)."""
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_bytes(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def host() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
    }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
