"""How the reports write numbers: one place, so HTML, Markdown and the terminal read the same."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def kib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1024:,.1f} KiB"


def mib(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:,.1f} MiB"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def points(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} pt"


def latency(ms: float | None) -> str:
    if ms is None:
        return "n/a"
    return f"{ms * 1000:,.1f} µs" if ms < 1 else f"{ms:,.2f} ms"


def score(value: float | None, metric: str) -> str:
    """A model's score: accuracy in percent, an error (mean absolute or squared) with four significant digits."""
    if metric == "accuracy":
        return pct(value)
    return "n/a" if value is None else f"{value:.4g}"


def score_delta(deployment: dict, metric: str) -> str:
    """Board against host: accuracy points, or the relative change of an error."""
    if metric == "accuracy":
        return points(deployment.get("accuracy_delta_points"))
    delta = deployment.get("score_relative_delta")
    return "n/a" if delta is None else f"{delta:+.2%}"


def output_errors(errors: list[dict] | None, value_outputs: list[dict] | None) -> str:
    """Each value output's error on the board against the host's (a deployment's ``errors``), named by the
    report's ``metric.value_outputs``: "box MAE 0.0512 vs host 0.0511 (+0.20%); count ...". Empty for none."""
    if not errors:
        return ""
    outputs = {o["output"]: o for o in value_outputs or []}
    parts = []
    for row in errors:
        named = outputs.get(row["output"], {"name": f"output {row['output']}", "metric": ""})
        grown = "grew from 0" if row["relative"] is None else f"{row['relative']:+.2%}"
        label = f"{named['name']} {score_label(named['metric'])}".rstrip()
        parts.append(f"{label} {row['device']:.4g} vs host {row['host']:.4g} ({grown})")
    return "; ".join(parts)


def score_label(metric: str) -> str:
    return {"accuracy": "accuracy", "mae": "MAE", "mse": "MSE"}.get(metric, metric)


def parity_agreement(parity: dict) -> str:
    """The figure a parity check judges the model by: a classifier's top-1 agreement, saying how many changed
    answers were near-ties (the tolerated rounding explains them), or the change of a regressor's error."""
    top1 = parity.get("top1_agreement")
    if top1 is not None:
        near, beyond = parity.get("top1_near_ties"), parity.get("top1_agreement_beyond_near_ties")
        if not near:
            return f"top-1 agreement {top1:.4f}"
        if beyond is not None and beyond < 1:
            return f"top-1 agreement {top1:.4f} ({near} changed answers were near-ties; {beyond:.4f} beyond them)"
        which = f"all {near} changed answers were near-ties" if near > 1 else "the one changed answer was a near-tie"
        return f"top-1 agreement {top1:.4f} ({which})"
    if parity.get("error_delta") is not None:
        return f"error {parity['error_delta']:+.2%}"
    return "n/a"
