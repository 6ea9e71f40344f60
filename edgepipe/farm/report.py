"""The farm report: a matrix of models x pools (p50, memory, accuracy, the verdict, the board, the attempts), as
JSON (``farm.json``, schema ``edgepipe.farm/1``), Markdown, self-contained HTML and JUnit (one case per job).

The farm's exit code is decided here, from the jobs' outcomes, most serious first::

    7    a regression against the baseline (a definite finding about a model: it wins over the rest)
    20+  a model failed on a board (its own code 21-26 when all such jobs agree, 20 when they differ)
    10   a job's infrastructure failures used up its attempts, or its pool had no healthy board left
    17   a verdict was inconclusive (board state differed between baseline and candidate)
    0    every job passed
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from typing import Any

from edgepipe.database import shown_location
from edgepipe.farm.store import FarmStore
from edgepipe.files import write_all_atomic, write_json
from edgepipe.provenance import now
from edgepipe.reporting.formatting import latency, mib, pct

SCHEMA = "edgepipe.farm/1"
OUTCOMES = ("pass", "regression", "inconclusive", "model-error", "infra-error")


def farm_document(store: FarmStore, run: int) -> dict[str, Any]:
    info = store.run_info(run)
    spec = info["spec"]
    jobs, attempts = store.jobs(run), [_timed(a) for a in store.attempts(run)]
    by_job: dict[int, list[dict[str, Any]]] = {}
    for attempt in attempts:
        by_job.setdefault(attempt["job"], []).append(attempt)
    rows = [_job_row(job, by_job.get(job["id"], [])) for job in jobs]
    counts = {outcome: sum(r["outcome"] == outcome for r in rows) for outcome in OUTCOMES}
    counts["unfinished"] = sum(r["state"] != "done" for r in rows)
    return {
        "schema": SCHEMA,
        "created": now(),
        "run": run,
        "farm": info["farm"],
        "farm_file": spec["farm_file"],
        "started": info["created"],
        "finished": info["finished"],
        "status": info["status"],
        "history": shown_location(store.path),
        "models": [m["label"] for m in spec["models"]],
        "pools": sorted({job["pool"] for job in jobs}, key=[j["pool"] for j in jobs].index),
        "baseline": spec["baseline"],
        "tags": spec["tags"],
        "jobs": rows,
        "boards": store.boards(run),
        "attempts": attempts,
        "timeline": timeline(info["created"], attempts),
        "counts": counts,
        "exit_code": exit_code(rows),
    }


def _timed(attempt: dict[str, Any]) -> dict[str, Any]:
    """An attempt with its duration (None while it runs)."""
    ended = attempt["finished"]
    took = _seconds(ended) - _seconds(attempt["started"]) if ended else None
    return {**attempt, "seconds": round(took, 3) if took is not None else None}


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def timeline(created: str, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per board, when each attempt ran (seconds since the farm run was created) and how busy the board was:
    where a farm run's time went (a board that idled, one that kept failing, a tail of one long job)."""
    begin = _seconds(created)
    ended = [a for a in attempts if a["finished"]]
    span = max((_seconds(a["finished"]) - begin for a in ended), default=0.0)
    boards: dict[str, list[dict[str, Any]]] = {}
    for a in ended:
        start = _seconds(a["started"]) - begin
        boards.setdefault(a["board"], []).append(
            {"start_s": round(start, 3), "seconds": a["seconds"], "model": a["model"], "outcome": a["outcome"]}
        )
    rows = [
        {"board": board, "bars": bars, "busy": round(sum(b["seconds"] for b in bars) / span, 4) if span else None}
        for board, bars in sorted(boards.items())
    ]
    return {"span_s": round(span, 3), "boards": rows}


