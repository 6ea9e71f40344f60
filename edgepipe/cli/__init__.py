"""The ``edgepipe`` command line. Subcommands live one per module; this package only wires them up."""

from edgepipe.cli.main import app, main

__all__ = ["app", "main"]
