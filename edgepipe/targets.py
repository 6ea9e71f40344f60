"""The target registry: ``targets/*.yaml`` found next to the project, in ``$EDGEPIPE_TARGETS_DIR``, or shipped.

``--target NAME`` looks a name up here; ``--target path/to/board.yaml`` reads that file directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgepipe import shipped
from edgepipe.config.loading import load_model
from edgepipe.config.target import Target
from edgepipe.errors import ConfigError

SHIPPED = shipped.folder("targets")


def search_path() -> list[Path]:
    """Directories searched in order; the first file with a name wins."""
    places = []
    if os.environ.get("EDGEPIPE_TARGETS_DIR"):
        places.append(Path(os.environ["EDGEPIPE_TARGETS_DIR"]))
    places += [Path.cwd() / "targets", SHIPPED]
    unique: list[Path] = []
    for place in places:
        if place.is_dir() and place.resolve() not in [u.resolve() for u in unique]:
            unique.append(place)
    return unique


def target_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in search_path():
        for file in sorted(directory.glob("*.yaml")):
            found.setdefault(file.stem, file)
    return found


def load_target(name_or_path: str) -> Target:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        file = candidate
    else:
        files = target_files()
        if name_or_path not in files:
            known = ", ".join(sorted(files)) or "none"
            raise ConfigError(
                f"unknown target {name_or_path!r} (known: {known})",
                hint="run 'edgepipe targets list', or pass the path of a target .yaml file",
            )
        file = files[name_or_path]
    target = load_model(file, Target)
    if target.name != file.stem and candidate.suffix not in (".yaml", ".yml"):
        raise ConfigError.at(str(file), "name", f"{target.name!r} does not match the file name {file.stem!r}")
    return target
