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


DEFAULT_RECIPE = "edgepipe.yaml"  # what 'edgepipe optimize' runs when no recipe is named


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file, or the preset of that name (``prune-qat`` for ``recipes/prune-qat.yaml``) when no such file
    exists here: an installed edgepipe has no ``recipes/`` folder next to the user's work."""
    path = Path(name_or_path)
    if path.exists():
        return path
    presets = sorted(p.stem for p in folder("recipes").glob("*.yaml"))
    if path.name == DEFAULT_RECIPE and len(path.parts) == 1:
        raise ConfigError(
            f"no recipe named, and no {DEFAULT_RECIPE} in {Path.cwd()}",
            hint="name a recipe file or a preset ('edgepipe optimize prune-cluster-qat' trains and compresses the "
            f"digits example); 'edgepipe recipes copy NAME {DEFAULT_RECIPE}' starts your own from a preset",
        )
    if path.suffix or len(path.parts) > 1:
        raise ConfigError(
            f"{path}: file not found", hint=f"give a recipe YAML file, or one of the presets: {', '.join(presets)}"
        )
    preset = folder("recipes") / f"{path.name}.yaml"
    if preset.is_file():
        return preset
    raise ConfigError(
        f"{path}: no such recipe file, and no preset of that name",
        hint=f"give a recipe YAML file, or one of the presets: {', '.join(presets)}",
    )
