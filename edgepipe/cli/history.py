"""``edgepipe history [--target NAME] [--tag TAG] [--model SHA]``: the recorded deploys, newest first."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from edgepipe.cli.console import stdout
from edgepipe.reporting.formatting import mib


def history(
    target: Annotated[str | None, typer.Option("--target", "-t", help="Only this target.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only runs with this tag.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Only this model (sha256 or a prefix).")] = None,
    show: Annotated[int | None, typer.Option("--show", help="Print the whole record of this run as JSON.")] = None,
    add_tag: Annotated[
        list[str] | None, typer.Option("--add-tag", help="With --show RUN: tag that run (repeatable).")
    ] = None,
    include_incomplete: Annotated[bool, typer.Option("--all", help="Also runs that never finished.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many runs.")] = 50,
    path: Annotated[
        str | None, typer.Option("--history", help="Results history: SQLite file or postgresql:// URL.")
    ] = None,
) -> None:
    """List recorded deploys, show one as JSON, or tag one."""
    from edgepipe.database import as_location
    from edgepipe.store import History

    with History(as_location(path)) as store:
        if show is not None:
            if add_tag:
                store.tag(show, add_tag)
                stdout.print(f"tagged run {show}: {', '.join(add_tag)}", highlight=False)
                return
            print(json.dumps(store.record(show), indent=1))
            return
        rows = store.runs(target, tag, model, include_incomplete, limit)
        table = Table(
            "run", "finished", "target", "model", "status", "runtime", "p50", "p99", "accuracy", "peak RSS", "tags",
            title=f"{len(rows)} run(s) in {store.path}", title_justify="left", box=None, pad_edge=False,
        )  # fmt: skip
        for row in rows:
            status = row.status if row.complete else "[yellow]incomplete[/]"
            if row.status == "failed":
                status = f"[red]failed[/] {row.error_class or ''}"
            table.add_row(
                str(row.id),
                (row.finished or row.started)[:19].replace("T", " "),
                row.target + (" (emulated)" if row.emulated else ""),
                row.model_sha256[:12],
                status,
                f"{row.runtime} {row.runtime_version}" if row.runtime else "",
                _ms(row.latency_p50_ms),
                _ms(row.latency_p99_ms),
                f"{row.accuracy:.4f}" if row.accuracy is not None else "",
                mib(row.peak_rss_kb) if row.peak_rss_kb else "",
                ", ".join(row.tags),
            )
        stdout.print(table)


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.1f} µs" if value < 1 else f"{value:.2f} ms"
