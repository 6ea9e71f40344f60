"""Measuring one model on the test split: Keras accuracy, int8 TFLite accuracy, sizes, surviving weights.

Every stage is measured the same way, so the table compares like with like: a prune stage's int8 figures are
those of the pruned model after full-integer post-training quantization, exactly what it would be on a board.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe import models
from edgepipe.analyze import analyze
from edgepipe.convert import evaluate, weights
from edgepipe.data import Dataset
from edgepipe.provenance import sha256_bytes
from edgepipe.tasks import Task
from edgepipe.tflite_model import TfliteModel


def gzip_size(content: bytes) -> int:
    """Bytes after gzip -9 with a fixed header: what sparsity and clustering buy on disk and over the air."""
    return len(gzip.compress(content, compresslevel=9, mtime=0))


def size_entry(content: bytes, path: Path, root: Path) -> dict[str, Any]:
    return {
        "path": str(path.relative_to(root)),
        "bytes": len(content),
        "gzip_bytes": gzip_size(content),
        "sha256": sha256_bytes(content),
    }


def measure_tflite(
    content: bytes,
    path: Path,
    root: Path,
    data: Dataset,
    task: Task,
    model: Any,
    layer_names: list[str],
    reference: tuple[np.ndarray, ...] | None = None,
) -> dict[str, Any]:
    """Write ``content`` (converted from the Keras ``model``) to ``path`` and measure it on the test split;
    ``layer_names`` label the weights (the float model's names, for every stage); ``reference`` = the float
    Keras model's outputs, for top-1 agreement."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    order = evaluate.io_order(content, model.input_names, model.output_names)
    result = evaluate.evaluate(content, data.x_test, data.targets("test"), task, order)
    parsed = TfliteModel.read(content)
    stats = weights.weight_stats(parsed, layer_names)
    entry = {
        **size_entry(content, path, root),
        "accuracy": result.score.value if task.metric == "accuracy" else None,  # a mixed model's: its class outputs
        "metric": result.score.to_dict(),
        "sparsity": weights.overall_sparsity(stats),
        "weights": stats,
    }
    if reference is not None:
        entry["agreement_with_float_keras"] = task.agreement(result.outputs, reference)
        entry["discordant_with_float_keras"] = task.discordant(reference, result.outputs, data.targets("test"))
    entry["_model"] = parsed  # dropped before writing; saves re-parsing for conformance and analysis
    entry["_order"] = order
    return entry


def keras_entry(model: Any, data: Dataset, task: Task) -> dict[str, Any]:
    """``keras_accuracy`` (classifiers) and ``keras_metric`` of a Keras model on the test split."""
    result = models.score(model, data, task)
    return {
        "keras_accuracy": result.value if task.metric == "accuracy" else None,
        "keras_metric": result.to_dict(),
    }


def public(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry without the in-memory helpers (underscore keys)."""
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def analysis(entry: dict[str, Any]) -> dict[str, Any]:
    return analyze(entry["_model"])
