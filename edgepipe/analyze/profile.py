"""A per-operator profile from the agent's window timings: each operator's time, share, traffic and roofline place.

The agent times, for every operator k, a window of operators k-w..k and the same window without k, all in one
process, in rounds (see ``edgepipe.analyze.windows`` and the agent's ``measure_profile``); operator k's time is
the median over the rounds of the difference, the two timed moments apart in the same round. A time smaller than
the noise of that median cannot be told from zero: such an operator is marked unresolved and shown as "< resolution"
rather than as a figure, and its share is 0. The agent times the model itself in the same rounds, and the profile
sets the sum of the operators' times against it (``sum_over_whole``), next to the deploy's own p50
(``deploy_p50_ms``, measured before the profile, in other processes).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgepipe.analyze.roofline import roofline, traffic
from edgepipe.analyze.static import keras_layer
from edgepipe.analyze.windows import CONTEXT_OPS
from edgepipe.config.target import Target
from edgepipe.tflite_model import TfliteModel

SCHEMA = "edgepipe.profile/1"
NOISE_SIGMAS = 3.0  # an operator's time must exceed this many standard errors of its difference to count
MEDIAN_ERROR = 1.2533  # the standard error of a median is about 1.25 sigma / sqrt(n) for normal noise
MAD_TO_SIGMA = 1.4826


def _standard_error(timed: dict[str, Any]) -> float:
    return MEDIAN_ERROR * MAD_TO_SIGMA * float(timed["mad_ms"]) / math.sqrt(max(int(timed["n"]), 1))


def per_operator(model_file: Path, raw: dict[str, Any], deploy_p50_ms: float | None, target: Target,
                 emulated: bool) -> dict[str, Any]:  # fmt: skip
    """The profile of ``model_file`` from the agent's raw window timings (one difference per operator)."""
    model = TfliteModel.read(model_file)
    operators = raw["operators"]
    if len(operators) != len(model.ops):
        raise ValueError(f"{len(operators)} operator timings for a model of {len(model.ops)} operators")
    moved = traffic(model)
    rows = []
    for op, cost, timed in zip(model.ops, moved, operators, strict=True):
        time_ms = float(timed["median_ms"])
        resolution = NOISE_SIGMAS * _standard_error(timed)
        rows.append(
            {
                "index": op.index,
                "op": op.name,
                "layer": keras_layer(model, op),
                "inputs": [list(t.shape) for t in model.op_inputs(op) if not t.is_constant],
                "outputs": [list(t.shape) for t in model.op_outputs(op)],
                "time_ms": time_ms,
                "resolution_ms": resolution,
                "resolved": time_ms > resolution,
                **{key: value for key, value in cost.items() if key != "index"},
            }
        )
    counted = sum(row["time_ms"] for row in rows if row["resolved"])
    for row in rows:
        row["share"] = row["time_ms"] / counted if row["resolved"] and counted > 0 else 0.0
    total = sum(row["time_ms"] for row in rows)
    roof = roofline(
        [{**row, "time_ms": row["time_ms"] if row["resolved"] else None} for row in rows],
        target.peak_gops,
        target.memory_bandwidth_gbs,
    )
    for row, place in zip(rows, roof.pop("ops") or [{}] * len(rows), strict=True):
        row.update({key: value for key, value in place.items() if key != "index"})
    macs = sum(row["macs"] for row in rows)
    whole_ms = float(raw["whole"]["median_ms"])
    return {
        "schema": SCHEMA,
        "method": "window differences",
        "context_ops": CONTEXT_OPS,
        "emulated": emulated,
        "ops": rows,
        "sum_ms": total,
        "overhead_ms": float(raw["overhead"]["median_ms"]),
        "whole_ms": whole_ms,
        "sum_over_whole": total / whole_ms if whole_ms else None,
        "deploy_p50_ms": deploy_p50_ms,
        "unresolved": sum(1 for row in rows if not row["resolved"]),
        "rounds": raw["rounds"],
        "groups": raw["groups"],
        "block_runs": raw["block_runs"],
        "seconds": raw["seconds"],
        "peak_rss_kb": raw.get("vmhwm_kb"),
        "roofline": {
            **roof,
            "model_achieved_gops": 2 * macs / (whole_ms * 1e-3) / 1e9 if whole_ms else None,
            "model_efficiency": (
                sum(row.get("attainable_ms", 0.0) for row in rows) / whole_ms
                if whole_ms and target.peak_gops and target.memory_bandwidth_gbs
                else None
            ),
        },
    }


def slowest(profile: dict[str, Any], count: int = 5) -> list[dict[str, Any]]:
    """The resolved operators that take the most time, slowest first."""
    resolved = [row for row in profile["ops"] if row["resolved"]]
    return sorted(resolved, key=lambda row: -row["time_ms"])[:count]
