"""Gather one optimize run and every deploy of its models into the report document (``edgepipe.report/5``).

The document is the single source for the HTML page, the Markdown summary and the JSON file: each renderer
reads only this dict, so the three never disagree. Its schema is ``report.schema.json`` next to this module.
Deploy results are matched to the run's models by sha256, so a stage whose bytes are the final model's shows
the final model's measurements, and results written by ``deploy --stages`` land on their stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe import __version__
from edgepipe.analyze import profile_diff
from edgepipe.analyze.static import analyze
from edgepipe.provenance import now
from edgepipe.run_models import RunModel, read_optimize_record, run_models
from edgepipe.score_parts import error_metric, part
from edgepipe.tasks import METRIC_MEANING
from edgepipe.tflite_model import TfliteModel

SCHEMA = "edgepipe.report/5"
LATENCY_FIELDS = ("min", "p50", "p90", "p99", "max", "mean", "count")
QUANTILES = 101  # latency distribution kept per deployment: percentiles 0, 1, ..., 100


def collect(run_dir: Path) -> dict[str, Any]:
    record = read_optimize_record(run_dir)
    models = run_models(run_dir, record)
    deployments = _deployments(run_dir)
    metric = _metric(record)
    outputs = [row["output"] for row in metric["value_outputs"] or []]
    stages = [_stage(run_dir, model, deployments, outputs) for model in models]
    targets = sorted({d["target"] for stage in stages for d in stage["deployments"]})
    provenance = record.get("provenance", {})
    return {
        "schema": SCHEMA,
        "created": now(),
        "edgepipe_version": __version__,
        "metric": metric,
        "run": {
            "dir": str(run_dir),
            "status": record.get("status"),
            "created": record.get("created"),
            "recipe": record["recipe"]["name"],
            "description": record["recipe"].get("description"),
            "recipe_file": provenance.get("recipe_file"),
            "recipe_sha256": provenance.get("recipe_sha256"),
            "data": provenance.get("data"),
            "tools": provenance.get("tools", {}),
            "gates": record.get("gates", []),
        },
        "stages": stages,
        "targets": [_target_summary(name, stages) for name in targets],
        "profile_changes": _profile_changes(stages),
    }


def _profile_changes(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target: the final model's profile against the first stage's profiled on the same target (the float
    model's, after ``deploy --stages --profile``), operator by operator: what the recipe bought per layer."""
    final = next(stage for stage in stages if stage["final"])
    changes = []
    for after in final["deployments"]:
        if after["profile"] is None:
            continue
        earlier = (
            (stage, before)
            for stage in stages
            if not stage["final"] and stage["model"]["sha256"] != final["model"]["sha256"]
            for before in stage["deployments"]
            if before["target"] == after["target"] and before["profile"] is not None
        )
        found = next(earlier, None)
        if found is None:
            continue
        stage, before = found
        layers = profile_diff.diff(before["profile"], after["profile"])
        changes.append(
            {
                "target": after["target"],
                "emulated": after["emulated"] or before["emulated"],
                "from": stage["name"],
                "to": final["name"],
                "summary": profile_diff.summary(layers),
                **layers,
            }
        )
    return changes


def _metric(record: dict[str, Any]) -> dict[str, Any]:
    """The run's metric, from the float model's entry (runs before tasks existed are classifiers); for a mixed
    model (a task per output), ``value_error``: what its value outputs are measured by, next to its class
    outputs' accuracy."""
    scored = record.get("baseline", {}).get("keras_metric") or {}
    name = scored.get("metric", "accuracy")
    error = error_metric(scored) if scored.get("per_output_metric") else None
    return {
        "name": name,
        "meaning": METRIC_MEANING[name],
        "higher_is_better": name == "accuracy",
        "value_error": {"name": error, "meaning": METRIC_MEANING[error]} if error else None,
        "value_outputs": _value_outputs(scored, record.get("baseline", {}).get("output_names")),
    }


def _value_outputs(scored: dict[str, Any], names: list[str] | None) -> list[dict[str, Any]] | None:
    """The outputs measured by an error (mae, mse), by index and name, when there are several: their mean error
    is the headline (or a mixed model's value column), and it is the output with the largest errors' (a count of
    20 to 44 beside a box in [0, 1]), so the report shows each. None for fewer than two."""
    values = scored.get("per_output") or []
    metrics = scored.get("per_output_metric") or [scored.get("metric")] * len(values)
    found = [index for index, metric in enumerate(metrics) if metric in ("mae", "mse")]
    if len(found) < 2:
        return None
    named = names if names and len(names) == len(values) else [f"output {index}" for index in range(len(values))]
    return [{"output": index, "name": named[index], "metric": metrics[index]} for index in found]


