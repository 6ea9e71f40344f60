"""What every optimization technique shares: its context, its outcome, and choosing which layers to wrap.

Each technique has TF-MOT's life cycle behind one function ``apply(model, stage, ctx) -> StageOutcome``:
copy the model (TF-MOT wrappers share layers with the model they wrap), wrap the chosen layers, fine-tune,
strip the wrappers. The model handed in is never modified.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgepipe.config.recipe import LayerSelection, TrainSettings
from edgepipe.data import Dataset
from edgepipe.errors import ConfigError, ModelError
from edgepipe.keras_compat import keras
from edgepipe.progress import Progress
from edgepipe.tasks import Task


@dataclass
class History:
    """What earlier stages did to the weights; later stages preserve it (sparsity, clusters)."""

    pruned: bool = False
    clustered: bool = False


@dataclass
class StageContext:
    data: Dataset
    train: TrainSettings
    seed: int
    progress: Progress
    history: History
    # Where this stage is in the recipe, e.g. "recipes/x.yaml: stages[1]", for error messages.
    where: str
    label: str
    # Decided once on the float model: TF-MOT's wrappers hide the head's activation from later stages.
    task: Task
    # The model a stage distills from when its fine-tuning says distill (the float model, or the named file).
    teacher: Any = None


@dataclass
class StageOutcome:
    """A stripped model ready to convert, what the stage decided, and its fine-tuning history."""

    model: Any
    details: dict[str, Any] = field(default_factory=dict)
    training: dict[str, list[float]] = field(default_factory=dict)


def matches(layer: Any, patterns: list[str]) -> bool:
    """True when a glob matches the layer's name or its class name."""
    names = (layer.name, type(layer).__name__)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def check_patterns(model: Any, selection: LayerSelection, where: str) -> None:
    """A pattern that matches no layer is almost always a typo: refuse it and list the layers there are."""
    for key in ("include", "exclude"):
        for pattern in getattr(selection, key):
            if not any(matches(layer, [pattern]) for layer in model.layers):
                listing = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in model.layers)
                raise ConfigError(
                    f"{where}.layers.{key}: pattern {pattern!r} matches no layer; the model has: {listing}"
                )


def is_selected(layer: Any, selection: LayerSelection) -> bool:
    if matches(layer, selection.exclude):
        return False
    return not selection.include or matches(layer, selection.include)


def has_weights(layer: Any) -> bool:
    return bool(layer.trainable_weights)


def wrap_layers(model: Any, wrap: Callable[[Any], Any | None]) -> Any:
    """Clone ``model`` replacing each layer by ``wrap(layer)``, or keeping it when ``wrap`` returns None.

    Layers kept as they are remain shared with ``model``: callers pass a private copy (``models.copy_model``).
    """
    k = keras()

    def clone(layer: Any) -> Any:
        if isinstance(layer, k.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        wrapped = wrap(layer)
        return layer if wrapped is None else wrapped

    return k.models.clone_model(model, clone_function=clone)


def choose_layers(
    model: Any, selection: LayerSelection, supports: Callable[[Any], bool], technique: str, where: str
) -> tuple[list[str], list[str]]:
    """Split the layers with weights into (chosen, skipped-as-unsupported).

    A layer the recipe names explicitly but TF-MOT cannot handle is an error; an unsupported layer picked up
    only by "all layers" is skipped and reported.
    """
    check_patterns(model, selection, where)
    chosen, unsupported = [], []
    for layer in model.layers:
        if not has_weights(layer) or not is_selected(layer, selection):
            continue
        if supports(layer):
            chosen.append(layer.name)
        elif selection.include and matches(layer, selection.include):
            raise ModelError(
                f"{where}: layer {layer.name!r} ({type(layer).__name__}) cannot be {technique} by TF-MOT",
                hint=f"remove it from {where}.layers.include",
            )
        else:
            unsupported.append(layer.name)
    if not chosen:
        raise ModelError(
            f"{where}: no layer of the model can be {technique}",
            hint=f"check {where}.layers; layers with weights: "
            + ", ".join(layer.name for layer in model.layers if has_weights(layer)),
        )
    return chosen, unsupported
