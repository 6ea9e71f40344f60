"""A global pooling over a 1x1 map as the Flatten it is: MobileNet on a 32x32 input ends at one pixel.

Averaging (or taking the maximum of) one pixel per channel passes the channels through. With ``keepdims`` the
converter sees that and drops the pooling; without it (Keras' default, and every Keras Application's head) it
keeps a MEAN of the one pixel, which the board runs at every inference: 1.2 µs of MobileNetV2-0.35's 19 µs on
this host (``deploy --profile``). A Flatten of the same name gives the same values and converts to a RESHAPE.
Channel pruning reads a Flatten -> Dense as blocks of one input per channel, QAT takes it, and the rewrite is
checked numerically like the others (``rewrite.check_same``).
"""

from __future__ import annotations

from typing import Any

from edgepipe.keras_compat import keras
from edgepipe.optimization.rewrite import check_same, replayed

GLOBAL_POOLS = frozenset({"GlobalAveragePooling2D", "GlobalMaxPooling2D"})


def _over_one_pixel(layer: Any) -> bool:
    if type(layer).__name__ not in GLOBAL_POOLS:
        return False
    config = layer.get_config()
    if config.get("keepdims") or config.get("data_format", "channels_last") != "channels_last":
        return False
    try:
        shape = layer.input_shape
    except (AttributeError, RuntimeError):  # called on several inputs of different shapes: leave it
        return False
    return isinstance(shape, tuple) and len(shape) == 4 and tuple(shape[1:3]) == (1, 1)


def flatten_one_pixel_pooling(model: Any, sample: Any) -> tuple[Any, list[str]]:
    """``model`` with each global pooling over a 1x1 map replaced by a Flatten of the same name; a line per
    replaced layer."""
    if not any(_over_one_pixel(layer) for layer in model.layers):
        return model, []
    k = keras()
    lines: list[str] = []

    def flatten(node: Any, layer: Any, args: Any, kwargs: Any) -> Any:
        if not _over_one_pixel(layer):
            return None
        lines.append(f"{layer.name}: {type(layer).__name__} over a 1x1 map -> Flatten")
        return k.layers.Flatten(name=layer.name)(args[0])

    flat, _, _ = replayed(model, replace=flatten)
    check_same(model, flat, sample, "replacing a pooling over one pixel", "report this model to edgepipe")
    return flat, lines
