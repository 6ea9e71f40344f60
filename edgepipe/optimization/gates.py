"""The recipe's gates, checked against the measured final model."""

from __future__ import annotations

from typing import Any

from edgepipe.config.recipe import Gates


def check(gates: Gates, float_metric: dict[str, Any], final: dict[str, Any], float_gzip: int) -> list[dict[str, Any]]:
    """One row per configured gate: name, limit, measured value, passed."""
    change = final["metric"]["value"] - float_metric["value"]
    drop = round(-change * 100, 4) + 0.0  # never "-0.0"
    increase = round(change / float_metric["value"], 4) if float_metric["value"] else (0.0 if change <= 0 else None)
    ratio = round(float_gzip / final["gzip_bytes"], 4)
    measured = {
        "max_accuracy_drop": (drop, lambda v, limit: v <= limit, "accuracy drop (points)"),
        "max_error_increase": (
            increase,
            lambda v, limit: v <= limit,
            f"relative increase of the {final['metric']['metric']} over the float model",
        ),
        "max_tflite_bytes": (final["bytes"], lambda v, limit: v <= limit, ".tflite bytes"),
        "max_gzip_bytes": (final["gzip_bytes"], lambda v, limit: v <= limit, "gzip bytes"),
        "min_gzip_ratio": (ratio, lambda v, limit: v >= limit, "gzip ratio to the float TFLite model"),
        "min_agreement": (
            final.get("agreement_with_float_keras"),
            lambda v, limit: v >= limit,
            "top-1 agreement with the float Keras model",
        ),
    }
    rows = []
    for name, limit in gates.model_dump().items():
        if limit is None:
            continue
        value, ok, meaning = measured[name]
        rows.append(
            {
                "gate": name,
                "meaning": meaning,
                "limit": limit,
                "value": value,
                "passed": bool(value is not None and ok(value, limit)),
            }
        )
    return rows


def describe_failures(rows: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{r['gate']}: {r['meaning']} is {r['value']}, limit {r['limit']}" for r in rows if not r["passed"]
    )
