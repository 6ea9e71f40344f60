"""What a model is for, decided once on the float model: the loss to fine-tune with and how outputs are scored.

TF-MOT's wrappers hide a layer's ``activation`` (a pruned Dense is a ``PruneLowMagnitude``), so whether a
classifier's head already ends in softmax must be read from the unwrapped float model and carried to every
stage, never re-read from a wrapped one: a softmax head fine-tuned as if it gave logits trains on the wrong
loss without any error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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
