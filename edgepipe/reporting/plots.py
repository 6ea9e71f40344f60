"""The report's figures, drawn with matplotlib and returned as inline SVG text (no files, no network).

Every figure reads only the report document. Emulated targets are drawn with hollow markers and say
"emulated" in their legend entry and titles: their latency is QEMU's, not the board's.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display here or on CI; chosen before pyplot is imported

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

STYLE = {
    "svg.fonttype": "none",  # text stays text: smaller files, selectable, the page's font
    "svg.hashsalt": "edgepipe",  # stable element ids, so the same report gives the same bytes
    "font.size": 10,  # figures are 5.4 in wide: on a 390 px phone this still draws ticks at about 8 px
    "axes.titlesize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
WIDTH_IN = 5.4
MIN_ACCURACY_SPAN = 5.0  # percentage points: a 0.4-point dip must not fill the axis
SHORT_OPS = {"FULLY_CONNECTED": "FC", "CONV_2D": "conv", "DEPTHWISE_CONV_2D": "dw conv", "TRANSPOSE_CONV": "deconv"}


def figures(report: dict[str, Any]) -> dict[str, str]:
    """Figure name -> SVG markup for every plot the data allows (a run never deployed has no latency plots)."""
    with plt.rc_context(STYLE):
        drawn = {"accuracy_vs_size": accuracy_vs_size(report), "layers": layers(report)}
        if any(d["latency_ms"] for stage in report["stages"] for d in stage["deployments"]):
            drawn["accuracy_vs_latency"] = accuracy_vs_latency(report)
            drawn["latency_distributions"] = latency_distributions(report)
        profiled = profiled_deployment(report)
        if profiled is not None:
            drawn["profile"] = profile_bars(profiled)
            drawn["roofline"] = roofline_plot(profiled)
    return drawn


def profiled_deployment(report: dict[str, Any]) -> dict[str, Any] | None:
    """The final model's deploy with a per-operator profile (a real board before an emulated one)."""
    final = next(s for s in report["stages"] if s["final"])
    found = [d for d in final["deployments"] if d.get("profile")]
    return min(found, key=lambda d: d["emulated"], default=None)


def profile_bars(deployment: dict[str, Any], most: int = 20) -> str:
    """Measured time per operator next to its MACs and bytes moved: the slowest ``most`` operators."""
    profile = deployment["profile"]
    ranked = sorted(profile["ops"], key=lambda r: (not r["resolved"], -r["time_ms"]))[:most]
    names = [_layer_label(r) for r in ranked]
    fig, axes = plt.subplots(1, 3, figsize=(WIDTH_IN, 1.3 + 0.3 * max(len(ranked), 2)), sharey=True)
    ys = list(range(len(ranked)))
    times = [r["time_ms"] * 1000 if r["resolved"] else 0.0 for r in ranked]
    axes[0].barh(ys, times, height=0.6, color=[COLORS[0] if r["resolved"] else "#cccccc" for r in ranked])
    for y, row in zip(ys, ranked, strict=True):
        if not row["resolved"]:
            axes[0].text(0, y, " < resolution", va="center", fontsize=8, color="#666666")
    axes[1].barh(ys, [r["macs"] for r in ranked], height=0.6, color=COLORS[2])
    axes[2].barh(ys, [r["bytes"] for r in ranked], height=0.6, color=COLORS[4])
    axes[0].set_yticks(ys, names)
    axes[0].invert_yaxis()
    for ax, label in zip(axes, ("time (µs)", "MACs", "bytes moved"), strict=True):
        ax.set_xlabel(label)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _compact(value)))
        ax.xaxis.set_major_locator(MaxNLocator(2))
    emulated = " (EMULATED)" if deployment["emulated"] else ""
    shown = f"slowest {len(ranked)} of {len(profile['ops'])}" if len(profile["ops"]) > len(ranked) else "all"
    fig.suptitle(f"{deployment['target']}{emulated}: time per operator, {shown} operators", fontsize=10)
    fig.tight_layout()
    return _svg(fig)


