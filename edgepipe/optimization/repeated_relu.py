"""A ReLU applied to what a ReLU just gave changes nothing (``relu(relu(x)) == relu(x)``), and the converter drops
it from a float model. Under quantization-aware training it stays: TF-MOT gives it an output range of its own,
and the int8 model runs it as a RELU operator that post-training quantization does not have. Keras'
Oxford-pets U-Net example has one (``Activation("relu")`` on the stem's ReLU output at the top of its first
block): its QAT model was 13 % slower than its PTQ model, measured paired. The qat stage removes such a ReLU from
its own copy; checked numerically like the other rewrites.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgepipe.optimization import rewrite
from edgepipe.optimization.qat_layers import activation_name, inbound_layers

NON_NEGATIVE = ("relu", "relu6")  # activations whose output is never below zero


def _plain_relu(layer: Any) -> bool:
    """A layer that computes ``max(x, 0)`` and nothing else."""
    kind = type(layer).__name__
    if kind == "ReLU":
        return layer.max_value is None and float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
    return kind == "Activation" and activation_name(layer.activation) == "relu"


def _non_negative(layer: Any) -> bool:
    """A layer whose output is never below zero: a ReLU (capped or not) or a layer ending in one."""
    if type(layer).__name__ == "ReLU":
        return float(layer.negative_slope) == 0.0 and float(layer.threshold) >= 0.0
    activation = getattr(layer, "activation", None)
    return activation is not None and activation_name(activation) in NON_NEGATIVE


def drop_repeated_relu(model: Any, sample: Any, selected: Callable[[Any], bool]) -> tuple[Any, list[str]]:
    """``model`` without each selected plain ReLU whose one input comes from a layer that ends in a ReLU, and a
    line per dropped layer. A model output is kept (its name is the output's)."""
    outputs = {tensor._keras_history.layer.name for tensor in model.outputs}
    repeated = []
    for layer in model.layers:
        sources = inbound_layers(layer)
        if (
            selected(layer)
            and _plain_relu(layer)
            and layer.name not in outputs
            and len(layer._inbound_nodes) == 1
            and len(sources) == 1
            and _non_negative(sources[0])
        ):
            repeated.append((layer.name, sources[0].name))
    if not repeated:
        return model, []
    dropped, _, _ = rewrite.replayed(model, skip=frozenset(name for name, _ in repeated))
    rewrite.check_same(model, dropped, sample, "dropping repeated ReLUs", "use a ptq stage for this model")
    return dropped, [f"{name} (a ReLU of {source}'s ReLU output)" for name, source in repeated]
