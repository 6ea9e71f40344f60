"""``edgepipe compare --baseline main --candidate runs/digits``: the regression verdict; the exit code is the verdict.

A run is named by: a run id in the history (``42``), a tag (``main``: the newest complete run with that tag on
the target), a deploy result file (``deploy-rpi4.json``), or a run directory (its ``deploy-TARGET.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgepipe.cli.console import stdout
from edgepipe.errors import ConfigError, Inconclusive, RegressionFound

STYLE = {"pass": "green", "fail": "bold red", "inconclusive": "yellow", "warn": "yellow", "n/a": "dim"}


def resolve_run(name: str, target: str | None, history_path: Path | None) -> tuple[dict[str, Any], str]:
    """(deploy record, a description of where it came from)."""
    path = Path(name)
    if path.is_file():
        return _read(path), str(path)
    if path.is_dir():
        files = sorted(path.glob(f"deploy-{target}.json" if target else "deploy-*.json"))
        files = [f for f in files if not f.name.endswith(".failed.json")]
        if len(files) != 1:
            found = ", ".join(f.name for f in files) or "none"
            raise ConfigError(
                f"{path}: expected one deploy result{f' for {target}' if target else ''}, found {found}",
                hint="name the target with --target, or the result file itself",
            )
        return _read(files[0]), str(files[0])
    from edgepipe.store import History

    with History(history_path) as store:
        if name.isdigit():
            return store.record(int(name)), f"run {name} in {store.path}"
        rows = store.runs(target=target, tag=name, limit=1)
        if not rows:
            where = f" on {target}" if target else ""
            raise ConfigError(
                f"{name!r} is not a file, a run directory, a run id, or a tag with a complete run{where} "
                f"in {store.path}",
                hint="deploy with --tag NAME to record a baseline; 'edgepipe history' lists what is there",
            )
        return store.record(rows[0].id), f"run {rows[0].id} (tag {name}) in {store.path}"


def _read(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable deploy result: {exc}") from None
    if not isinstance(record, dict) or record.get("schema") != "edgepipe.deploy/1":
        raise ConfigError(f"{path}: not an edgepipe deploy result (schema edgepipe.deploy/1)")
    return record


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
    history: Annotated[Path | None, typer.Option("--history", help="Results history (SQLite).")] = None,
) -> None:
    """Compare a candidate deploy with a baseline on the same target: exit 0 pass, 7 regression, 17 inconclusive."""
    from edgepipe.config.loading import validate
    from edgepipe.report.junit import write_junit
    from edgepipe.report.verdict import VerdictSettings
    from edgepipe.report.verdict import compare as judge

    chosen = {"alpha": alpha, "min_effect": min_effect, "max_accuracy_drop": max_accuracy_drop}
    settings = validate({k: v for k, v in chosen.items() if v is not None}, VerdictSettings, "command line")
    cand_record, cand_from = resolve_run(candidate, target, history)
    target = target or cand_record["target"]["name"]
    base_record, base_from = resolve_run(baseline, target, history)
    verdict = judge(base_record, cand_record, settings)

    table = Table("check", "result", "detail", box=None, pad_edge=False, title_justify="left",
                  title=f"edgepipe compare on {target}: {base_from}  ->  {cand_from}")  # fmt: skip
    for check in verdict.checks:
        table.add_row(check.name, f"[{STYLE[check.status]}]{check.status}[/]", check.message)
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
        json_out.write_text(json.dumps(document, indent=1, default=str) + "\n")
    colour = {"pass": "green", "regression": "bold red", "inconclusive": "yellow"}[verdict.status]
    stdout.print(f"verdict: [{colour}]{verdict.status}[/]", highlight=False)
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


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:16] + "..." + text[-8:]
