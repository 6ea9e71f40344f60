"""What a model is for, decided once on the float model: the loss to fine-tune with and how outputs are scored.

TF-MOT's wrappers hide a layer's ``activation`` (a pruned Dense is a ``PruneLowMagnitude``), so whether a
classifier's head already ends in softmax must be read from the unwrapped float model and carried to every
stage, never re-read from a wrapped one: a softmax head fine-tuned as if it gave logits trains on the wrong
loss without any error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

TaskKind = Literal["classification", "regression", "reconstruction"]


def output_layers(model: Any) -> list[Any]:
    """The layers that produce the model's outputs, in output order (Sequential and Functional models)."""
    names = list(getattr(model, "output_names", None) or [model.layers[-1].name])
    return [model.get_layer(name) for name in names]


def ends_with_softmax(layer: Any) -> bool:
    """True for a Softmax layer or a layer whose ``activation`` is softmax (unwrapped layers only)."""
    if type(layer).__name__ == "Softmax":
        return True
    return getattr(getattr(layer, "activation", None), "__name__", "") == "softmax"


@dataclass(frozen=True)
class Task:
    """The task and, for a classifier, whether each output gives probabilities (softmax) or logits."""

    kind: TaskKind = "classification"
    probabilities: tuple[bool, ...] = (False,)

    @classmethod
    def of(cls, model: Any, kind: TaskKind = "classification") -> Task:
        """Decide from the float (unwrapped) model; call this before any TF-MOT wrapper is applied."""
        return cls(kind, tuple(ends_with_softmax(layer) for layer in output_layers(model)))

    @property
    def has_labels(self) -> bool:
        """Whether the data set must carry targets (``y``): reconstruction compares outputs with inputs."""
        return self.kind != "reconstruction"

    @property
    def outputs(self) -> int:
        return len(self.probabilities)

    def losses(self) -> list[Any]:
        """One Keras loss per output."""
        from edgepipe.keras_compat import keras

        losses = keras().losses
        if self.kind == "classification":
            return [losses.SparseCategoricalCrossentropy(from_logits=not p) for p in self.probabilities]
        return [losses.MeanSquaredError() for _ in self.probabilities]

    def keras_metric(self) -> str:
        """The metric Keras reports while training (shown in the epoch progress bar)."""
        return "accuracy" if self.kind == "classification" else "mae"

    @property
    def metric(self) -> str:
        return METRICS[self.kind][0]

    def score(self, outputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> Score:
        return score(self.kind, outputs, targets)


# ------------------------------------------------------------------------------------------------ scoring
# The same formulas run in the device agent (device_agents/edgepipe_agent/evaluate.py, ``score``), which has no
# edgepipe import; tests check that both give the same numbers.
METRICS: dict[str, tuple[str, bool]] = {
    # task: (metric, higher is better)
    "classification": ("accuracy", True),
    "regression": ("mae", False),
    "reconstruction": ("mse", False),
}
METRIC_MEANING = {
    "accuracy": "top-1 accuracy",
    "mae": "mean absolute error",
    "mse": "mean squared reconstruction error",
}


@dataclass(frozen=True)
class Score:
    """One number for the model (the mean over its outputs) and one per output."""

    metric: str
    value: float
    per_output: tuple[float, ...]

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "per_output": list(self.per_output)}


def score(kind: TaskKind, outputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> Score:
    """Score float outputs (dequantized) against targets, output by output.

    classification: top-1 accuracy of each output against integer labels; regression: mean absolute error;
    reconstruction: mean squared error of each output against the input it reconstructs (targets = inputs).
    """
    if len(outputs) != len(targets):
        raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
    values = []
    for out, target in zip(outputs, targets, strict=True):
        flat = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
        if kind == "classification":
            values.append(float(np.mean(flat.argmax(axis=1) == np.asarray(target).reshape(-1))))
            continue
        want = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
        if want.shape != flat.shape:
            raise ValueError(f"outputs of shape {flat.shape[1:]} cannot be compared with targets {want.shape[1:]}")
        error = np.abs(flat - want) if kind == "regression" else np.square(flat - want)
        values.append(float(error.mean()))
    metric, _ = METRICS[kind]
    return Score(metric, round(float(np.mean(values)), 6), tuple(round(v, 6) for v in values))


def agreement(kind: TaskKind, a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float | None:
    """Top-1 agreement between two models' outputs (classification); None for other tasks, whose outputs are
    compared by their error against the targets instead."""
    if kind != "classification":
        return None
    same = [
        np.mean(np.asarray(x).reshape(len(x), -1).argmax(axis=1) == np.asarray(y).reshape(len(y), -1).argmax(axis=1))
        for x, y in zip(a, b, strict=True)
    ]
    return round(float(np.mean(same)), 6)
