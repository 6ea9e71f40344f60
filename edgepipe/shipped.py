"""Where the files edgepipe ships outside its Python modules are: the device agent, the targets, the presets.

In a source checkout (and an editable install) they are the repository's ``device_agents/``, ``targets/`` and
``recipes/``; a wheel carries copies under ``edgepipe/_shipped/`` (setup.py puts them there). The copies win
when both exist, so an installed edgepipe never picks up an unrelated ``targets/`` next to site-packages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from edgepipe.errors import AgentError, ConfigError

Kind = Literal["device_agents", "targets", "recipes"]

PACKAGE = Path(__file__).resolve().parent


def folder(kind: Kind) -> Path:
    """The shipped folder of ``kind``; raises when this installation lacks it (a broken or partial install)."""
    for base in (PACKAGE / "_shipped", PACKAGE.parent):
        if (base / kind).is_dir():
            return base / kind
    raise AgentError(
        f"edgepipe's {kind}/ is missing from this installation ({PACKAGE})",
        hint="reinstall edgepipe from a wheel or a source checkout (pip install edgepipe, or scripts/setup)",
    )


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file, or the preset of that name (``prune-qat`` for ``recipes/prune-qat.yaml``) when no such file
    exists here: an installed edgepipe has no ``recipes/`` folder next to the user's work."""
    path = Path(name_or_path)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    preset = folder("recipes") / f"{path.name}.yaml"
    if preset.is_file():
        return preset
    known = ", ".join(sorted(p.stem for p in folder("recipes").glob("*.yaml")))
    raise ConfigError(
        f"{path}: no such recipe file, and no preset of that name",
        hint=f"give a recipe YAML file, or one of the presets: {known}",
    )
