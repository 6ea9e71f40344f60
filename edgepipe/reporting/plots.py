"""The report's figures, drawn with matplotlib and returned as inline SVG text (no files, no network).

Every figure reads only the report document. Emulated targets are drawn with hollow markers and say
"emulated" in their legend entry and titles: their latency is QEMU's, not the board's.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display here or on CI; chosen before pyplot is imported

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

STYLE = {
    "svg.fonttype": "none",  # text stays text: smaller files, selectable, the page's font
    "svg.hashsalt": "edgepipe",  # stable element ids, so the same report gives the same bytes
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def figures(report: dict[str, Any]) -> dict[str, str]:
    """Figure name -> SVG markup for every plot the data allows (a run never deployed has no latency plots)."""
    with plt.rc_context(STYLE):
        drawn = {"accuracy_vs_size": accuracy_vs_size(report), "layers": layers(report)}
        if any(d["latency_ms"] for stage in report["stages"] for d in stage["deployments"]):
            drawn["accuracy_vs_latency"] = accuracy_vs_latency(report)
            drawn["latency_distributions"] = latency_distributions(report)
    return drawn


def accuracy_vs_size(report: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    stages = report["stages"]
    sizes = [s["model"]["gzip_bytes"] / 1024 for s in stages]
    value = _scale(report)
    host = [value(s["host_score"]) for s in stages]
    ax.plot(sizes, host, "o-", color="#444444", label="host (.tflite)", zorder=3)
    for index, target in enumerate(report["targets"]):
        points = [
            (s["model"]["gzip_bytes"] / 1024, value(d["score"]))
            for s in stages
            for d in s["deployments"]
            if d["target"] == target["name"] and d["score"] is not None
        ]
        if points:
            _scatter(ax, points, index, target)
    for index, (stage, x, y) in enumerate(zip(stages, sizes, host, strict=True)):
        if y is not None:
            _annotate(ax, _label(stage), x, y, index)
    name = _axis(report)
    title = f"{name.split(' (')[0].capitalize()} against compressed size, per stage"
    return _finish(fig, ax, "gzip size (KiB, log scale)", name, title)


def accuracy_vs_latency(report: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    value = _scale(report)
    for index, target in enumerate(report["targets"]):
        points, labels = [], []
        for stage in report["stages"]:
            for d in stage["deployments"]:
                if d["target"] == target["name"] and d["latency_ms"] and d["score"] is not None:
                    points.append((d["latency_ms"]["p50"] * 1000, value(d["score"])))
                    labels.append(_label(stage))
        if points:
            _scatter(ax, points, index, target)
            for order, ((x, y), label) in enumerate(zip(points, labels, strict=True)):
                _annotate(ax, label, x, y, order)
    name = _axis(report)
    title = f"{name.split(' (')[0].capitalize()} against latency, per stage and target"
    return _finish(fig, ax, "latency p50 (µs, log scale)", f"{name} on the target", title)


def latency_distributions(report: dict[str, Any]) -> str:
    """One panel per target: a box per stage drawn from the percentiles of all raw samples."""
    targets = [t for t in report["targets"] if _measured(report, t["name"])]
    fig, axes = plt.subplots(len(targets), 1, figsize=(6.4, 0.6 + 2.2 * len(targets)), squeeze=False)
    for ax, target in zip(axes[:, 0], targets, strict=True):
        boxes, labels = [], []
        for stage in report["stages"]:
            for d in stage["deployments"]:
                if d["target"] == target["name"] and d["latency_quantiles_ms"]:
                    boxes.append(_box_stats(d["latency_quantiles_ms"], _label(stage)))
                    labels.append(_label(stage))
        ax.bxp(boxes, orientation="horizontal", showfliers=True, flierprops={"markersize": 2})
        ax.invert_yaxis()  # recipe order from the top
        ax.set_xlabel("latency (µs, log scale); box: p25-p75, whiskers: p1-p99, dots: min and max")
        _log_x(ax)
        title = f"{target['name']}: latency per stage"
        ax.set_title(title + (" (EMULATED: QEMU's speed, not the board's)" if target["emulated"] else ""))
    fig.tight_layout()
    return _svg(fig)


def layers(report: dict[str, Any]) -> str:
    """Parameters (all and non-zero) and MACs per operator of the final model."""
    final = next(s for s in report["stages"] if s["final"])
    rows = [r for r in final["layers"] if r["params"] or r["macs"]]
    names = [f"{r['index']}: {r['op']}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 0.9 + 0.35 * max(len(rows), 2)), sharey=True)
    ys = range(len(rows))
    left.barh([y + 0.2 for y in ys], [r["params"] for r in rows], height=0.4, color="#bbbbbb", label="all")
    left.barh([y - 0.2 for y in ys], [r["nonzero_params"] for r in rows], height=0.4, color=COLORS[0], label="non-zero")
    left.set_yticks(list(ys), names)
    left.invert_yaxis()
    left.set_xlabel("parameters")
    left.legend(fontsize=8)
    right.barh(list(ys), [r["macs"] for r in rows], height=0.5, color=COLORS[2])
    right.set_xlabel("MACs per inference")
    fig.suptitle(f"Per-layer parameters and MACs of the final model ({_label(final)})")
    fig.tight_layout()
    return _svg(fig)


def _scatter(ax: Any, points: list[tuple[float, float | None]], index: int, target: dict[str, Any]) -> None:
    color = COLORS[index % len(COLORS)]
    emulated = target["emulated"]
    ax.scatter(
        [p[0] for p in points],
        [p[1] for p in points],
        s=42,
        marker="s",
        facecolors="none" if emulated else color,
        edgecolors=color,
        label=f"{target['name']}" + (" (emulated)" if emulated else ""),
        zorder=4,
    )


def _annotate(ax: Any, label: str, x: float, y: float | None, order: int) -> None:
    """Stage names above and below their points by turns: neighbouring stages often share an accuracy."""
    ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4 if order % 2 == 0 else -11), fontsize=8)


def _finish(fig: Figure, ax: Any, xlabel: str, ylabel: str, title: str) -> str:
    """Labels, a readable log axis when the data spans a decade, the legend; then the SVG."""
    ax.set_xlabel(xlabel)
    _log_x(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    return _svg(fig)


def _log_x(ax: Any) -> None:
    """Log scale with plain numbers (2, 5, 10, 20 ...) instead of 2x10^1, when the data spans a decade or more."""
    low, high = ax.dataLim.intervalx
    if not (low > 0 and high / low >= 10):
        ax.set_xlabel(ax.get_xlabel().replace(", log scale", ""))
        return
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


def _box_stats(quantiles_ms: list[float], label: str) -> dict[str, Any]:
    us = [q * 1000 for q in quantiles_ms]  # percentiles 0..100
    return {
        "label": label,
        "med": us[50],
        "q1": us[25],
        "q3": us[75],
        "whislo": us[1],
        "whishi": us[99],
        "fliers": [us[0], us[100]],
    }


def _measured(report: dict[str, Any], target: str) -> bool:
    return any(d["target"] == target and d["latency_quantiles_ms"] for s in report["stages"] for d in s["deployments"])


def _label(stage: dict[str, Any]) -> str:
    return f"{stage['name']} (final)" if stage["final"] and stage["name"] != "final" else stage["name"]


def _scale(report: dict[str, Any]) -> Any:
    """How a score is drawn: accuracy in percent, an error as it is."""
    return _pct if report["metric"]["name"] == "accuracy" else (lambda value: value)


def _axis(report: dict[str, Any]) -> str:
    metric = report["metric"]
    if metric["name"] == "accuracy":
        return "accuracy (%)"
    return f"{metric['meaning']} (lower is better)"


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _svg(fig: Figure) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML declaration and DOCTYPE: the SVG sits inside HTML