def roofline_plot(deployment: dict[str, Any]) -> str:
    """Log-log: each operator's arithmetic intensity against its achieved throughput, under the target's two
    ceilings (peak compute, memory bandwidth x intensity); hollow: where the roof puts an unresolved operator."""
    profile = deployment["profile"]
    ops = [r for r in profile["ops"] if r["macs"] > 0 and r["intensity"] > 0]
    peak, bandwidth = profile["peak_gops"], profile["memory_bandwidth_gbs"]
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 3.6))
    xs = [r["intensity"] for r in ops]
    if peak and bandwidth and xs:
        span = [*xs, peak / bandwidth]
        low, high = min(span) / 3, max(span) * 3
        grid = [low * (high / low) ** (i / 100) for i in range(101)]
        ax.plot(grid, [min(peak, bandwidth * x) for x in grid], color="#444444", linewidth=1.5, label="roof")
        ax.axvline(peak / bandwidth, color="#999999", linestyle=":", linewidth=1)
        roofed = [r for r in ops if not r["resolved"]]
        on_roof = [min(peak, bandwidth * r["intensity"]) for r in roofed]
        if roofed:
            ax.scatter([r["intensity"] for r in roofed], on_roof, s=24, facecolors="none", edgecolors="#888888",
                       label="unresolved (on the roof)", zorder=3)  # fmt: skip
    for bound, color in (("compute", COLORS[1]), ("memory", COLORS[0]), (None, COLORS[2])):
        chosen = [r for r in ops if r["resolved"] and r.get("bound") == bound and r.get("achieved_gops")]
        if bound is None:  # no ceilings: achieved throughput from the time alone
            chosen = [r for r in ops if r["resolved"] and not r.get("bound") and r["time_ms"] > 0]
        if chosen:
            ys = [r.get("achieved_gops") or 2 * r["macs"] / (r["time_ms"] * 1e6) for r in chosen]
            label = f"{bound}-bound" if bound else "measured"
            ax.scatter([r["intensity"] for r in chosen], ys, s=30, color=color, label=label, zorder=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda value, _: _compact(value)))
        axis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    emulated = " (EMULATED)" if deployment["emulated"] else ""
    ceilings = "" if peak and bandwidth else ": the target states no peak_gops / memory_bandwidth_gbs"
    return _finish(fig, ax, "arithmetic intensity (ops per byte, log scale)",
                   f"{deployment['target']}{emulated}: roofline{ceilings}", "GOPS (log scale)")  # fmt: skip


@dataclass(frozen=True)
class Panel:
    """One score axis of the score plots: the headline (accuracy, or the error of a one-output regressor), or
    one value output's error when several are measured by an error. Their mean is the output with the largest
    errors' (a count of 20 to 44 beside a box in [0, 1]): drawn as one axis, the box's change never showed."""

    name: str  # the y label
    accuracy: bool
    host: Callable[[dict[str, Any]], float | None]  # a stage's score on the host
    board: Callable[[dict[str, Any]], float | None]  # a deployment's score on the board


def panels(report: dict[str, Any]) -> list[Panel]:
    """The headline unless it is the mean of several errors (a mixed model keeps its accuracy), then a panel per
    value output."""
    metric = report["metric"]
    outputs = metric.get("value_outputs") or []
    accuracy = metric["name"] == "accuracy"
    drawn = []
    if accuracy or not outputs:
        name = "accuracy (%)" if accuracy else f"{metric['meaning']} (lower is better)"
        scale = _pct if accuracy else (lambda value: value)
        drawn.append(Panel(name, accuracy, lambda s: scale(s["host_score"]), lambda d: scale(d["score"])))
    for place, output in enumerate(outputs):
        label = f"{output['name']} {output['metric'].upper()} (lower is better)"
        drawn.append(Panel(label, False, partial(_host_error, place), partial(_board_error, output["output"])))
    return drawn


def _host_error(place: int, stage: dict[str, Any]) -> float | None:
    errors = stage.get("host_errors")
    return errors[place] if errors else None


def _board_error(output: int, deployment: dict[str, Any]) -> float | None:
    row = next((e for e in deployment.get("errors") or [] if e["output"] == output), None)
    return None if row is None else row["device"]


def _panel_axes(count: int) -> tuple[Figure, list[Any]]:
    """One axis per panel, stacked, sharing the x axis (the same models at the same size or latency)."""
    fig, axes = plt.subplots(count, 1, figsize=(WIDTH_IN, 3.4 if count == 1 else 0.8 + 2.3 * count), sharex=True,
                             squeeze=False)  # fmt: skip
    return fig, list(axes[:, 0])


