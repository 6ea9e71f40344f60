"""``edgepipe targets list | check NAME``: the boards edgepipe knows, and whether one is ready."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgepipe.cli.console import shown, stdout
from edgepipe.errors import EdgepipeError, InfrastructureError

app = typer.Typer(
    rich_markup_mode=None, help="The boards edgepipe can deploy to (targets/*.yaml).", no_args_is_help=True
)

STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "n/a": "dim"}


@app.command("list")
def list_targets() -> None:
    """List the targets found (./targets, $EDGEPIPE_TARGETS_DIR, and the shipped ones)."""
    from edgepipe.targets import load_target, target_files

    table = Table("target", "transport", "where", "arch", "threads", "file", "description", box=None, pad_edge=False)
    for name, file in sorted(target_files().items()):
        try:
            target = load_target(name)
        except EdgepipeError as exc:
            table.add_row(name, "[red]invalid[/]", exc.message, "", "", shown(file), "")
            continue
        table.add_row(
            name,
            target.transport,
            target.where(),
            target.arch or "any",
            str(target.threads),
            shown(file),
            target.description,
        )
    stdout.print(table)


@app.command("check")
def check(
    name: Annotated[str, typer.Argument(help="Target name or .yaml file.")],
) -> None:
    """Check that a board is ready: reachable, Python, agent, runtime, disk, governor, temperature, throttling."""
    from edgepipe.cli.optimize import ConsoleProgress
    from edgepipe.deployment.board import check_target
    from edgepipe.targets import load_target

    target = load_target(name)
    progress = ConsoleProgress()
    rows = check_target(target, progress)
    progress.finish(failed=any(row.status == "fail" for row in rows))
    table = Table("check", "result", "detail", title=f"target {target.name}", title_justify="left", box=None)
    for row in rows:
        table.add_row(row.name, f"[{STYLE[row.status]}]{row.status}[/]", row.detail)
    stdout.print(table)
    failed = [row for row in rows if row.status == "fail"]
    if failed:
        hints = [row.hint for row in failed if row.hint]
        raise InfrastructureError(
            f"target {target.name} is not ready: {', '.join(row.name for row in failed)} failed",
            # the failing step's own advice (a missing host key, an image to build) before the generic one
            hint=hints[0]
            if hints
            else f"fix the rows marked fail; 'edgepipe agent install --target {target.name}' prepares a fresh board",
        )
