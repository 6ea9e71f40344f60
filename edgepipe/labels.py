"""What each output's targets must be for its task: integer class labels (one-hot and multi-hot rows read as
such, with a note) or finite float values; and which task checks which target array when the recipe gives one
task per output. ``data`` checks every data source with these before any model is trained."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgepipe.errors import ConfigError
from edgepipe.tasks import TaskKind, TaskSpec, per_output


def kinds_for(
    task: TaskSpec,
    ys: list[np.ndarray],
    names: list[str],
    arrays: Mapping[str, Any],
    origin: str,
    file: str | None,
    field: str,
) -> tuple[TaskKind, ...]:
    """How to check each target array: its output's task. A task per output must list one per array; for targets
    given by name (held in sorted order, not necessarily the model's) only the numbers are checked here, as a
    regression's are, and ``Dataset.for_tasks`` checks each once the model has put them in its order; so for
    tasks given by output name (a mapping), which only the model's output names order."""
    kinds = per_output(list(task.values()) if isinstance(task, Mapping) else task, len(ys))
    if len(kinds) != len(ys):
        raise ConfigError.at(
            file,
            field,
            f"{origin}: the recipe lists {len(kinds)} tasks (one per output) but the data gives {len(ys)} target "
            f"arrays ({', '.join(names)})",
            hint="give one target array per model output, and list one task per output in the model's order",
        )
    by_name = any(isinstance(arrays.get(key), Mapping) for key in ("y_train", "y_test"))
    if isinstance(task, str) or not (by_name or isinstance(task, Mapping)):
        return kinds
    return ("regression",) * len(ys)


def _float_targets_hint(several: bool, mixed: bool) -> str:
    """What to do about float targets where class labels were expected."""
    if mixed:
        return (
            "the recipe's task lists this output as classification; list it as regression if it holds values "
            "(one task per output, in the model's output order)"
        )
    return "for float targets set task: regression in the recipe" + (
        "; for a class head next to a value head list one task per output, in the model's output order: "
        "task: [classification, regression]"
        if several
        else ""
    )


def check_targets(
    y: np.ndarray,
    label: str,
    task: TaskKind,
    origin: str,
    file: str | None,
    field: str,
    several: bool = False,
    mixed: bool = False,
) -> tuple[np.ndarray, str | None]:
    """Targets for ``task``: integer class labels (one-hot accepted, with a note) or finite float values;
    ``several``: the model has several outputs, ``mixed``: with a task each."""
    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        names = y.dtype.kind in "US" or (y.dtype == object and all(isinstance(v, str) for v in y.flat[:100]))
        raise ConfigError.at(
            file,
            field,
            f"{origin}: {label} must be numeric, got dtype {y.dtype}"
            + (f" (class names such as {str(y.flat[0])!r})" if names and y.size else ""),
            hint="give each class its number, in the order the model's outputs follow (for a model trained "
            "elsewhere, the order it was trained with), e.g. classes, y = np.unique(names, return_inverse=True)"
            if names
            else None,
        )
    check_finite(y, label, origin, file, field)
    if task == "regression":
        if y.ndim < 1:
            raise ConfigError.at(file, field, f"{origin}: {label} must have one target per sample")
        return y.astype(np.float32), None
    note = None
    integers = bool(np.all(np.mod(y, 1) == 0))
    if y.ndim == 2 and y.shape[1] > 1 and (not integers or np.all((y == 0) | (y == 1))):
        # 0/1 rows: one-hot labels, or multi-hot ones (several yes/no labels per sample); other integer rows are a
        # label per position (a sequence tagger's). ``models.check_fits`` matches them against the model's output.
        if not integers:
            raise ConfigError.at(
                file,
                field,
                f"{origin}: {label} has shape {y.shape} but is not one-hot (exactly one 1 per row)",
                hint="give one integer class label per sample, or one-hot rows; " + _float_targets_hint(several, mixed),
            )
        if np.all(y.sum(axis=1) == 1):
            note = f"{label}: one-hot labels ({y.shape[0]} x {y.shape[1]}) read as class indices"
            y = y.argmax(axis=1)
        else:
            note = f"{label}: multi-hot labels, {y.shape[1]} yes/no labels per sample (a multi-label head)"
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim < 1 or not np.all(np.mod(y, 1) == 0):
        raise ConfigError.at(
            file,
            field,
            f"{origin}: {label} must hold integer class labels (one per sample, or one per position of a "
            f"segmentation model's output), got dtype {y.dtype} shape {y.shape}",
            hint=_float_targets_hint(several, mixed),
        )
    if y.min() < 0:
        raise ConfigError.at(file, field, f"{origin}: {label} has negative labels")
    return y.astype(np.int64), note


def check_finite(array: np.ndarray, name: str, origin: str, file: str | None, field: str) -> None:
    """NaN or infinity trains to NaN weights and ends, much later, in a misleading conversion error."""
    finite = np.isfinite(array)
    if finite.all():
        return
    bad_samples = int((~finite.reshape(len(array), -1)).any(axis=1).sum())
    raise ConfigError.at(
        file,
        field,
        f"{origin}: {name} holds {int(np.isnan(array).sum())} NaN and {int(np.isinf(array).sum())} infinite "
        f"values (in {bad_samples} of {len(array)} samples)",
        hint="clean or drop those samples before training",
    )
