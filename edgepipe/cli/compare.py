"""``edgepipe compare --baseline main --candidate runs/digits``: the regression verdict; the exit code is the verdict.

A run is named by: a run id in the history (``42``), a tag (``main``: the newest complete run with that tag on
the target), a deploy result file (``deploy-rpi4.json``), or a run directory (its ``deploy-TARGET.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from edgepipe.analyze.profile_diff import signed_time
from edgepipe.cli.console import stdout
from edgepipe.reporting.formatting import latency

STYLE = {"pass": "green", "fail": "bold red", "inconclusive": "yellow", "warn": "yellow", "n/a": "dim"}


def compare(
    baseline: Annotated[str, typer.Option("--baseline", "-b", help="Tag, run id, result file or run directory.")],
    candidate: Annotated[str, typer.Option("--candidate", "-c", help="Tag, run id, result file or run directory.")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="The target both ran on.")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write the checks as JUnit XML.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the verdict as JSON.")] = None,
    alpha: Annotated[float | None, typer.Option(help="Significance of the latency test (default 0.01).")] = None,
    min_effect: Annotated[
        float | None, typer.Option(help="Smallest latency change that counts (default 0.03).")
    ] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="Points (default 0.5).")] = None,
    max_error_increase: Annotated[
        float | None, typer.Option(help="Relative growth of an error metric (regression; default 0.05).")
    ] = None,
    max_size_growth: Annotated[
        float | None, typer.Option(help="Relative growth of the .tflite file (default 0.01).")
    ] = None,
    max_memory_growth: Annotated[
        float | None, typer.Option(help="Relative growth of the peak RSS (default 0.10).")
    ] = None,
    history: Annotated[
        str | None, typer.Option("--history", help="Results history: SQLite file or postgresql:// URL.")
    ] = None,
) -> None:
    """Compare a candidate deploy with a baseline on the same target: exit 0 pass, 7 regression, 17 inconclusive."""
    from edgepipe import api

    chosen = {
        "alpha": alpha,
        "min_effect": min_effect,
        "max_accuracy_drop": max_accuracy_drop,
        "max_error_increase": max_error_increase,
        "max_size_growth": max_size_growth,
        "max_memory_growth": max_memory_growth,
    }
    thresholds = {name: value for name, value in chosen.items() if value is not None}
    verdict = api.compare(baseline, candidate, target=target, history=history, junit=junit, json=json_out, **thresholds)
    title = f"edgepipe compare on {verdict.target}: {verdict.baseline}  ->  {verdict.candidate}"
    table = Table("check", "result", "detail", box=None, pad_edge=False, title_justify="left", title=title)
    for check in verdict.checks:
        row_style = "bold red" if check.status == "fail" else None  # a regression stands out in a CI log
        table.add_row(check.name, f"[{STYLE[check.status]}]{check.status}[/]", check.message, style=row_style)
    stdout.print(table)
    if verdict.changed:
        changes = Table("changed besides the numbers", "baseline", "candidate", box=None, pad_edge=False)
        for field, before, after in verdict.changed:
            changes.add_row(field, _short(before), _short(after))
        stdout.print(changes)
    if verdict.layers is not None:
        print_layer_changes(verdict.layers)
    colour = {"pass": "green", "regression": "bold red", "inconclusive": "yellow"}[verdict.status]
    stdout.print(f"verdict: [{colour}]{verdict.status}[/]", highlight=False)
    _point_to_report(verdict.candidate_record)
    verdict.raise_for_status()


def print_layer_changes(layers: dict[str, Any], count: int = 8) -> None:
    """The operators whose time changed the most (beyond the noise), and those a recipe removed or added."""
    changed = [row for row in layers["ops"] if row["status"] != "same"]
    if not changed:
        stdout.print("per-operator time: no operator changed beyond the noise", highlight=False)
        return
    table = Table("operator", "layer", "baseline", "candidate", "change", "", box=None, pad_edge=False,
                  title="per-operator time, largest changes first", title_justify="left")  # fmt: skip
    for row in sorted(changed, key=lambda r: -abs(r["change_ms"]))[:count]:
        style = "red" if row["status"] in ("slower", "added") else "green"
        table.add_row(
            row["op"], row["layer"] or "", _us(row["baseline_ms"]), _us(row["candidate_ms"]),
            f"[{style}]{signed_time(row['change_ms'])}[/]", row["status"],
        )  # fmt: skip
    stdout.print(table)


def _us(value: float | None) -> str:
    return "-" if value is None else latency(value)


def _point_to_report(record: dict[str, Any]) -> None:
    """Where the candidate's HTML report is, or how to make one."""
    from edgepipe.reporting.checks import get

    run_dir = get(record, "model.run_dir") or get(record, "provenance.optimize.run_dir")
    if not run_dir or not Path(run_dir).is_dir():
        return
    page = Path(run_dir) / "report.html"
    if page.is_file():
        stdout.print(f"HTML report: [bold]{escape(str(page))}[/]", highlight=False)
    else:
        stdout.print(f"HTML report: edgepipe report {run_dir} --html {page}", highlight=False)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:16] + "..." + text[-8:]
