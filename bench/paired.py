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


def p50_and_change(model: Path, baseline: Path, out: Path) -> tuple[str, str]:
    """``deploy_paired`` to local, as a table shows it: "baseline -> model" p50 in µs, and the median block
    change (the regression gate's paired measure) with the speed-up it means."""
    from edgepipe.reporting.latency import paired_check
    from edgepipe.reporting.verdict import VerdictSettings

    timing = deploy_paired(model, baseline, out)["device"]["timing"]
    check = paired_check(timing["baseline"]["processes"], VerdictSettings())
    p50 = f"{timing['baseline']['latency_ms']['p50'] * 1e3:.1f} -> {timing['latency_ms']['p50'] * 1e3:.1f}"
    return p50, f"{check.change:+.1%} ({1 / (1 + check.change):.2f}x)"


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)), flush=True)
