"""Writing result files so that a reader never sees half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def user_cache() -> Path:
    """edgepipe's cache on this machine: ``$XDG_CACHE_HOME/edgepipe``, by default ``~/.cache/edgepipe``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgepipe"


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write next to the destination, then rename: a reader sees the old file or the new one, never half.

    A failure (full disk, Ctrl-C) leaves the previous file in place and removes the temporary one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(content, bytes):
            temporary.write_bytes(content)
        else:
            temporary.write_text(content, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_all_atomic(contents: dict[Path, str | bytes]) -> None:
    """Write several files so that either all of them are replaced or none is.

    Every file is first written in full to a temporary name beside its destination; only when all of them are
    written are they renamed into place. A failure while writing (an unwritable directory, a full disk) removes
    the temporary files and leaves every destination as it was, then re-raises with ``filename`` set.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, content in contents.items():
            temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                staged.append((temporary, path))
                if isinstance(content, bytes):
                    temporary.write_bytes(content)
                else:
                    temporary.write_text(content, encoding="utf-8")
            except OSError as exc:
                exc.filename = str(path)
                raise
        for temporary, path in staged:
            os.replace(temporary, path)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)


def write_json(path: Path, document: Any) -> None:
    write_atomic(path, json.dumps(document, indent=1, default=str) + "\n")