def _stage(
    run_dir: Path, model: RunModel, deployments: dict[tuple[str, str], dict[str, Any]], value_outputs: list[int]
) -> dict[str, Any]:
    """One model of the run; ``value_outputs``: the outputs whose host error is shown one by one (``_metric``)."""
    entry = model.tflite
    per_output = (entry.get("metric") or {}).get("per_output") or []
    analysis = analyze(TfliteModel.read(model.path)) if model.path.is_file() else {"layers": [], "total": {}}
    total = analysis["total"]
    found = [d for (sha, _), d in sorted(deployments.items()) if sha == entry["sha256"]]
    return {
        "name": model.name,
        "kind": model.kind,
        "index": model.index,
        "final": model.final,
        "model": {
            "path": str(model.path.relative_to(run_dir)),
            "sha256": entry["sha256"],
            "bytes": entry["bytes"],
            "gzip_bytes": entry["gzip_bytes"],
            "sparsity": entry.get("sparsity"),
        },
        "host_accuracy": entry.get("accuracy"),
        "host_score": (entry.get("metric") or {}).get("value", entry.get("accuracy")),
        "host_value_error": _value_error(entry.get("metric")),
        "host_errors": [per_output[i] for i in value_outputs]
        if value_outputs and len(per_output) > max(value_outputs)
        else None,
        "params": total.get("params", 0),
        "nonzero_params": total.get("nonzero_params", 0),
        "macs": total.get("macs", 0),
        "peak_activation_bytes": total.get("peak_activation_bytes", 0),
        "layers": [
            {
                "index": row["index"],
                "op": row["op"],
                "name": row["output"],
                "layer": row["layer"],
                "params": row["params"],
                "nonzero_params": row["nonzero_params"],
                "macs": row["macs"],
            }
            for row in analysis["layers"]
        ],
        "deployments": found,
    }


def _value_error(scored: dict[str, Any] | None) -> float | None:
    """A mixed model's value outputs' error (the mean over them); None for a model with one task."""
    if not scored or not scored.get("per_output_metric"):
        return None
    return part(scored, error_metric(scored) or "")


def _deployments(run_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest deploy result per (model sha256, target) anywhere in the run directory."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(run_dir.rglob("deploy-*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a foreign or damaged file is not a measurement
        if not isinstance(result, dict) or result.get("schema") != "edgepipe.deploy/1":
            continue
        key = (result["model"]["sha256"], result["target"]["name"])
        if key not in newest or result["created"] > newest[key]["created"]:
            newest[key] = _deployment(run_dir, path, result)
    return newest


def _deployment(run_dir: Path, path: Path, result: dict[str, Any]) -> dict[str, Any]:
    device = result.get("device") or {}
    board = device.get("board") or {}
    runtime = device.get("runtime") or {}
    timing = device.get("timing") or {}
    latency = timing.get("latency_ms")
    samples = timing.get("samples_ms") or []
    memory = (device.get("memory") or {}).get("vmhwm_kb") or {}
    checks = result.get("checks") or {}
    error = result.get("error")
    return {
        "target": result["target"]["name"],
        "status": result["status"],
        "created": result["created"],
        "result_file": str(path.relative_to(run_dir)),
        "emulated": bool(board.get("emulated")),
        "machine": board.get("machine"),
        "cpu_model": board.get("cpu_model"),
        "runtime": runtime.get("name"),
        "runtime_version": runtime.get("version"),
        "threads": runtime.get("threads"),
        "xnnpack": runtime.get("xnnpack"),
        "accuracy": checks.get("device_accuracy"),
        "accuracy_delta_points": checks.get("accuracy_delta_points"),
        "score": checks.get("device_value", checks.get("device_accuracy")),
        "score_relative_delta": checks.get("error_relative_delta") if checks.get("device_accuracy") is None else None,
        "value_error": checks.get("device_error") if checks.get("device_accuracy") is not None else None,
        "value_error_relative_delta": checks.get("error_relative_delta")
        if checks.get("device_accuracy") is not None
        else None,
        "errors": checks.get("error_per_output"),
        "latency_ms": {k: latency[k] for k in LATENCY_FIELDS} if latency else None,
        "latency_quantiles_ms": [float(v) for v in np.quantile(samples, np.linspace(0, 1, QUANTILES))]
        if samples
        else [],
        "processes": len(timing.get("repeats") or [1]) if timing else 0,
        "memory_kb": {k: memory.get(k) for k in ("before_load", "after_load", "after_runs")} if memory else None,
        "parity": checks.get("parity"),
        "error": {"class": error["class"], "message": error["message"]} if error else None,
        "profile": _profile(result.get("profile")),
    }


PROFILE_OP_FIELDS = ("index", "op", "layer", "outputs", "time_ms", "resolution_ms", "resolved", "share", "macs",
                     "bytes", "intensity", "bound", "attainable_ms", "achieved_gops")  # fmt: skip


def _profile(profile: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the report shows of a deploy's per-operator profile (``deploy --profile``)."""
    if not profile or "error" in profile:
        return None
    roof = profile["roofline"]
    return {
        "whole_ms": profile["whole_ms"],
        "sum_over_whole": profile["sum_over_whole"],
        "overhead_ms": profile["overhead_ms"],
        "unresolved": profile["unresolved"],
        "peak_gops": roof["peak_gops"],
        "memory_bandwidth_gbs": roof["memory_bandwidth_gbs"],
        "ops": [{name: row.get(name) for name in PROFILE_OP_FIELDS} for row in profile["ops"]],
    }


def _target_summary(name: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    deployed = [d for stage in stages for d in stage["deployments"] if d["target"] == name]
    final = [d for stage in stages if stage["final"] for d in stage["deployments"] if d["target"] == name]
    reference = (final or deployed)[0]
    return {
        "name": name,
        "machine": reference["machine"],
        "cpu_model": reference["cpu_model"],
        "emulated": reference["emulated"],
        "runtime": reference["runtime"],
        "runtime_version": reference["runtime_version"],
        "stages_measured": len(deployed),
    }