def accuracy_vs_size(report: dict[str, Any]) -> str:
    stages = report["stages"]
    drawn = panels(report)
    fig, axes = _panel_axes(len(drawn))
    for panel, ax in zip(drawn, axes, strict=True):
        host = [(s["model"]["gzip_bytes"] / 1024, panel.host(s)) for s in stages]
        shown = [(x, y) for x, y in host if y is not None]
        # Points, not a line: the stages are not a series in size (pruning shrinks, QAT may grow a little), and a
        # line drawn in recipe order zig-zags across the plot.
        ax.scatter([x for x, _ in shown], [y for _, y in shown], s=36, color="#444444", label="host (.tflite)",
                   zorder=3)  # fmt: skip
        scores = [y for _, y in host]
        for index, target in enumerate(report["targets"]):
            points = [
                (s["model"]["gzip_bytes"] / 1024, panel.board(d))
                for s in stages
                for d in s["deployments"]
                if d["target"] == target["name"] and d["score"] is not None
            ]
            if points:
                _scatter(ax, points, index, target)
                scores += [y for _, y in points]
        _annotate_all(ax, [(_label(s), x, y) for s, (x, y) in zip(stages, host, strict=True) if y is not None])
        _score_limits(ax, scores, panel.accuracy)
        ax.set_ylabel(panel.name)
    title = f"{plot_title(drawn)} against compressed size"
    _log_x(axes[-1], always=False)
    return _finish(fig, axes, "gzip size (KiB)", title)


def accuracy_vs_latency(report: dict[str, Any]) -> str:
    drawn = panels(report)
    fig, axes = _panel_axes(len(drawn))
    for panel, ax in zip(drawn, axes, strict=True):
        scores: list[float | None] = []
        for index, target in enumerate(report["targets"]):
            points, labels = [], []
            for stage in report["stages"]:
                for d in stage["deployments"]:
                    if d["target"] == target["name"] and d["latency_ms"] and d["score"] is not None:
                        points.append((d["latency_ms"]["p50"] * 1000, panel.board(d)))
                        labels.append(_label(stage))
            if points:
                _scatter(ax, points, index, target)
                _annotate_all(ax, [(label, x, y) for label, (x, y) in zip(labels, points, strict=True)])
                scores += [y for _, y in points]
        _score_limits(ax, scores, panel.accuracy)
        ax.set_ylabel(f"{panel.name} on the target" if len(drawn) == 1 else panel.name)
    _log_x(axes[-1], always=True)
    where = "" if len(drawn) == 1 else ", on the target"
    return _finish(fig, axes, "latency p50 (µs, log scale)", f"{plot_title(drawn)} against latency{where}")


def plot_title(drawn: list[Panel]) -> str:
    """The plotted score for a title: "Accuracy", "Mean absolute error", or "Each value output's error"."""
    if len(drawn) == 1:
        return drawn[0].name.split(" (")[0].capitalize()
    return "Accuracy and each value output's error" if drawn[0].accuracy else "Each value output's error"


def latency_distributions(report: dict[str, Any]) -> str:
    """One panel per target: a box per stage drawn from the percentiles of all raw samples."""
    targets = [t for t in report["targets"] if _measured(report, t["name"])]
    stages = len(report["stages"])
    fig, axes = plt.subplots(
        len(targets), 1, figsize=(WIDTH_IN, (0.9 + 0.32 * stages) * len(targets) + 0.4), squeeze=False
    )
    for ax, target in zip(axes[:, 0], targets, strict=True):
        boxes = []
        for stage in report["stages"]:
            for d in stage["deployments"]:
                if d["target"] == target["name"] and d["latency_quantiles_ms"]:
                    boxes.append(_box_stats(d["latency_quantiles_ms"], _label(stage)))
        ax.bxp(boxes, orientation="horizontal", showfliers=True, flierprops={"markersize": 3})
        ax.invert_yaxis()  # recipe order from the top
        ax.set_xlabel("latency (µs, log scale)")
        _log_x(ax, always=True)
        title = f"{target['name']}: latency per stage"
        ax.set_title(title + (" (EMULATED)" if target["emulated"] else ""), loc="left")
    fig.tight_layout()
    return _svg(fig)


def layers(report: dict[str, Any]) -> str:
    """Parameters (all and non-zero) and MACs per Keras layer (operator) of the final model."""
    final = next(s for s in report["stages"] if s["final"])
    rows = [r for r in final["layers"] if r["params"] or r["macs"]]
    names = [_layer_label(r) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDTH_IN, 1.2 + 0.34 * max(len(rows), 2)), sharey=True)
    ys = range(len(rows))
    left.barh([y - 0.2 for y in ys], [r["params"] for r in rows], height=0.4, color="#bbbbbb", label="all")
    left.barh([y + 0.2 for y in ys], [r["nonzero_params"] for r in rows], height=0.4, color=COLORS[0], label="non-zero")
    left.set_yticks(list(ys), names)
    left.invert_yaxis()
    left.set_xlabel("parameters")
    right.barh(list(ys), [r["macs"] for r in rows], height=0.5, color=COLORS[2], label="MACs")
    right.set_xlabel("MACs per inference")
    for ax in (left, right):
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _compact(value)))
        ax.xaxis.set_major_locator(MaxNLocator(3))
    fig.suptitle(f"Parameters and MACs per layer, final model ({_label(final)})", fontsize=10)
    fig.tight_layout()
    # Above the bars, never on them.
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    return _svg(fig)


