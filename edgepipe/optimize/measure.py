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
    content: bytes, path: Path, root: Path, data: Dataset, layer_names: list[str], reference: np.ndarray | None = None
) -> dict[str, Any]:
    """Write ``content`` to ``path`` and measure it; ``reference`` = float Keras predictions for agreement."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    result = evaluate.evaluate(content, data.x_test, data.y_test)
    parsed = TfliteModel.read(content)
    stats = weights.weight_stats(parsed, layer_names)
    entry = {
        **size_entry(content, path, root),
        "accuracy": round(result.accuracy, 6),
        "sparsity": weights.overall_sparsity(stats),
        "weights": stats,
    }
    if reference is not None:
        entry["agreement_with_float_keras"] = round(evaluate.agreement(result.predictions, reference), 6)
    entry["_model"] = parsed  # dropped before writing; saves re-parsing for conformance and analysis
    entry["_predictions"] = result.predictions
    return entry


def keras_accuracy(model: Any, data: Dataset) -> float:
    return round(models.accuracy(model, data), 6)


def public(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry without the in-memory helpers (underscore keys)."""
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def analysis(entry: dict[str, Any]) -> dict[str, Any]:
    return analyze(entry["_model"])
