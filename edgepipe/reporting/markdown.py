"""The Markdown summary: one table, short enough for a pull-request comment (GitHub-flavoured Markdown)."""

from __future__ import annotations

from typing import Any

from edgepipe.reporting.formatting import kib, latency, output_errors, parity_agreement, score, score_label


def render_markdown(report: dict[str, Any], html_name: str | None = None) -> str:
    run = report["run"]
    targets = report["targets"]
    lines = [f"### edgepipe: `{run['recipe']}` ({run['status']})", ""]
    metric = report["metric"]["name"]
    label = score_label(metric)
    error = (report["metric"].get("value_error") or {}).get("name")  # a mixed model's value outputs
    header = ["stage", "gzip", "non-zero params", f"host {label}"] + ([f"host {score_label(error)}"] if error else [])
    for t in targets:
        mark = " †" if t["emulated"] else ""
        header += [f"{t['name']}{mark} {label}"]
        header += [f"{t['name']}{mark} {score_label(error)}"] if error else []
        header += [f"{t['name']}{mark} p50"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|")
    for stage in report["stages"]:
        name = f"**{stage['name']}** (final)" if stage["final"] else stage["name"]
        cells = [name, kib(stage["model"]["gzip_bytes"]), f"{stage['nonzero_params']:,}"]
        cells.append(score(stage["host_score"], metric))
        cells += [score(stage.get("host_value_error"), error)] if error else []
        for t in targets:
            d = next((d for d in stage["deployments"] if d["target"] == t["name"]), None)
            blank = [""] * (2 if error else 1)
            if d is None:
                cells += ["", *blank]
            elif d["status"] != "passed":
                cells += [f"failed: {d['error']['class'] if d['error'] else '?'}", *blank]
            else:
                cells += [score(d["score"], metric)]
                cells += [score(d.get("value_error"), error)] if error else []
                cells += [latency(d["latency_ms"]["p50"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += _outputs_lines(report)
    emulated = [t["name"] for t in targets if t["emulated"]]
    if emulated:
        lines.append(f"† emulated (QEMU): latency is the emulator's, not the board's. {_parity_line(report)}")
    lines += _slowest_line(report)
    if not targets:
        lines.append("No deploy results yet: `edgepipe deploy --target NAME RUN_DIR --stages`.")
    if html_name:
        lines.append(f"Full report with plots: `{html_name}`.")
    return "\n".join(lines).rstrip() + "\n"


def _outputs_lines(report: dict[str, Any]) -> list[str]:
    """The final model's value outputs one by one, when several are measured by an error: the table's error is
    their mean, which the output with the largest errors decides."""
    outputs = report["metric"].get("value_outputs")
    final = next((stage for stage in report["stages"] if stage["final"]), None)
    if not outputs or final is None:
        return []
    lines = []
    if final.get("host_errors"):
        each = ", ".join(
            f"{o['name']} {score_label(o['metric'])} {score(value, o['metric'])}"
            for o, value in zip(outputs, final["host_errors"], strict=True)
        )
        lines.append(f"Each value output of the final model on the host: {each}.")
    for d in final["deployments"]:
        if d["status"] == "passed" and d.get("errors"):
            mark = " †" if d["emulated"] else ""
            lines.append(f"On {d['target']}{mark}: {output_errors(d['errors'], outputs)}.")
    return [" ".join(lines), ""] if lines else []


def _parity_line(report: dict[str, Any]) -> str:
    parts = []
    for stage in report["stages"]:
        for d in stage["deployments"]:
            parity = d.get("parity")
            if stage["final"] and parity and parity.get("passed") is not None:
                parts.append(
                    f"Parity {d['target']}: {'pass' if parity['passed'] else 'FAIL'} ({parity_agreement(parity)}, "
                    f"largest difference {parity['max_abs_diff']:g} step(s))."
                )
    return " ".join(parts)


def _slowest_line(report: dict[str, Any], count: int = 5) -> list[str]:
    """The final model's slowest operators on the board, when it was deployed with --profile."""
    from edgepipe.reporting.plots import profiled_deployment

    deployment = profiled_deployment(report)
    if deployment is None:
        return []
    rows = sorted((r for r in deployment["profile"]["ops"] if r["resolved"]), key=lambda r: -r["time_ms"])[:count]
    named = ", ".join(f"{r['layer'] or '#' + str(r['index'])} ({r['op']}) {latency(r['time_ms'])} ({r['share']:.0%})"
                      for r in rows)  # fmt: skip
    mark = " †" if deployment["emulated"] else ""
    lines = [f"Slowest operators on {deployment['target']}{mark}: {named}.", ""]
    for change in report.get("profile_changes", []):
        mark = " †" if change["emulated"] else ""
        whole = f"{latency(change['baseline_ms'])} → {latency(change['candidate_ms'])}"
        lines += [f"Per layer, {change['from']} → {change['to']} on {change['target']}{mark} ({whole}): "
                  f"{change['summary']}.", ""]  # fmt: skip
    return lines
