"""Reading a score's parts and comparing two scores' errors: what the gates, the board-against-host check,
``compare`` and the report need from ``tasks.Score.to_dict()`` (or the agent's accuracy block, the same shape).
A mixed model's score holds a metric per output; its headline is its class outputs' accuracy, and its value
outputs are judged each by its own error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def part(scored: dict[str, Any] | None, metric: str) -> float | None:
    """The mean of the outputs a score (``Score.to_dict``, or the agent's accuracy block) measures by ``metric``:
    the headline for a model with one task; for a mixed model, its classifier outputs' accuracy or its value
    outputs' error. None when no output is measured that way."""
    if not scored:
        return None
    metrics = scored.get("per_output_metric")
    if not metrics:
        return scored.get("value") if scored.get("metric") == metric else None
    values = [v for v, m in zip(scored["per_output"], metrics, strict=True) if m == metric]
    return round(float(np.mean(values)), 6) if values else None


def error_metric(scored: dict[str, Any] | None) -> str | None:
    """The error metric (mae or mse) a score measures any output by, if any."""
    if not scored:
        return None
    for metric in scored.get("per_output_metric") or [scored.get("metric")]:
        if metric in ("mae", "mse"):
            return str(metric)
    return None


def errors(a: dict[str, Any] | None, b: dict[str, Any] | None) -> tuple[str, float, float] | None:
    """The error metric two scores measure outputs by (``a``'s, else ``b``'s) and each score's mean over those
    outputs (``part``): what an error gate or check compares. None when either has no such output."""
    metric = error_metric(a) or error_metric(b)
    if metric is None:
        return None
    first, second = part(a, metric), part(b, metric)
    return None if first is None or second is None else (metric, first, second)


@dataclass(frozen=True)
class ErrorChange:
    """How one output's error changed between two scores (``error_changes``); ``output`` is its index among
    all the model's outputs, ``relative`` (after - before) / before, None when it grew from exactly 0."""

    output: int
    before: float
    after: float
    relative: float | None

    def describe(self, metric: str) -> str:
        grown = "from 0" if self.relative is None else f"{self.relative:+.1%}"
        return f"output {self.output}: {metric} {self.before:.6g} -> {self.after:.6g} ({grown})"


def error_changes(after: dict[str, Any] | None, before: dict[str, Any] | None) -> list[ErrorChange]:
    """Output by output, how the error of each output measured by one (mae or mse) changed from ``before`` to
    ``after``: what a limit on error growth judges. Their mean lets the output with the largest errors decide
    (an age in years beside a box in [0, 1]): a box 20 % worse hid behind an unchanged age. Empty when the two
    scores do not measure the same outputs the same way."""
    if not after or not before:
        return []
    values = after.get("per_output") or [], before.get("per_output") or []
    metrics = [after.get("per_output_metric") or [after.get("metric")] * len(values[0])]
    metrics.append(before.get("per_output_metric") or [before.get("metric")] * len(values[1]))
    if len(values[0]) != len(values[1]) or metrics[0] != metrics[1]:
        return []
    changes = []
    for index, (a, b, metric) in enumerate(zip(values[0], values[1], metrics[0], strict=True)):
        if metric not in ("mae", "mse"):
            continue
        relative = (a - b) / b if b else (0.0 if a <= b else None)
        changes.append(ErrorChange(index, float(b), float(a), None if relative is None else round(relative, 6)))
    return changes


def worst_growth(changes: Sequence[ErrorChange]) -> ErrorChange | None:
    """The output whose error grew most (relatively; growth from 0 first)."""
    if not changes:
        return None
    return max(changes, key=lambda c: float("inf") if c.relative is None else c.relative)


def largest_difference(changes: Sequence[ErrorChange]) -> ErrorChange | None:
    """The output whose error differs most, either way (the board against the host)."""
    if not changes:
        return None
    return max(changes, key=lambda c: float("inf") if c.relative is None else abs(c.relative))
