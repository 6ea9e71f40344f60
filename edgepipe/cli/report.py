"""``edgepipe report RUN_DIR [--html F] [--md F] [--json F]``: what a team reads after an optimization."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from edgepipe.cli.console import stdout
from edgepipe.reporting.formatting import kib, latency, mib, score, score_delta, score_label


def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of 'edgepipe optimize' (and its deploys).")],
    html: Annotated[Path | None, typer.Option("--html", help="Self-contained HTML report with plots.")] = None,
    md: Annotated[Path | None, typer.Option("--md", help="Markdown summary for a pull-request comment.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="The report's data (schema edgepipe.report/5); default RUN_DIR.")
    ] = None,
) -> None:
    """Report a run: per stage and target accuracy, size, parameters, MACs, latency and memory, with plots.

    With no --html/--md/--json, writes report.html, report.md and report.json into the run directory.
    """
    from edgepipe import api

    files = api.report(run_dir, html=html, markdown=md, json=json_out)
    print_report(files.document)
    for label, path in (("HTML report", files.html), ("Markdown summary", files.markdown), ("JSON", files.json)):
        if path is not None:
            stdout.print(f"{label}: [bold]{escape(str(path))}[/]", highlight=False)


def print_report(document: dict[str, Any]) -> None:
    """One table per target, stages as rows; failures in red, emulated figures labelled."""
    run = document["run"]
    metric = document["metric"]["name"]
    label = score_label(metric)
    models = Table("stage", "gzip", "non-zero params", "MACs", f"host {label}", box=None, pad_edge=False)
    models.title = f"edgepipe report: {run['recipe']} ({run['dir']})"
    models.title_justify = "left"
    for stage in document["stages"]:
        models.add_row(
            _stage_name(stage),
            kib(stage["model"]["gzip_bytes"]),
            f"{stage['nonzero_params']:,}",
            f"{stage['macs']:,}",
            score(stage["host_score"], metric),
        )
    stdout.print(models)
    if not document["targets"]:
        stdout.print("no deploy results yet: edgepipe deploy --target NAME RUN_DIR --stages", highlight=False)
    for target in document["targets"]:
        emulated = target["emulated"]
        title = f"{target['name']}: {target['machine']}, {target['runtime']} {target['runtime_version']}"
        columns = ("stage", label, "vs host", "p50", "p90", "p99", "peak RSS")
        table = Table(*columns, box=None, pad_edge=False, title_justify="left", caption_justify="left")
        table.title = title + ("  [yellow]EMULATED[/]" if emulated else "")
        if emulated:
            table.caption = "latency and memory under QEMU are the emulator's, not the board's"
        for stage in document["stages"]:
            for d in stage["deployments"]:
                if d["target"] != target["name"]:
                    continue
                if d["status"] != "passed":
                    error = d["error"] or {"class": "failed", "message": ""}
                    table.add_row(_stage_name(stage), f"[red]{error['class']}[/]", error["message"][:60])
                    continue
                table.add_row(
                    _stage_name(stage),
                    score(d["score"], metric),
                    score_delta(d, metric),
                    latency(d["latency_ms"]["p50"]),
                    latency(d["latency_ms"]["p90"]),
                    latency(d["latency_ms"]["p99"]),
                    mib(d["memory_kb"]["after_runs"]) if d["memory_kb"] else "n/a",
                )
        stdout.print(table)


def _stage_name(stage: dict[str, Any]) -> str:
    return f"[bold]{stage['name']}[/] (final)" if stage["final"] else stage["name"]
