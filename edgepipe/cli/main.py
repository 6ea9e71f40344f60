"""Entry point: builds the typer app and turns every EdgepipeError into ``error:``/``hint:`` and an exit code.

This is the only place with process-wide side effects (TensorFlow's log level), per DESIGN.md.
"""

from __future__ import annotations

import os
import sys

import typer

from edgepipe.cli import agent as agent_command
from edgepipe.cli import compare as compare_command
from edgepipe.cli import deploy as deploy_command
from edgepipe.cli import emulator as emulator_command
from edgepipe.cli import history as history_command
from edgepipe.cli import optimize as optimize_command
from edgepipe.cli import recipes as recipes_command
from edgepipe.cli import report as report_command
from edgepipe.cli import targets as targets_command
from edgepipe.cli.console import stderr
from edgepipe.errors import INTERNAL_ERROR_EXIT_CODE, INTERRUPTED_EXIT_CODE, EdgepipeError

app = typer.Typer(
    name="edgepipe",
    help="Compress a Keras model with TF-MOT, convert it to full-integer TFLite, verify it, deploy it to a board.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("optimize")(optimize_command.optimize)
app.command("deploy")(deploy_command.deploy)
app.command("history")(history_command.history)
app.command("compare")(compare_command.compare)
app.command("report")(report_command.report)
app.add_typer(recipes_command.app, name="recipes")
app.add_typer(targets_command.app, name="targets")
app.add_typer(agent_command.app, name="agent")
app.add_typer(emulator_command.app, name="emulator")


@app.command("version")
def version() -> None:
    """Print edgepipe's version and the tool chain it finds installed."""
    from edgepipe import __version__
    from edgepipe.provenance import tool_versions

    typer.echo(f"edgepipe {__version__}")
    for name, value in tool_versions().items():
        if name != "edgepipe":
            typer.echo(f"  {name} {value}")


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        app(standalone_mode=False)
    except EdgepipeError as exc:
        stderr.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        if exc.hint:
            stderr.print(f"[yellow]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        stderr.print("[red]interrupted[/]: nothing half-written was left in place of a result")
        sys.exit(INTERRUPTED_EXIT_CODE)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(INTERRUPTED_EXIT_CODE)
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        stderr.print_exception()
        stderr.print("[bold red]internal error[/]: this is a bug in edgepipe; please report the traceback above")
        sys.exit(INTERNAL_ERROR_EXIT_CODE)
