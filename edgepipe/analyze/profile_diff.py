"""Two profiles side by side, operator by operator: which layers got slower or faster, which were removed or added.

Operators are matched by their sequence of (type, Keras layer) with difflib's longest matching blocks, so a
recipe that removes channels (same layers, new shapes) keeps every match, and one that factorises a layer
(low-rank: one layer becomes two) shows the old one as removed and the new ones as added. A change is only
called a change when it exceeds the noise of both measurements (each operator's resolution); the largest
regression is the matched operator whose time grew the most beyond that noise.
"""

from __future__ import annotations

import difflib
import math
from typing import Any


def _key(row: dict[str, Any]) -> tuple[str, str]:
    return row["op"], row["layer"] or f"#{row['index']}"


def diff(baseline: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """Per operator: times before and after, the change and whether it is beyond the noise; plus the largest
    regression and improvement, and the removed and added operators."""
    before, after = baseline["ops"], candidate["ops"]
    matcher = difflib.SequenceMatcher(a=[_key(r) for r in before], b=[_key(r) for r in after], autojunk=False)
    rows: list[dict[str, Any]] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            rows += [_matched(before[i], after[j]) for i, j in zip(range(i1, i2), range(j1, j2), strict=True)]
            continue
        rows += [_alone(before[i], "removed") for i in range(i1, i2)]
        rows += [_alone(after[j], "added") for j in range(j1, j2)]
    matched = [row for row in rows if row["status"] in ("slower", "faster", "same")]
    slower = [row for row in matched if row["status"] == "slower"]
    faster = [row for row in matched if row["status"] == "faster"]
    return {
        "ops": rows,
        "baseline_ms": baseline["whole_ms"],
        "candidate_ms": candidate["whole_ms"],
        "largest_regression": max(slower, key=lambda row: row["change_ms"], default=None),
        "largest_improvement": min(faster, key=lambda row: row["change_ms"], default=None),
        "removed": sum(1 for row in rows if row["status"] == "removed"),
        "added": sum(1 for row in rows if row["status"] == "added"),
    }


def _matched(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    change = new["time_ms"] - old["time_ms"]
    noise = math.hypot(old["resolution_ms"], new["resolution_ms"])
    status = "same" if abs(change) <= noise else "slower" if change > 0 else "faster"
    return {
        "op": new["op"],
        "layer": new["layer"],
        "baseline_index": old["index"],
        "candidate_index": new["index"],
        "baseline_ms": old["time_ms"],
        "candidate_ms": new["time_ms"],
        "change_ms": change,
        "noise_ms": noise,
        "ratio": new["time_ms"] / old["time_ms"] if old["resolved"] and old["time_ms"] > 0 else None,
        "shapes_changed": old["outputs"] != new["outputs"],
        "status": status,
    }


def _alone(row: dict[str, Any], status: str) -> dict[str, Any]:
    side = "baseline" if status == "removed" else "candidate"
    other = "candidate" if side == "baseline" else "baseline"
    return {
        "op": row["op"],
        "layer": row["layer"],
        f"{side}_index": row["index"],
        f"{other}_index": None,
        f"{side}_ms": row["time_ms"],
        f"{other}_ms": None,
        "change_ms": row["time_ms"] if status == "added" else -row["time_ms"],
        "noise_ms": row["resolution_ms"],
        "ratio": None,
        "shapes_changed": None,
        "status": status,
    }


def signed_time(ms: float) -> str:
    """A change of time with its sign, in a unit that keeps two significant digits (ns, µs or ms)."""
    size = abs(ms)
    if size < 0.001:
        return f"{ms * 1e6:+.0f} ns"
    return f"{ms * 1000:+.1f} µs" if size < 1 else f"{ms:+.2f} ms"


def summary(found: dict[str, Any]) -> str:
    """One line for a verdict: the layer behind the change."""
    worst = found["largest_regression"]
    best = found["largest_improvement"]
    parts = []
    if worst is not None:
        ratio = f", {worst['ratio']:.1f}x" if worst["ratio"] else ""
        parts.append(f"largest regression: {worst['layer'] or worst['op']} ({worst['op']}) "
                     f"{signed_time(worst['change_ms'])}{ratio}")  # fmt: skip
    if best is not None:
        parts.append(f"largest improvement: {best['layer'] or best['op']} {signed_time(best['change_ms'])}")
    if found["removed"] or found["added"]:
        parts.append(f"{found['removed']} operator(s) removed, {found['added']} added")
    return "; ".join(parts) or "no operator changed beyond the noise"
