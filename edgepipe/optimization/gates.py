"""The recipe's gates, checked against the measured final model."""

from __future__ import annotations

from typing import Any

from edgepipe.config.recipe import Gates
from edgepipe.score_parts import error_changes, error_metric, part, worst_growth

CHANCE = 0.05  # McNemar's p below which a change in answers is beyond a few near-ties rounding the other way


def check(gates: Gates, float_metric: dict[str, Any], final: dict[str, Any], float_gzip: int) -> list[dict[str, Any]]:
    """One row per configured gate: name, limit, measured value, passed. A mixed model's accuracy gates judge its
    class outputs and its error gate its value outputs (``score_parts.part``)."""
    drop = increase = None
    before, after = part(float_metric, "accuracy"), part(final["metric"], "accuracy")
    if before is not None and after is not None:
        drop = round((before - after) * 100, 4) + 0.0  # never "-0.0"
    changes = error_changes(final["metric"], float_metric)
    error = error_metric(final["metric"]) or "error"
    worst = worst_growth(changes)
    if worst is not None:
        increase = None if worst.relative is None else round(worst.relative, 4)
    ratio = round(float_gzip / final["gzip_bytes"], 4)
    mixed = bool(final["metric"].get("per_output_metric"))
    whose = f"the {error}"
    if len(changes) > 1:  # each output against its own float error: the largest growth decides
        whose = f"the {error} of output {worst.output} (the value output that grew most)" if worst else whose
    elif mixed:
        whose += " of the value output"
    measured = {
        "max_accuracy_drop": (
            drop,
            lambda v, limit: v <= limit,
            "accuracy drop of the class outputs (points)" if mixed else "accuracy drop (points)",
        ),
        "max_error_increase": (
            increase,
            lambda v, limit: v <= limit,
            f"relative increase of {whose} over the float model",
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
        row = {
            "gate": name,
            "meaning": meaning,
            "limit": limit,
            "value": value,
            "passed": bool(value is not None and ok(value, limit)),
        }
        if name == "max_accuracy_drop" and final.get("discordant_with_float_keras"):
            row["discordant"] = final["discordant_with_float_keras"]
        rows.append(row)
    return rows


def chance(row: dict[str, Any]) -> str:
    """What the answers behind an accuracy drop say: how many the int8 model lost and gained against the float
    model, and whether McNemar's test calls that beyond chance (a few near-ties rounding the other way move
    0.2 points on 450 samples). Empty for other gates."""
    counts = row.get("discordant")
    if not counts:
        return ""
    lost, gained, p = (
        counts["reference_right_other_wrong"],
        counts["reference_wrong_other_right"],
        counts["p_value"],
    )
    answers = f"{lost} {'answer' if lost == 1 else 'answers'} lost and {gained} gained against the float model"
    counted = f"{answers}, McNemar p = {p:g}"
    samples = counts.get("samples")
    if samples:  # several answers per sample: the test counts samples
        fewer, more = samples["reference_better"], samples["other_better"]
        counted = (
            f"{answers}, in {fewer} {'sample' if fewer == 1 else 'samples'} with fewer right and {more} with more: "
            f"McNemar p = {p:g} over samples"
        )
    if row["passed"]:
        return counted
    return f"{counted}: " + ("beyond chance" if p < CHANCE else "within chance: more test samples would tell")


def describe_failures(rows: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{r['gate']}: {r['meaning']} is {r['value']}, limit {r['limit']}" + (f" ({chance(r)})" if chance(r) else "")
        for r in rows
        if not r["passed"]
    )


def advice(rows: list[dict[str, Any]], samples: int) -> str:
    """What to do about failed gates: when the only failure is an accuracy drop McNemar calls within chance,
    the test split is too small to tell (one answer of 450 is 0.22 points); otherwise the recipe must change."""
    failed = [r for r in rows if not r["passed"]]
    if failed and all((r.get("discordant") or {}).get("p_value", 0.0) >= CHANCE for r in failed):
        return (
            f"the accuracy drop is within what {samples:,} test samples can tell apart: test on more samples, "
            f"or set the limit knowing that one answer is {100 / samples:.2g} points"
        )
    return "relax the recipe's gates or its stages"
