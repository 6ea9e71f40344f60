"""``edgepipe agent install --target NAME``: prepare a fresh board (venv, numpy, TFLite runtime, agent);
``edgepipe agent clean --target NAME``: remove what deploys left there."""

from __future__ import annotations

from typing import Annotated

import typer

from edgepipe.cli.console import stdout

app = typer.Typer(rich_markup_mode=None, help="The device agent that measures models on a board.", no_args_is_help=True)


@app.command("install")
def install(
    target: Annotated[str, typer.Option("--target", "-t", help="Target name or .yaml file.")],
) -> None:
    """Create a virtual environment on the board with numpy and a TFLite runtime, and send the agent."""
    from edgepipe.cli.optimize import ConsoleProgress
    from edgepipe.deployment.board import install_runtime
    from edgepipe.targets import load_target

    chosen = load_target(target)
    progress = ConsoleProgress()
    try:
        report = install_runtime(chosen, progress)
    except BaseException:
        progress.finish(failed=True)
        raise
    progress.finish()
    runtimes = ", ".join(f"{name} {version}" for name, version in report["runtimes"].items())
    board = report["board"]
    stdout.print(
        f"agent {report['agent_version']} ready on {chosen.name}: {board['machine']}, Python {board['python']}, "
        f"numpy {board['numpy']}, {runtimes}",
        highlight=False,
    )


@app.command("clean")
def clean(
    target: Annotated[str, typer.Option("--target", "-t", help="Target name or .yaml file.")],
    everything: Annotated[
        bool, typer.Option("--all", help="Remove every model, data file and agent edgepipe keeps on the board.")
    ] = False,
) -> None:
    """Remove the models, data and agents used longest ago from the board until the rest fit in the target's
    cache_limit_mb (deploys do this after each job), or all of them with --all. The venv stays."""
    from edgepipe.cli.optimize import ConsoleProgress
    from edgepipe.deployment.board import clean_cache
    from edgepipe.reporting.formatting import plural
    from edgepipe.targets import load_target

    chosen = load_target(target)
    progress = ConsoleProgress()
    try:
        usage = clean_cache(chosen, everything, progress)
    except BaseException:
        progress.finish(failed=True)
        raise
    progress.finish()
    limit = "" if chosen.cache_limit_mb is None or everything else f" (limit {chosen.cache_limit_mb:g} MB)"
    stdout.print(
        f"{chosen.name}: removed {plural(usage.removed_files, 'file')}, {usage.removed_bytes / 2**20:,.1f} MB; "
        f"{plural(usage.files, 'file')}, {usage.bytes / 2**20:,.1f} MB left in {chosen.workdir}{limit}",
        highlight=False,
    )
