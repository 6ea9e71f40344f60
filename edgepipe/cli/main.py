"""Entry point: builds the typer app and turns every EdgepipeError into ``error:``/``hint:`` and an exit code.

This is the only place with process-wide side effects (TensorFlow's log level), per DESIGN.md.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer
from rich.markup import escape

from edgepipe.cli import agent as agent_command
from edgepipe.cli import compare as compare_command
from edgepipe.cli import deploy as deploy_command
from edgepipe.cli import emulator as emulator_command
from edgepipe.cli import farm as farm_command
from edgepipe.cli import history as history_command
from edgepipe.cli import optimize as optimize_command
from edgepipe.cli import recipes as recipes_command
from edgepipe.cli import report as report_command
from edgepipe.cli import targets as targets_command
from edgepipe.cli.console import stderr
from edgepipe.errors import INTERNAL_ERROR_EXIT_CODE, INTERRUPTED_EXIT_CODE, EdgepipeError

# typer bundles its own copy of click (typer._click) in newer releases and uses the click package in older ones;
# its public BadParameter derives from whichever ClickException it uses, so take the class from there.
_CLICK_EXCEPTION: type[Exception] = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")

app = typer.Typer(
    rich_markup_mode=None,
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
app.add_typer(farm_command.app, name="farm")


def _print_version(value: bool) -> None:
    if value:
        from edgepipe import __version__

        typer.echo(f"edgepipe {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print edgepipe's version and exit."),
    ] = False,
) -> None:
    """Compress a Keras model with TF-MOT, convert it to full-integer TFLite, verify it, deploy it to a board."""


@app.command("version")
def version() -> None:
    """Print edgepipe's version and the tool chain it finds installed."""
    from edgepipe import __version__
    from edgepipe.provenance import tool_versions

    typer.echo(f"edgepipe {__version__}")
    for name, value in tool_versions().items():
        if name != "edgepipe":
            typer.echo(f"  {name} {value}")


def _command_words(argv: list[str]) -> list[str]:
    """The leading (sub)command names of ``argv``, e.g. ``['targets', 'check']``, for a usage line."""
    import typer.main

    words: list[str] = []
    group = typer.main.get_command(app)
    for word in argv:
        commands = getattr(group, "commands", {})
        if word not in commands:
            break
        words.append(word)
        group = commands[word]
    return words


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # CI cancels a job with SIGTERM: unwind like Ctrl-C, so children stop, partial files go, results say so.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        # Not standalone, typer returns the code of a typer.Exit, and turns Ctrl-C (or SIGTERM, mapped to it
        # above) into 130, instead of raising.
        code = app(standalone_mode=False, prog_name="edgepipe")
        if code == INTERRUPTED_EXIT_CODE:
            stderr.print("[red]interrupted[/]: nothing half-written was left in place of a result")
        sys.exit(code if isinstance(code, int) else 0)
    except EdgepipeError as exc:
        stderr.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        if exc.hint:
            stderr.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        stderr.print("[red]interrupted[/]: nothing half-written was left in place of a result")
        sys.exit(INTERRUPTED_EXIT_CODE)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(INTERRUPTED_EXIT_CODE)
    except _CLICK_EXCEPTION as exc:  # usage mistakes: a usage line and exit 2, never a traceback
        if getattr(exc, "ctx", True) is None:
            # click's option parser raises some mistakes (an option without its value) before a command's
            # context exists, so click would print the error alone; name the command and its help.
            command = " ".join(["edgepipe", *_command_words(sys.argv[1:])])
            stderr.print(f"Usage: {command} [OPTIONS] ...\nTry '{command} --help' for help.\n", highlight=False)
        exc.show()
        sys.exit(exc.exit_code)
    except Exception:
        stderr.print_exception()
        stderr.print("[bold red]internal error[/]: this is a bug in edgepipe; please report the traceback above")
        sys.exit(INTERNAL_ERROR_EXIT_CODE)
