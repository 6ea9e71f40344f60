"""``tf.data`` pipelines from a data function, read into the arrays edgepipe checks and trains on.

Keras users load images with ``image_dataset_from_directory`` and build ``tf.data`` pipelines; a data function
returning them was refused ("has no array 'x_train' ... found: test, train"). edgepipe needs arrays: every split
is checked (shapes, labels, NaN) before training, calibration draws samples from it, and the test split is
written to ``eval.npz`` for the board. So each pipeline is run once to its end and its elements stacked; a
pipeline that repeats forever is refused with the fix. The data sets of edge models fit in memory; how much
this took is said in a note.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgepipe.errors import ConfigError

# The names a mapping may give its two pipelines under (Keras tutorials say validation where edgepipe says test).
_TRAIN_NAMES = ("train",)
_TEST_NAMES = ("test", "validation", "val")


def is_pipeline(value: Any) -> bool:
    """A ``tf.data.Dataset`` (checked without importing TensorFlow for anything else)."""
    return any(cls.__module__.startswith("tensorflow") and cls.__name__ == "DatasetV2" for cls in type(value).__mro__)


def pipelines_of(produced: Any) -> tuple[Any, Any] | None:
    """The (train, test) pipelines a data function returned, or None when it returned something else.

    Accepted: ``(train, test)`` (what ``image_dataset_from_directory(..., subset="both")`` gives) or a mapping
    ``{"train": ..., "test": ...}`` (``validation`` or ``val`` for the second).
    """
    if isinstance(produced, list | tuple) and len(produced) == 2 and all(map(is_pipeline, produced)):
        return produced[0], produced[1]
    if isinstance(produced, Mapping) and any(is_pipeline(value) for value in produced.values()):
        train = next((produced[name] for name in _TRAIN_NAMES if name in produced), None)
        test = next((produced[name] for name in _TEST_NAMES if name in produced), None)
        if train is None or test is None:
            return None
        return train, test
    return None


def arrays_from_pipelines(
    train: Any, test: Any, origin: str, file: str | None, field: str
) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """``x_train, y_train, x_test, y_test`` (lists, one array per model input / output) and notes."""
    arrays: dict[str, list[np.ndarray]] = {}
    notes = []
    for split, pipeline in (("train", train), ("test", test)):
        x, y, batched, weights = _read(pipeline, split, origin, file, field)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
        megabytes = sum(a.nbytes for a in (*x, *y)) / 2**20
        how = "batches unbatched" if batched else "samples stacked"
        notes.append(
            f"tf.data {split} pipeline read to its end: {len(x[0]):,} samples ({how}, {megabytes:,.1f} MB in memory)"
            + ("; its sample weights are not used" if weights else "")
        )
    names = getattr(train, "class_names", None)
    if names:
        notes.append(f"classes from the pipeline: {', '.join(f'{i} = {n}' for i, n in enumerate(names))}")
    return arrays, notes


def _read(
    pipeline: Any, split: str, origin: str, file: str | None, field: str
) -> tuple[list[np.ndarray], list[np.ndarray], bool, bool]:
    import tensorflow as tf

    if int(pipeline.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise ConfigError.at(
            file,
            field,
            f"{origin}: the {split} tf.data pipeline repeats forever, so it cannot be read into arrays",
            hint="return it without .repeat(); edgepipe runs the epochs itself",
        )
    spec = pipeline.element_spec
    parts = list(spec) if isinstance(spec, tuple) else [spec]
    if not 1 <= len(parts) <= 3 or any(isinstance(part, Mapping) for part in parts):
        raise ConfigError.at(
            file,
            field,
            f"{origin}: the {split} tf.data pipeline gives {_describe(spec)}; expected (inputs, targets) as "
            "model.fit takes them, with a tuple of tensors for several inputs or outputs",
            hint="map a dict of features to a tuple in the model's input order: "
            ".map(lambda f, y: ((f['a'], f['b']), y))",
        )
    leaves = tf.nest.flatten(spec)
    batched = all(leaf.shape.rank and leaf.shape[0] is None for leaf in leaves)
    columns: list[list[np.ndarray]] = [[] for _ in leaves]
    for element in pipeline.as_numpy_iterator():
        for column, value in zip(columns, tf.nest.flatten(element), strict=True):
            column.append(np.asarray(value))
    if not columns[0]:
        raise ConfigError.at(file, field, f"{origin}: the {split} tf.data pipeline gave no elements")
    try:
        stacked = [np.concatenate(c) if batched else np.stack(c) for c in columns]
    except ValueError as exc:
        raise ConfigError.at(
            file,
            field,
            f"{origin}: the {split} tf.data pipeline's samples differ in shape ({exc})",
            hint="resize or pad them to one shape in the pipeline (image_dataset_from_directory's image_size does)",
        ) from None
    structured = tf.nest.pack_sequence_as(spec, stacked)
    parts = list(structured) if isinstance(structured, tuple) else [structured]
    x = _as_list(parts[0])
    y = _as_list(parts[1]) if len(parts) > 1 else []
    return x, y, batched, len(parts) == 3


def _as_list(value: Any) -> list[np.ndarray]:
    return [np.asarray(v) for v in value] if isinstance(value, list | tuple) else [np.asarray(value)]


def _describe(spec: Any) -> str:
    if isinstance(spec, tuple):
        return f"a tuple of {len(spec)} ({', '.join(type(part).__name__ for part in spec)})"
    return type(spec).__name__