def _layer_label(row: dict[str, Any]) -> str:
    op = SHORT_OPS.get(row["op"], row["op"].lower())
    return f"{row['layer']} ({op})" if row.get("layer") else f"#{row['index']} {op}"


def _compact(value: float) -> str:
    """12,000 -> 12k; 3,400,000 -> 3.4M: tick labels that fit on a phone."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def _scatter(ax: Any, points: list[tuple[float, float | None]], index: int, target: dict[str, Any]) -> None:
    """One target's points (a point without a score, such as an output the board did not report, is left out)."""
    points = [p for p in points if p[1] is not None]
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


def _annotate_all(ax: Any, labels: list[tuple[str, float, float | None]]) -> None:
    """Stage names next to their points, above and below by turns (neighbouring stages often share a score);
    never clipped by the axes (the saved figure grows to fit them)."""
    for order, (label, x, y) in enumerate(labels):
        if y is None:
            continue
        ax.annotate(
            label,
            (x, y),
            textcoords="offset points",
            xytext=(5, 5 if order % 2 == 0 else -12),
            fontsize=8,
            annotation_clip=False,
        )


def _score_limits(ax: Any, scores: list[float | None], accuracy: bool) -> None:
    """At least ``MIN_ACCURACY_SPAN`` points for accuracy (within 0-100 %), at least half the largest value for an
    error (from 0 up), so that the axis shows the size of a change, not only its direction."""
    values = [v for v in scores if v is not None]
    if not values:
        return
    low, high = min(values), max(values)
    if accuracy:
        span = max(MIN_ACCURACY_SPAN, (high - low) * 1.3)
        top = min(100.0, (low + high) / 2 + span / 2)
        bottom = max(0.0, top - span)
        ax.set_ylim(bottom, max(top, bottom + span) if top < 100 else 100.0 + span * 0.04)
    else:
        span = max(high * 0.5, (high - low) * 1.3)
        ax.set_ylim(max(0.0, high - span), high + span * 0.1)


def _finish(fig: Figure, axes: Any, xlabel: str, title: str, ylabel: str | None = None) -> str:
    """Labels, the legend below the lowest axes (where it covers no point), then the SVG; ``axes``: one axis or
    a stack of panels sharing x (the title on the top one)."""
    stack = axes if isinstance(axes, list) else [axes]
    stack[-1].set_xlabel(xlabel)
    if ylabel is not None:
        stack[0].set_ylabel(ylabel)
    stack[0].set_title(title, loc="left")
    entries = len(stack[-1].get_legend_handles_labels()[0])
    gap = -0.2 if len(stack) == 1 else -0.3  # the same distance below a shorter panel
    stack[-1].legend(loc="upper center", bbox_to_anchor=(0.5, gap), ncol=max(1, min(entries, 3)), frameon=False)
    return _svg(fig)


def _log_x(ax: Any, always: bool) -> None:
    """Log scale with plain numbers (2, 5, 10, 20 ...) instead of 2x10^1: always for latency (every latency axis
    of the report reads the same way), for other axes when the data spans a decade or more."""
    low, high = ax.dataLim.intervalx
    if not low > 0 or not (always or high / low >= 10):
        ax.set_xlabel(ax.get_xlabel().replace(", log scale", ""))
        return
    ax.set_xscale("log")
    narrow = high / low < 10
    # Every integer step only when the data spans under 3x: wider, 6000 7000 8000 9000 10000 run into each other.
    subs = tuple(range(1, 10)) if high / low < 3 else (1.0, 2.0, 5.0)
    ax.xaxis.set_major_locator(LogLocator(subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _compact(value)))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    if narrow:  # a few µs apart: pad the range so the points sit inside, with a tick on either side
        ax.set_xlim(low / 1.25, high * 1.25)


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


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _svg(fig: Figure) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML declaration and DOCTYPE: the SVG sits inside HTML
