"""The consoles the CLI writes to: results on stdout, progress and errors on stderr (so stdout can be piped)."""

from rich.console import Console

# Logs (CI, files) get 140 columns instead of rich's 80 so that the per-stage table does not fold.
stdout = Console(width=None if Console().is_terminal else 140)
stderr = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 140)
