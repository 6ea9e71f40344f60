"""``edgepipe recipes``: the presets shipped in ``recipes/``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgepipe import shipped
from edgepipe.cli.console import stdout
from edgepipe.errors import ConfigError

app = typer.Typer(rich_markup_mode=None, help="The optimization recipes shipped with edgepipe.", no_args_is_help=True)

PRESETS = shipped.folder("recipes")


@app.command("list")
def list_recipes() -> None:
    """List the preset recipes with their stages and descriptions."""
    from edgepipe.config import Recipe, load_model

    table = Table("preset", "stages", "description", box=None, pad_edge=False)
    for path in sorted(PRESETS.glob("*.yaml")):
        recipe = load_model(path, Recipe)
        stages = " -> ".join(stage.kind for stage in recipe.stages)
        table.add_row(path.stem, stages, recipe.description.strip().splitlines()[0] if recipe.description else "")
    stdout.print(table)
    stdout.print(
        f"[dim]run one with 'edgepipe optimize NAME'; copy one to edit with 'edgepipe recipes copy NAME' "
        f"(files in {PRESETS})[/]",
        highlight=False,
    )


@app.command("copy")
def copy_recipe(
    name: Annotated[str, typer.Argument(help="Preset name (see 'edgepipe recipes list').")],
    destination: Annotated[Path | None, typer.Argument(help="File to write (default: NAME.yaml here).")] = None,
) -> None:
    """Copy a preset into a file of your own, to edit (an existing file is never overwritten)."""
    source = PRESETS / f"{name}.yaml"
    if not source.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise ConfigError(f"no preset named {name!r}", hint=f"presets: {known}")
    destination = destination or Path(f"{name}.yaml")
    try:
        with destination.open("x", encoding="utf-8") as handle:
            handle.write(source.read_text(encoding="utf-8"))
    except FileExistsError:
        raise ConfigError(f"{destination} exists; not overwriting it", hint="name another file") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {destination}: {exc.strerror}") from None
    stdout.print(f"wrote [bold]{escape(str(destination))}[/] (from preset {name})", highlight=False)
