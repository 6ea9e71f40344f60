"""What a model is for, decided once on the float model: the loss to fine-tune with and how outputs are scored.

TF-MOT's wrappers hide a layer's ``activation`` (a pruned Dense is a ``PruneLowMagnitude``), so whether a
classifier's head already ends in softmax must be read from the unwrapped float model and carried to every
stage, never re-read from a wrapped one: a softmax head fine-tuned as if it gave logits trains on the wrong
loss without any error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

TaskKind = Literal["classification", "regression", "reconstruction"]
OutputKind = Literal["classification", "regression"]  # what each output of a mixed model may be
# The recipe's ``task``: one kind, or one per output (mixed; a mapping by output name is resolved to this list
# by ``Recipe.task_per_output`` once the model is loaded).
TaskSpec = TaskKind | Sequence[OutputKind] | Mapping[str, OutputKind]
ErrorLoss = Literal["mse", "mae", "huber"]
MIXED = "mixed"  # Task.kind of a model whose outputs have different tasks (a class head next to a value head)


def parse_option(text: str | Sequence[str]) -> TaskKind | list[TaskKind]:
    """``deploy --task``: one task (``regression``) or one per output, comma-separated
    (``classification,regression``) or as a list; an unknown word is a ConfigError naming the choices."""
    from edgepipe.errors import ConfigError

    words = [w.strip() for w in (text.split(",") if isinstance(text, str) else text)]
    known = ("classification", "regression", "reconstruction")
    for word in words:
        if word not in known:
            raise ConfigError(
                f"--task: {word!r} is not a task",
                hint=f"use {', '.join(known[:-1])} or {known[-1]}; one per output separated by commas "
                "(classification,regression) for a model whose outputs differ",
            )
    return words[0] if len(words) == 1 else words  # type: ignore[return-value]


def per_output(spec: TaskSpec | None, outputs: int) -> tuple[TaskKind, ...]:
    """The task of each of ``outputs`` outputs: the one kind repeated, or the recipe's list (None: classification,
    an evaluation file's default). A list of another length is the caller's to refuse (``Task.of`` does)."""
    if spec is None:
        return ("classification",) * outputs
    if isinstance(spec, str):
        return (spec,) * outputs  # type: ignore[return-value]
    if isinstance(spec, Mapping):
        raise TypeError("tasks by output name must be put in the model's order first (Recipe.task_per_output)")
    return tuple(spec)


def output_layers(model: Any) -> list[Any]:
    """The layers that produce the model's outputs, in output order (Sequential and Functional models)."""
    names = list(getattr(model, "output_names", None) or [model.layers[-1].name])
    return [model.get_layer(name) for name in names]


def ends_with_softmax(layer: Any) -> bool:
    """True for a Softmax layer or a layer whose ``activation`` is softmax (unwrapped layers only)."""
    if type(layer).__name__ == "Softmax":
        return True
    return _activation(layer) == "softmax"


def _activation(layer: Any) -> str:
    if type(layer).__name__ == "Activation":
        return getattr(layer.activation, "__name__", "")
    return getattr(getattr(layer, "activation", None), "__name__", "")


def binary_threshold(layer: Any, units: int) -> float | None:
    """For a classifier output whose answers are one value each (a binary classifier, a binary mask, or a
    multi-label head: yes when the value is above the threshold), 0.5 after a sigmoid and 0.0 for a logit;
    None for an output with a unit per class (``units`` is the values per answer, ``answer_width``)."""
    if units != 1:
        return None
    return 0.5 if _activation(layer) == "sigmoid" else 0.0


def answer_width(output_shape: Sequence[int | None], label_shape: Sequence[int]) -> int | None:
    """How many values of a classifier output make one answer, from the output's shape and the labels' (both
    without the batch axis); None when the labels do not fit the output.

    Labels shaped like the output without its last axis: one answer per sample or per position (segmentation),
    whose classes the last axis holds (a width of 1 is a binary answer). Labels shaped like the whole output:
    every value is a yes/no answer of its own (a multi-label head, multi-hot labels). The agent has the same
    rule (``edgepipe_agent.evaluate.answer_width``)."""
    output, labels = list(output_shape), list(label_shape)

    def matches(axes: list[Any]) -> bool:
        return len(axes) == len(labels) and all(o is None or o == n for o, n in zip(axes, labels, strict=True))

    if output and matches(output[:-1]):
        return None if output[-1] is None else int(output[-1])
    if output and matches(output):
        return 1
    return None


