"""``edgepipe recipes``: the presets shipped in ``recipes/``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edgepipe.cli.console import stdout

app = typer.Typer(rich_markup_mode=None, help="The optimization recipes shipped with edgepipe.", no_args_is_help=True)

PRESETS = Path(__file__).resolve().parents[2] / "recipes"


@app.command("list")
def list_recipes() -> None:
    """List the preset recipes with their stages and descriptions."""
    from edgepipe.config import Recipe, load_model

    table = Table("recipe", "stages", "description", box=None, pad_edge=False)
    for path in sorted(PRESETS.glob("*.yaml")):
        recipe = load_model(path, Recipe)
        stages = " -> ".join(stage.kind for stage in recipe.stages)
        table.add_row(
            str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path),
            stages,
            recipe.description.strip().splitlines()[0] if recipe.description else "",
        )
    stdout.print(table)
