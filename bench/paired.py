"""What the benchmarks share: a paired deploy to the local target, and printing a table of rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def deploy_paired(model: Path, baseline: Path, out: Path, target: str = "local") -> dict[str, Any]:
    """Deploy ``model`` to ``target`` with ``baseline`` timed in the same processes (alternating blocks)."""
    command = [sys.executable, "-m", "edgepipe", "deploy", "--target", target, "--model", str(model)]
    command += ["--baseline", str(baseline), "--no-history", "--quiet", "--out", str(out), "--repeats", "5"]
    subprocess.run(command, check=True, capture_output=True, timeout=1800)
    return dict(json.loads(out.read_text()))


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)), flush=True)
