"""``kind: low_rank``: factorize big layers by truncated SVD, then fine-tune.

A Dense kernel W (m x n) becomes two Dense layers, ``NAME_lr`` (m x r, no bias, linear) and ``NAME`` (r x n, with
the bias and activation): r(m + n) multiplies instead of mn. A k x k Conv2D kernel, seen as a (k*k*C) x F matrix,
becomes a k x k convolution to r channels (``NAME_lr``, with the strides, padding and dilation) followed by a 1 x 1
convolution to F (``NAME``). The rank is the smallest that keeps ``energy`` of the squared singular values, or
``rank_ratio`` of the full rank. A layer whose factorized form would not need fewer multiplies is left alone and
named. The second layer keeps the original name, so the layers after it (and the report) still find it.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from edgepipe.config.recipe import LowRankStage
from edgepipe.errors import ModelError
from edgepipe.keras_compat import keras
from edgepipe.models import train
from edgepipe.optimization.base import StageContext, StageOutcome, check_patterns, is_selected


def apply(model: Any, stage: LowRankStage, ctx: StageContext) -> StageOutcome:
    factorized, details = factorize(model, stage, ctx.where)
    history = train(factorized, ctx.data, ctx.train, ctx.progress, ctx.label, ctx.task, teacher=ctx.teacher)
    return StageOutcome(model=factorized, details=details, training=history)


def factorize(model: Any, stage: LowRankStage, where: str) -> tuple[Any, dict[str, Any]]:
    """The factorized model (not yet fine-tuned) and what was done to each layer."""
    check_patterns(model, stage.layers, where)
    factors: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    details: dict[str, Any] = {"layers": {}, "left_alone": {}}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Dense", "Conv2D") or not is_selected(layer, stage.layers):
            continue
        if kind == "Conv2D" and (layer.groups != 1 or layer.data_format != "channels_last"):
            details["left_alone"][layer.name] = "grouped or channels-first convolution"
            continue
        kernel = layer.get_weights()[0]
        matrix = kernel.reshape(-1, kernel.shape[-1])
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        rank = _rank(s, stage)
        m, n = matrix.shape
        if rank * (m + n) >= m * n:
            details["left_alone"][layer.name] = f"rank {rank} of {len(s)} would not save multiplies"
            continue
        root = np.sqrt(s[:rank])
        first = (u[:, :rank] * root).reshape(*kernel.shape[:-1], rank)
        second = (root[:, None] * vt[:rank]).reshape(*([1, 1] if kind == "Conv2D" else []), rank, n)
        factors[layer.name] = (first, second, rank)
        details["layers"][layer.name] = {
            "rank": rank,
            "full_rank": len(s),
            "energy_kept": round(float((s[:rank] ** 2).sum() / (s**2).sum()), 6),
            "multiplies_per_position": {"before": int(m * n), "after": int(rank * (m + n))},
        }
    if not factors:
        raise ModelError(
            f"{where}: no layer is worth factorizing: "
            + ("; ".join(f"{k}: {v}" for k, v in details["left_alone"].items()) or "no Dense or Conv2D layer"),
            hint="lower energy or rank_ratio, or select other layers",
        )
    factorized = _rebuild(model, factors)
    details["params_before"], details["params_after"] = int(model.count_params()), int(factorized.count_params())
    return factorized, details


def _rank(singular: np.ndarray, stage: LowRankStage) -> int:
    if stage.rank_ratio is not None:
        rank = math.ceil(stage.rank_ratio * len(singular))
    else:
        energy = np.cumsum(singular**2) / max(float((singular**2).sum()), 1e-30)
        rank = int(np.searchsorted(energy, stage.energy - 1e-12) + 1)
    return max(stage.min_rank, min(rank, len(singular)))


def _rebuild(model: Any, factors: dict[str, tuple[np.ndarray, np.ndarray, int]]) -> Any:
    """The model with each factorized layer replaced by its two halves, every other weight copied."""
    k = keras()
    config = copy.deepcopy(model.get_config())
    rewritten = []
    for entry in config["layers"]:
        name = entry["config"]["name"]
        if name not in factors:
            rewritten.append(entry)
            continue
        rewritten += _split(entry, factors[name][2])
    config["layers"] = rewritten
    built = (k.Sequential if isinstance(model, k.Sequential) else k.Model).from_config(config)
    for layer in model.layers:
        if layer.name in factors:
            first, second, _ = factors[layer.name]
            built.get_layer(f"{layer.name}_lr").set_weights([first])
            built.get_layer(layer.name).set_weights([second, *layer.get_weights()[1:]])
        elif layer.weights:
            built.get_layer(layer.name).set_weights(layer.get_weights())
    return built


def _split(entry: dict[str, Any], rank: int) -> list[dict[str, Any]]:
    name = entry["config"]["name"]
    first = copy.deepcopy(entry)
    first["config"].update(name=f"{name}_lr", activation="linear", use_bias=False)
    first["name"] = f"{name}_lr"
    second = copy.deepcopy(entry)
    if entry["class_name"] == "Dense":
        first["config"]["units"] = rank
    else:
        first["config"]["filters"] = rank
        second["config"].update(kernel_size=[1, 1], strides=[1, 1], padding="valid", dilation_rate=[1, 1])
    for key in ("kernel_regularizer", "activity_regularizer"):
        first["config"][key] = None
    if "inbound_nodes" in entry:  # functional: the first half reads the original inputs
        second["inbound_nodes"] = [[[f"{name}_lr", 0, 0, {}]]]
    return [first, second]
