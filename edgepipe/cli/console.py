"""The consoles the CLI writes to: results on stdout, progress and errors on stderr (so stdout can be piped)."""

from pathlib import Path

from rich.console import Console

# Logs (CI, files) get 140 columns instead of rich's 80 so that the per-stage table does not fold.
stdout = Console(width=None if Console().is_terminal else 140)
stderr = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 140)


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when it lies below it."""
    absolute = Path(path).absolute()
    cwd = Path.cwd()
    return str(absolute.relative_to(cwd)) if absolute.is_relative_to(cwd) else str(path)
