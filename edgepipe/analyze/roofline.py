"""Memory traffic per operator and the roofline: is a layer limited by arithmetic or by memory on a target?

Traffic is the memory access cost of one inference with no cache reuse between operators (the usual static
model): each operator reads its weights and its input activations and writes its outputs once. Arithmetic
intensity is operations (2 per multiply-accumulate) per byte. With a target's ``peak_gops`` (int8 operations per
second, all cores) and ``memory_bandwidth_gbs``, an operator whose intensity is below the ridge point
(peak / bandwidth) is memory-bound; its attainable time is the larger of its compute time at peak and its
traffic at full bandwidth. A measured time next to it gives the achieved efficiency (attainable / measured).
"""

from __future__ import annotations

from typing import Any

from edgepipe.analyze.static import macs
from edgepipe.tflite_model import TfliteModel


def traffic(model: TfliteModel) -> list[dict[str, Any]]:
    """Per operator: MACs, weight bytes read, activation bytes read and written, intensity (ops per byte)."""
    rows = []
    for op in model.ops:
        inputs = model.op_inputs(op)
        weights = sum(t.nbytes for t in inputs if t.is_constant)
        read = sum(t.nbytes for t in inputs if not t.is_constant)
        written = sum(t.nbytes for t in model.op_outputs(op))
        total = weights + read + written
        count = int(macs(model, op))
        rows.append(
            {
                "index": op.index,
                "macs": count,
                "weight_bytes": int(weights),
                "activation_read_bytes": int(read),
                "activation_write_bytes": int(written),
                "bytes": int(total),
                "intensity": round(2 * count / total, 4) if total else 0.0,
            }
        )
    return rows


def roofline(rows: list[dict[str, Any]], peak_gops: float | None, bandwidth_gbs: float | None) -> dict[str, Any]:
    """The target's ceilings and, per operator, its bound and attainable time (rows need ``macs`` and
    ``bytes``; with ``time_ms`` also the achieved efficiency). Without both figures only the ceilings are None."""
    if not peak_gops or not bandwidth_gbs:
        return {"peak_gops": peak_gops, "memory_bandwidth_gbs": bandwidth_gbs, "ridge_ops_per_byte": None, "ops": []}
    ridge = peak_gops / bandwidth_gbs
    placed = []
    for row in rows:
        compute_ms = 2 * row["macs"] / (peak_gops * 1e9) * 1e3
        memory_ms = row["bytes"] / (bandwidth_gbs * 1e9) * 1e3
        attainable = max(compute_ms, memory_ms)
        entry = {
            "index": row["index"],
            "bound": "compute" if compute_ms >= memory_ms else "memory",
            "attainable_ms": attainable,
            "attainable_gops": min(peak_gops, bandwidth_gbs * row["intensity"]),
        }
        measured = row.get("time_ms")
        if measured is not None and measured > 0:
            entry["achieved_gops"] = 2 * row["macs"] / (measured * 1e-3) / 1e9
            entry["efficiency"] = attainable / measured
        placed.append(entry)
    return {"peak_gops": peak_gops, "memory_bandwidth_gbs": bandwidth_gbs, "ridge_ops_per_byte": ridge, "ops": placed}
