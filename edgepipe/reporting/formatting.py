"""How the reports write numbers: one place, so HTML, Markdown and the terminal read the same."""

from __future__ import annotations


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


def score_label(metric: str) -> str:
    return {"accuracy": "accuracy", "mae": "MAE", "mse": "MSE"}.get(metric, metric)
