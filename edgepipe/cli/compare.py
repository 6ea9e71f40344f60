"""``edgepipe compare --baseline main --candidate runs/digits``: the regression verdict; the exit code is the verdict.

A run is named by: a run id in the history (``42``), a tag (``main``: the newest complete run with that tag on
the target), a deploy result file (``deploy-rpi4.json``), or a run directory (its ``deploy-TARGET.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgepipe.cli.console import stdout
from edgepipe.errors import Inconclusive, RegressionFound
from edgepipe.files import write_json
from edgepipe.reporting.resolve import resolve_run

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
    history: Annotated[Path | None, typer.Option("--history", help="Results history (SQLite).")] = None,
) -> None:
    """Compare a candidate deploy with a baseline on the same target: exit 0 pass, 7 regression, 17 inconclusive."""
    from edgepipe.config.loading import validate
    from edgepipe.reporting.junit import write_junit
    from edgepipe.reporting.verdict import VerdictSettings
    from edgepipe.reporting.verdict import compare as judge

    chosen = {
        "alpha": alpha,
        "min_effect": min_effect,
        "max_accuracy_drop": max_accuracy_drop,
        "max_error_increase": max_error_increase,
        "max_size_growth": max_size_growth,
        "max_memory_growth": max_memory_growth,
    }
    settings = validate({k: v for k, v in chosen.items() if v is not None}, VerdictSettings, "command line")
    cand_record, cand_from = resolve_run(candidate, target, history)
    target = target or cand_record["target"]["name"]
    base_record, base_from = resolve_run(baseline, target, history)
    verdict = judge(base_record, cand_record, settings)

    table = Table("check", "result", "detail", box=None, pad_edge=False, title_justify="left",
                  title=f"edgepipe compare on {target}: {base_from}  ->  {cand_from}")  # fmt: skip
    for check in verdict.checks:
        row_style = "bold red" if check.status == "fail" else None  # a regression stands out in a CI log
        table.add_row(check.name, f"[{STYLE[check.status]}]{check.status}[/]", check.message, style=row_style)
    stdout.print(table)
    if verdict.changed:
        changes = Table("changed besides the numbers", "baseline", "candidate", box=None, pad_edge=False)
        for field, before, after in verdict.changed:
            changes.add_row(field, _short(before), _short(after))
        stdout.print(changes)
    if junit:
        write_junit(verdict, target, junit)
    if json_out:
        document = {"schema": "edgepipe.verdict/1", "target": target, "baseline": base_from,
                    "candidate": cand_from, "settings": settings.model_dump(), **verdict.to_dict()}  # fmt: skip
        write_json(json_out, document)
    colour = {"pass": "green", "regression": "bold red", "inconclusive": "yellow"}[verdict.status]
    stdout.print(f"verdict: [{colour}]{verdict.status}[/]", highlight=False)
    _point_to_report(cand_record)
    failed = [c for c in verdict.checks if c.status == "fail"]
    if verdict.status == "regression":
        raise RegressionFound(
            "regression in " + ", ".join(f"{c.name} ({c.message})" for c in failed),
            hint="the candidate is worse than the baseline on this board; see the table above",
        )
    if verdict.status == "inconclusive":
        reasons = "; ".join(c.message for c in verdict.checks if c.status == "inconclusive")
        raise Inconclusive(
            f"no verdict: {reasons}", hint="measure both on the same board state (cooled, same governor and versions)"
        )


def _point_to_report(record: dict[str, Any]) -> None:
    """Where the candidate's HTML report is, or how to make one."""
    from edgepipe.reporting.checks import get

    run_dir = get(record, "model.run_dir") or get(record, "provenance.optimize.run_dir")
    if not run_dir or not Path(run_dir).is_dir():
        return
    page = Path(run_dir) / "report.html"
    if page.is_file():
        stdout.print(f"HTML report: [bold]{page}[/]", highlight=False)
    else:
        stdout.print(f"HTML report: edgepipe report {run_dir} --html {page}", highlight=False)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:16] + "..." + text[-8:]