def _job_row(job: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    summary = job["summary"] or {}
    verdict = summary.get("verdict") or {}
    return {
        "model": job["model"],
        "pool": job["pool"],
        "state": job["state"],
        "outcome": job["outcome"],
        "exit_code": job["exit_code"],
        "board": job["board"],
        "attempts": len([a for a in attempts if a["outcome"] != "abandoned"]),
        "boards_tried": [a["board"] for a in attempts if a["outcome"] != "abandoned"],
        "p50_ms": summary.get("p50_ms"),
        "peak_rss_kb": summary.get("peak_rss_kb"),
        "accuracy": summary.get("accuracy"),
        "metric": summary.get("metric"),
        "value": summary.get("value"),
        "error_metric": summary.get("error_metric"),  # a mixed model's value outputs: their error beside accuracy
        "value_error": summary.get("value_error"),
        "emulated": summary.get("emulated"),
        "message": summary.get("message"),
        "checks": verdict.get("checks", []),
        # the latency change against the baseline (paired when both ran in one job), as the verdict measured it
        "latency_change": next((c["change"] for c in verdict.get("checks", []) if c["name"] == "latency"), None),
        "run_id": job["run_id"],
        "baseline_run_id": job["baseline_run_id"],
    }


def exit_code(rows: list[dict[str, Any]]) -> int:
    outcomes = [r["outcome"] for r in rows]
    if "regression" in outcomes:
        return 7
    model_codes = {r["exit_code"] for r in rows if r["outcome"] == "model-error"}
    if model_codes:
        return model_codes.pop() if len(model_codes) == 1 else 20
    if "infra-error" in outcomes or any(r["state"] != "done" for r in rows):
        return 10
    if "inconclusive" in outcomes:
        return 17
    return 0


def cell_text(row: dict[str, Any]) -> str:
    """One matrix cell in words: the outcome, then what was measured and where."""
    parts = [row["outcome"] or row["state"]]
    if row["p50_ms"] is not None:
        change = row.get("latency_change")
        parts.append(f"p50 {latency(row['p50_ms'])}" + (f" ({change:+.1%} vs baseline)" if change is not None else ""))
    if row["peak_rss_kb"] is not None:
        parts.append(mib(row["peak_rss_kb"]))
    if row["accuracy"] is not None:
        parts.append(f"acc {pct(row['accuracy'])}")
        if row.get("value_error") is not None:
            parts.append(f"{row['error_metric']} {row['value_error']:.4g}")
    elif row["value"] is not None:
        parts.append(f"{row['metric']} {row['value']:.4g}")
    if row["board"]:
        tries = f", {row['attempts']} attempts" if row["attempts"] != 1 else ""
        parts.append(f"on {row['board']}{tries}")
    return " · ".join(parts)


def render_markdown(document: dict[str, Any]) -> str:
    counts = document["counts"]
    said = ", ".join(f"{n} {o}" for o, n in counts.items() if n)
    lines = [
        f"# Farm run {document['run']} ({document['farm']}): exit {document['exit_code']}",
        "",
        f"{len(document['jobs'])} jobs: {said}. Baseline: "
        f"{(document['baseline'] or {}).get('model', 'none')}. Tags: {', '.join(document['tags']) or 'none'}.",
        "",
        "| model | " + " | ".join(document["pools"]) + " |",
        "| --- | " + " | ".join("---" for _ in document["pools"]) + " |",
    ]
    cells = {(r["model"], r["pool"]): r for r in document["jobs"]}
    for model in document["models"]:
        row = [cell_text(cells[(model, pool)]) if (model, pool) in cells else "" for pool in document["pools"]]
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    lanes = document["timeline"]["boards"]
    if lanes:
        busy = ", ".join(f"{lane['board']} {lane['busy']:.0%} ({len(lane['bars'])})" for lane in lanes)
        lines += ["", f"Boards busy over the run's {document['timeline']['span_s']:.1f} s (attempts): {busy}."]
    problems = [r for r in document["jobs"] if r["outcome"] not in ("pass", None)]
    if problems:
        lines += ["", "## What did not pass", ""]
        lines += [f"- **{r['model']} on {r['pool']}** ({r['outcome']}): {r['message']}" for r in problems]
    quarantined = [b for b in document["boards"] if b["quarantined"]]
    if quarantined:
        lines += ["", "## Quarantined boards", ""]
        lines += [f"- **{b['board']}** ({b['pool']}): {b['reason']}" for b in quarantined]
    retried = [a for a in document["attempts"] if a["outcome"] not in ("done", "model-error")]
    if retried:
        lines += ["", "## Attempts that did not finish", "", "| job | board | outcome | error |"]
        lines += ["| --- | --- | --- | --- |"]
        lines += [f"| {a['model']} / {a['pool']} | {a['board']} | {a['outcome']} | {a['error_class'] or ''}: "
                  f"{(a['message'] or '')[:160]} |" for a in retried]  # fmt: skip
    return "\n".join(lines) + "\n"


def render_junit(document: dict[str, Any]) -> str:
    jobs = document["jobs"]
    suite = ET.Element(
        "testsuite",
        name=f"edgepipe farm {document['farm']} (run {document['run']})",
        tests=str(len(jobs)),
        failures=str(sum(j["outcome"] in ("regression", "model-error") for j in jobs)),
        errors=str(sum(j["outcome"] == "infra-error" or j["state"] != "done" for j in jobs)),
        skipped=str(sum(j["outcome"] == "inconclusive" for j in jobs)),
    )
    for job in jobs:
        case = ET.SubElement(suite, "testcase", classname=f"edgepipe.farm.{job['pool']}", name=job["model"])
        message = job["message"] or ""
        if job["outcome"] in ("regression", "model-error"):
            ET.SubElement(case, "failure", message=message, type=job["outcome"]).text = cell_text(job)
        elif job["outcome"] == "infra-error" or job["state"] != "done":
            ET.SubElement(case, "error", message=message or "not run", type="infrastructure").text = cell_text(job)
        elif job["outcome"] == "inconclusive":
            ET.SubElement(case, "skipped", message=f"inconclusive: {message}")
        else:
            ET.SubElement(case, "system-out").text = cell_text(job)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_reports(document: dict[str, Any], out: Path, junit: Path | None = None) -> None:
    """farm.json, farm.md and farm.html in ``out`` (and the JUnit file), all replaced together or none."""
    from edgepipe.farm.html import render_html

    files: dict[Path, str | bytes] = {
        out / "farm.md": render_markdown(document),
        out / "farm.html": render_html(document),
    }
    if junit is not None:
        files[junit] = render_junit(document)
    write_all_atomic(files)
    write_json(out / "farm.json", document)