def answers(values: np.ndarray, threshold: float | None, classes: int | None = None) -> np.ndarray:
    """One row per answer, as columns whose argmax is the class: a binary output (one column) gets the
    threshold in front, so that argmax answers 1 exactly when the output is above it and the margin of an
    answer is its distance from the threshold. With ``classes`` (the output's last axis), every position of a
    per-position output (segmentation: one answer per pixel) is a row; without it, every sample. Every argmax
    in edgepipe and the agent reads classes this way."""
    flat = np.asarray(values).reshape(-1, classes) if classes else np.asarray(values).reshape(len(values), -1)
    if threshold is None or flat.shape[1] != 1:
        return flat
    return np.concatenate([np.full_like(flat, threshold, dtype=np.float64), flat.astype(np.float64)], axis=1)


@dataclass(frozen=True)
class Task:
    """The task and, for a classifier, whether each output gives probabilities (softmax) or logits, and for a
    binary one (one unit) the threshold above which it answers 1."""

    kind: TaskKind | Literal["mixed"] = "classification"
    probabilities: tuple[bool, ...] = (False,)
    thresholds: tuple[float | None, ...] = ()  # per output; empty: no binary output
    classes: tuple[int | None, ...] = ()  # per output: the size of its last axis, which holds the classes
    error_loss: ErrorLoss = "mse"  # the training loss of a regression or reconstruction model (or output)
    output_kinds: tuple[TaskKind, ...] = ()  # per output, for a mixed model; empty: every output is ``kind``

    @classmethod
    def of(
        cls,
        model: Any,
        kind: TaskSpec = "classification",
        labels: Sequence[np.ndarray] = (),
        loss: ErrorLoss | Literal["auto"] = "auto",
    ) -> Task:
        """Decide from the float (unwrapped) model and the labels' shapes (``answer_width``: without labels, an
        answer per sample); call this before any TF-MOT wrapper is applied. ``kind`` is the recipe's task: one
        for every output, or a list with one per output (a mixed model). ``loss`` is the recipe's, for a
        regression or reconstruction model or output (``auto``: mse)."""
        heads = output_layers(model)
        kinds = per_output(kind, len(heads))
        if len(kinds) != len(heads):
            from edgepipe.errors import ConfigError

            names = ", ".join(repr(layer.name) for layer in heads)
            raise ConfigError(
                f"task: {len(kinds)} tasks listed but the model has {len(heads)} outputs ({names})",
                hint="list one task per output, in the model's output order, e.g. task: [classification, regression]",
            )
        shapes = [tuple(tensor.shape)[1:] for tensor in model.outputs]
        widths = [
            (answer_width(shape, np.shape(labels[i])[1:]) if i < len(labels) else shape[-1])
            if output_kind == "classification"
            else None
            for i, (shape, output_kind) in enumerate(zip(shapes, kinds, strict=True))
        ]
        classes = tuple(None if w is None else int(w) for w in widths)
        thresholds = tuple(
            binary_threshold(layer, -1 if w is None else w) if output_kind == "classification" else None
            for layer, w, output_kind in zip(heads, classes, kinds, strict=True)
        )
        thresholds = thresholds if any(t is not None for t in thresholds) else ()
        if "classification" not in kinds:
            classes = ()
        error_loss: ErrorLoss = "mse" if loss == "auto" else loss
        probabilities = tuple(ends_with_softmax(layer) for layer in heads)
        if len(set(kinds)) > 1:
            return cls(MIXED, probabilities, thresholds, classes, error_loss, kinds)
        return cls(kinds[0], probabilities, thresholds, classes, error_loss)

    def kind_of(self, index: int) -> TaskKind:
        """The task of output ``index``."""
        return self.output_kinds[index] if self.output_kinds else self.kind  # type: ignore[return-value]

    def classifies(self, index: int) -> bool:
        return self.kind_of(index) == "classification"

    @property
    def kinds(self) -> tuple[TaskKind, ...]:
        """The task of every output."""
        return tuple(self.kind_of(index) for index in range(self.outputs))

    @property
    def spec(self) -> TaskSpec:
        """What the recipe and the agent's job call the task: one kind, or a list of one per output."""
        return list(self.output_kinds) if self.output_kinds else self.kind  # type: ignore[return-value]

    @property
    def any_classifier(self) -> bool:
        return "classification" in self.kinds

    @property
    def any_error(self) -> bool:
        """Whether some output is scored by an error (a regression or reconstruction output)."""
        return any(kind != "classification" for kind in self.kinds)

    @property
    def has_labels(self) -> bool:
        """Whether the data set must carry targets (``y``): reconstruction compares outputs with inputs."""
        return self.kind != "reconstruction"

    @property
    def outputs(self) -> int:
        return len(self.probabilities)

    def threshold(self, index: int) -> float | None:
        return self.thresholds[index] if index < len(self.thresholds) else None

    @property
    def binary(self) -> bool:
        return any(t is not None for t in self.thresholds)

    def losses(self) -> list[Any]:
        """One Keras loss per output."""
        from edgepipe.keras_compat import keras

        losses = keras().losses
        chosen = []
        for index, probabilities in enumerate(self.probabilities):
            threshold = self.threshold(index)
            if not self.classifies(index):
                chosen.append(self.keras_error_loss())
            elif threshold is not None:
                chosen.append(losses.BinaryCrossentropy(from_logits=threshold == 0.0))
            else:
                chosen.append(losses.SparseCategoricalCrossentropy(from_logits=not probabilities))
        return chosen

    def keras_error_loss(self) -> Any:
        """The Keras loss for ``error_loss``."""
        from edgepipe.keras_compat import keras

        losses = keras().losses
        return {"mse": losses.MeanSquaredError, "mae": losses.MeanAbsoluteError, "huber": losses.Huber}[
            self.error_loss
        ]()

    def keras_metric(self) -> str:
        """The metric Keras reports while training (shown in the epoch progress bar)."""
        return "accuracy" if self.any_classifier else "mae"

    def keras_metrics(self) -> list[Any]:
        """The metric of each output for ``compile``: Keras' "accuracy" would read a logit as a probability."""
        from edgepipe.keras_compat import keras

        metrics: list[Any] = []
        for index in range(self.outputs):
            threshold = self.threshold(index)
            if not self.classifies(index):
                metrics.append("mae")
            elif threshold is not None:
                metrics.append(keras().metrics.BinaryAccuracy(name="accuracy", threshold=threshold))
            else:
                metrics.append("accuracy")
        return metrics

    @property
    def metric(self) -> str:
        """The model's headline metric: a mixed model's is the accuracy of its classifier outputs."""
        return "accuracy" if self.kind == MIXED else METRICS[self.kind][0]

    def score(self, outputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> Score:
        return score(self.kinds, outputs, targets, self.thresholds, self.classes)

    def agreement(self, a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float | None:
        """Top-1 agreement of the classifier outputs (None without any)."""
        chosen = [i for i in range(self.outputs) if self.classifies(i)]
        if not chosen:
            return None
        return agreement("classification", *self._only(chosen, a, b))

    def discordant(
        self, a: Sequence[np.ndarray], b: Sequence[np.ndarray], targets: Sequence[np.ndarray]
    ) -> dict[str, Any] | None:
        """``discordant`` over the classifier outputs; None without any (errors are compared instead)."""
        chosen = [i for i in range(self.outputs) if self.classifies(i)]
        if not chosen:
            return None
        picked_a, picked_b, thresholds, classes = self._only(chosen, a, b)
        return discordant(picked_a, picked_b, [targets[i] for i in chosen], thresholds, classes)

    def _only(
        self, chosen: list[int], a: Sequence[np.ndarray], b: Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[float | None], list[int | None]]:
        """Outputs ``chosen`` of two models, with their thresholds and answer widths."""
        return (
            [a[i] for i in chosen],
            [b[i] for i in chosen],
            [self.threshold(i) for i in chosen],
            [_classes(self.classes, i) for i in chosen],
        )


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
    per_output_metric: tuple[str, ...] = ()  # each output's metric; empty: every output's is ``metric``

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def to_dict(self) -> dict[str, Any]:
        scored = {"metric": self.metric, "value": self.value, "per_output": list(self.per_output)}
        return scored | ({"per_output_metric": list(self.per_output_metric)} if self.per_output_metric else {})


def score(
    kind: TaskKind | Sequence[TaskKind],
    outputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    thresholds: Sequence[float | None] = (),
    classes: Sequence[int | None] = (),
) -> Score:
    """Score float outputs (dequantized) against targets, output by output (``kind``: one task, or one per
    output for a mixed model, whose headline value is its classifier outputs' accuracy).

    classification: top-1 accuracy of each output against integer labels (a one-unit output answers 1 above its
    threshold, ``answers``; a per-position output, one label per position: the share of positions right);
    regression: mean absolute error; reconstruction: mean squared error of each output against the input it
    reconstructs (targets = inputs).
    """
    if len(outputs) != len(targets):
        raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
    kinds = per_output(kind, len(outputs))
    values = []
    for index, (out, target, output_kind) in enumerate(zip(outputs, targets, kinds, strict=True)):
        flat = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
        if output_kind == "classification":
            threshold = thresholds[index] if index < len(thresholds) else None
            predicted = answers(flat, threshold, _classes(classes, index)).argmax(axis=1)
            labels = np.asarray(target).reshape(-1)
            if len(labels) != len(predicted):
                raise ValueError(f"{len(predicted)} answers of output {index} but {len(labels)} labels")
            values.append(float(np.mean(predicted == labels)))
            continue
        want = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
        if want.shape != flat.shape:
            raise ValueError(f"outputs of shape {flat.shape[1:]} cannot be compared with targets {want.shape[1:]}")
        error = np.abs(flat - want) if output_kind == "regression" else np.square(flat - want)
        values.append(float(error.mean()))
    rounded = tuple(round(v, 6) for v in values)
    if len(set(kinds)) == 1:
        return Score(METRICS[kinds[0]][0], round(float(np.mean(values)), 6), rounded)
    metrics = tuple(METRICS[k][0] for k in kinds)
    headline = [v for v, m in zip(values, metrics, strict=True) if m == "accuracy"]
    return Score("accuracy", round(float(np.mean(headline)), 6), rounded, metrics)


def agreement(
    kind: TaskKind,
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    thresholds: Sequence[float | None] = (),
    classes: Sequence[int | None] = (),
) -> float | None:
    """Top-1 agreement between two models' outputs (classification; per position for a per-position output);
    None for other tasks, whose outputs are compared by their error against the targets instead."""
    if kind != "classification":
        return None
    same = []
    for index, (x, y) in enumerate(zip(a, b, strict=True)):
        threshold, width = thresholds[index] if index < len(thresholds) else None, _classes(classes, index)
        same.append(np.mean(answers(x, threshold, width).argmax(axis=1) == answers(y, threshold, width).argmax(axis=1)))
    return round(float(np.mean(same)), 6)


def discordant(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    thresholds: Sequence[float | None] = (),
    classes: Sequence[int | None] = (),
) -> dict[str, Any]:
    """The answers only one of two classifiers gets right (``a``: the reference, the float model): the only
    answers that can make their accuracies differ, and McNemar's exact test of them (two-sided binomial, p = 1
    when there are none). A small p says ``b`` is worse (or better) beyond the chance of a few near-ties
    rounding the other way; the same test as the board-against-host check.

    The test counts independent answers: one per sample. Where a sample gives several (a segmentation mask's
    pixels, a multi-label head's labels, several class outputs) they are not independent, and counted one by
    one they made a few changed images look like thousands of changes (p = 1e-156 for a mask model whose
    images changed by chance); the test then counts samples, each lost or gained by which model got more of
    its answers right (``samples``)."""
    lost = gained = 0
    right_per_sample: list[np.ndarray] = [np.zeros(0), np.zeros(0)]
    for index, (x, y, target) in enumerate(zip(a, b, targets, strict=True)):
        threshold, width = thresholds[index] if index < len(thresholds) else None, _classes(classes, index)
        labels = np.asarray(target).reshape(-1)
        right_a = answers(np.asarray(x).reshape(len(x), -1), threshold, width).argmax(axis=1) == labels
        right_b = answers(np.asarray(y).reshape(len(y), -1), threshold, width).argmax(axis=1) == labels
        lost += int(np.sum(right_a & ~right_b))
        gained += int(np.sum(~right_a & right_b))
        for side, right in enumerate((right_a, right_b)):
            counts = right.reshape(len(x), -1).sum(axis=1)
            right_per_sample[side] = counts if index == 0 else right_per_sample[side] + counts
    found: dict[str, Any] = {"reference_right_other_wrong": lost, "reference_wrong_other_right": gained}
    samples = len(right_per_sample[0])
    if lost + gained and sum(len(np.asarray(t).reshape(-1)) for t in targets) != samples:
        worse = int(np.sum(right_per_sample[0] > right_per_sample[1]))
        better = int(np.sum(right_per_sample[0] < right_per_sample[1]))
        found["samples"] = {"reference_better": worse, "other_better": better}
        return found | {"p_value": mcnemar(worse, better)}
    return found | {"p_value": mcnemar(lost, gained)}


def mcnemar(lost: int, gained: int) -> float:
    """McNemar's exact test of the answers two models disagree on: if the second merely rounds near-ties the
    other way, it turns right answers wrong as often as wrong ones right (a fair coin; p = 1 with none)."""
    from scipy.stats import binomtest

    return float(f"{binomtest(lost, lost + gained, 0.5).pvalue:.3g}") if lost + gained else 1.0


def _classes(classes: Sequence[int | None], index: int) -> int | None:
    return classes[index] if index < len(classes) else None
