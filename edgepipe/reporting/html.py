"""The self-contained HTML report: one file, styles, plots (inline SVG), data and script inline, no fetches."""

from __future__ import annotations

import json
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from edgepipe.analyze.profile_diff import signed_time
from edgepipe.reporting.formatting import (
    kib,
    latency,
    mib,
    output_errors,
    parity_agreement,
    pct,
    points,
    score,
    score_delta,
    score_label,
)
from edgepipe.reporting.plots import figures, panels, plot_title, profiled_deployment

CAPTIONS = (
    (
        "accuracy_vs_size",
        "SCORE on the host (circles) and on each target (squares) against the gzip size per stage. The vertical "
        "axis spans at least 5 accuracy points (or half the largest error), so a small change looks small.",
    ),
    ("accuracy_vs_latency", "SCORE on each target against its median latency (log scale). Hollow squares: emulated."),
    (
        "latency_distributions",
        "Latency per stage from every raw sample of every measuring process (log scale): box p25-p75, line the "
        "median, whiskers p1-p99, dots the fastest and slowest run.",
    ),
    ("layers", "Parameters (all and non-zero) and multiply-accumulates per Keras layer of the final model."),
    (
        "profile",
        "Measured time per operator of the final model (deploy --profile) next to its multiply-accumulates and "
        "the bytes it reads and writes; grey: too fast to resolve.",
    ),
    (
        "roofline",
        "Each operator with multiply-accumulates at its arithmetic intensity and measured throughput, under the "
        "target's ceilings: left of the dotted ridge an operator is memory-bound, right of it compute-bound.",
    ),
)


def template_environment(package: str) -> Environment:
    """Jinja for edgepipe's HTML pages: the package's ``templates/``, escaping on, a missing value an error, and
    the number formats every report shares."""
    environment = Environment(
        loader=PackageLoader(package, "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        kib=kib,
        mib=mib,
        pct=pct,
        points=points,
        latency=latency,
        score=score,
        score_delta=score_delta,
        output_errors=output_errors,
        score_label=score_label,
        signed_time=signed_time,
    )
    return environment


def render_html(report: dict[str, Any]) -> str:
    environment = template_environment("edgepipe.reporting")
    template = environment.get_template("report.html.j2")
    profiled = profiled_deployment(report)
    return template.render(
        report=report,
        profiled=profiled,
        slowest=_slowest(profiled) if profiled else [],
        changes=[{**change, "shown": _changed(change)} for change in report.get("profile_changes", [])],
        metric=report["metric"]["name"],
        label=score_label(report["metric"]["name"]),
        error=(report["metric"].get("value_error") or {}).get("name"),  # a mixed model's value outputs
        error_label=score_label((report["metric"].get("value_error") or {}).get("name") or ""),
        value_outputs=report["metric"].get("value_outputs") or [],  # several outputs measured by an error
        figures=figures(report),
        captions=[(name, text.replace("SCORE", _score_word(report))) for name, text in CAPTIONS],
        emulated_targets=[t["name"] for t in report["targets"] if t["emulated"]],
        parity_rows=_parity_rows(report),
        # Inside <script>, "</" would end the element early; JSON allows the escaped form.
        report_json=json.dumps(report, separators=(",", ":")).replace("</", "<\\/"),
    )


def _changed(change: dict[str, Any], count: int = 12) -> list[dict[str, Any]]:
    """The operators that changed most (removed and added ones included), largest change first."""
    moved = [row for row in change["ops"] if row["status"] != "same"]
    return sorted(moved, key=lambda row: -abs(row["change_ms"]))[:count]


def _slowest(deployment: dict[str, Any], count: int = 10) -> list[dict[str, Any]]:
    resolved = [row for row in deployment["profile"]["ops"] if row["resolved"]]
    return sorted(resolved, key=lambda row: -row["time_ms"])[:count]


def _score_word(report: dict[str, Any]) -> str:
    """What the score plots show, as the start of a sentence: accuracy, or the model's error."""
    metric = report["metric"]
    drawn = panels(report)
    if len(drawn) > 1:  # several value outputs: a panel each
        lower = "errors: lower is better" if drawn[0].accuracy else "lower is better"
        return f"{plot_title(drawn)} ({lower}; a panel each)"
    return "Accuracy" if metric["name"] == "accuracy" else f"{metric['meaning'].capitalize()} (lower is better)"


def _parity_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for stage in report["stages"]:
        for d in stage["deployments"]:
            parity = d.get("parity")
            if parity and parity.get("passed") is not None:
                tolerance = parity.get("tolerance") or {}
                rows.append(
                    {
                        "target": d["target"],
                        "stage": stage["name"] + (" (final)" if stage["final"] else ""),
                        "parity": parity,
                        "agreement": parity_agreement(parity).removeprefix("top-1 agreement ").removeprefix("error "),
                        "tolerance": ", ".join(f"{k} {v}" for k, v in tolerance.items()) or "n/a",
                    }
                )
    return rows
