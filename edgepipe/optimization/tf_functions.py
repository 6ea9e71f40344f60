"""TensorFlow functions called on Keras tensors, replaced by the Keras layers that compute the same.

Models written with TensorFlow arithmetic (``x * 0.5 + y``, ``tf.concat``, ``tf.nn.relu``,
``tf.reduce_mean(x, [1, 2])``), and every Keras 3 model with ``keras.ops`` in it once rebuilt for tf_keras, hold
``TFOpLambda`` layers. TF-MOT's QAT has no quantize config for them (each is refused by name), and channel
pruning cannot see through a ``tf.concat``. The Keras layer that computes the same (``Add``, ``Concatenate``,
``ReLU``, ``GlobalAveragePooling2D``, ``Rescaling`` for arithmetic with a constant) has both, and converts to the
same TFLite operator.

Done once, when the model is loaded; the rewritten model must give the same outputs on a data sample. Calls
that are part of a hard-swish / hard-sigmoid chain are left for the qat stage, which fuses the chain into one
layer (``hard_activations``); calls with no exact layer (slicing, other functions) stay as they are. The new
layers keep the calls' names, so a recipe's ``exclude: ["tf.*"]`` still finds them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from edgepipe.errors import ModelError
from edgepipe.keras_compat import is_graph_tensor, keras
from edgepipe.optimization import rewrite

# TensorFlow function (as TFOpLambda records it) -> Keras layer class for two tensors of the same rank
MERGES = {
    "__operators__.add": "Add",
    "math.add": "Add",
    "math.subtract": "Subtract",
    "math.multiply": "Multiply",
    "math.maximum": "Maximum",
    "math.minimum": "Minimum",
}
ACTIVATIONS = {
    "math.sigmoid": "sigmoid",
    "nn.sigmoid": "sigmoid",
    "math.tanh": "tanh",
    "nn.tanh": "tanh",
    "nn.silu": "swish",
    "nn.swish": "swish",
    "nn.gelu": "gelu",
}


def keras_layers_for_tf_functions(model: Any, sample: Any) -> tuple[Any, list[str]]:
    """The model with each TF function call that a Keras layer computes exactly replaced by that layer, and a
    line saying which (none: the model itself, unchanged)."""
    calls = [layer for layer in model.layers if type(layer).__name__ == "TFOpLambda"]
    if not calls:
        return model, []
    from edgepipe.optimization.hard_activations import chain_layer_names

    left_for_qat = chain_layer_names(model)
    replaced: dict[str, str] = {}

    def replace(node: Any, layer: Any, args: Any, kwargs: Any) -> Any:
        if type(layer).__name__ != "TFOpLambda" or layer.name in left_for_qat:
            return None
        found = _layer_for(layer, node, args, kwargs)
        if found is None:
            return None
        new, inputs = found
        replaced[layer.name] = f"{layer.get_config()['function']} -> {type(new).__name__}"
        return new(inputs)

    try:
        rebuilt, _, _ = rewrite.replayed(model, replace=replace)
        if replaced:
            rewrite.check_same(model, rebuilt, sample, "replacing TensorFlow functions by Keras layers", "")
    except Exception as exc:  # a call Keras cannot replay, or other outputs: the model stays as the user wrote it
        reason = exc.message if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
        return model, [f"TensorFlow function calls left as they are ({reason})"]
    if not replaced:
        return model, []
    kinds = sorted(set(replaced.values()))
    return rebuilt, [f"{len(replaced)} TensorFlow function call(s) replaced by Keras layers ({', '.join(kinds)})"]


def _layer_for(layer: Any, node: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
    """(a new Keras layer, what to call it on) that computes ``layer``'s call exactly, or None."""
    function = layer.get_config()["function"]
    bound = _bound(layer, args, kwargs)
    if bound is None:
        return None
    tensors = [v for v in bound.values() if is_graph_tensor(v)]
    constants = {name: v for name, v in bound.items() if not is_graph_tensor(v) and name != "name"}
    if not all(t.dtype.is_floating for t in tensors):  # Keras layers compute in float: integer maths stays TF's
        return None
    k = keras()
    make: Callable[..., Any] = lambda cls, **config: getattr(k.layers, cls)(name=layer.name, **config)  # noqa: E731
    output_rank = len(node.outputs.shape)
    if function in MERGES and len(tensors) == 2 and all(len(t.shape) == output_rank for t in tensors):
        return make(MERGES[function]), tensors
    if function in MERGES and len(tensors) == 1:
        return _scalar_arithmetic(function, bound, tensors[0], make)
    if function == "math.truediv" and len(tensors) == 1 and is_graph_tensor(next(iter(bound.values()))):
        divisor = _scalar(list(bound.values())[1])
        return (make("Rescaling", scale=1.0 / divisor), tensors[0]) if divisor else None
    if len(tensors) != 1 and function != "concat":
        return None
    if function == "concat":
        values = next(iter(bound.values()))
        if not isinstance(values, list | tuple) or not all(is_graph_tensor(v) for v in values):
            return None
        return make("Concatenate", axis=int(constants.get("axis", -1))), list(values)
    x = tensors[0]
    if function == "nn.relu":
        return make("ReLU"), x
    if function == "nn.relu6":
        return make("ReLU", max_value=6.0), x
    if function == "nn.leaky_relu":
        return make("LeakyReLU", alpha=float(constants.get("alpha", 0.2))), x
    if function in ACTIVATIONS and len(constants) == 0:
        return make("Activation", activation=ACTIVATIONS[function]), x
    if function == "nn.softmax":
        axis = constants.get("axis")
        return make("Softmax", axis=-1 if axis is None else int(axis)), x
    if function in ("math.reduce_mean", "math.reduce_max"):
        return _global_pooling(function, x, constants, make)
    if function == "reshape":
        shape = constants.get("shape")
        if (
            isinstance(shape, list | tuple)
            and shape
            and shape[0] in (-1, None)
            and all(isinstance(d, int) for d in shape[1:])
        ):
            return make("Reshape", target_shape=tuple(shape[1:])), x
    if function in ("transpose", "compat.v1.transpose"):
        perm = constants.get("perm")
        if isinstance(perm, list | tuple) and perm and perm[0] == 0 and not constants.get("conjugate"):
            return make("Permute", dims=tuple(int(d) for d in perm[1:])), x
    return None


def _scalar_arithmetic(function: str, bound: dict[str, Any], x: Any, make: Callable[..., Any]) -> Any:
    """``x + c``, ``x - c``, ``c - x``, ``x * c`` as one Rescaling (``x * scale + offset``)."""
    first, second = list(bound.values())[:2]
    constant = _scalar(second if is_graph_tensor(first) else first)
    if constant is None or function in ("math.maximum", "math.minimum"):
        return None
    if function == "math.multiply":
        return make("Rescaling", scale=constant), x
    if function in ("__operators__.add", "math.add"):
        return make("Rescaling", scale=1.0, offset=constant), x
    if is_graph_tensor(first):  # x - c
        return make("Rescaling", scale=1.0, offset=-constant), x
    return make("Rescaling", scale=-1.0, offset=constant), x  # c - x


def _global_pooling(function: str, x: Any, constants: dict[str, Any], make: Callable[..., Any]) -> Any:
    """``tf.reduce_mean/max`` over every axis between batch and channels: global pooling."""
    axis = constants.get("axis")
    axes = (
        sorted(int(a) % len(x.shape) for a in (axis if isinstance(axis, list | tuple) else [axis]))
        if axis is not None
        else None
    )
    spatial = list(range(1, len(x.shape) - 1))
    if axes != spatial or len(spatial) not in (1, 2):
        return None
    kind = ("GlobalAveragePooling" if function == "math.reduce_mean" else "GlobalMaxPooling") + f"{len(spatial)}D"
    return make(kind, keepdims=bool(constants.get("keepdims", False))), x


def _bound(layer: Any, args: Any, kwargs: Any) -> dict[str, Any] | None:
    """The call's arguments by parameter name, or None when the function's signature cannot be read."""
    try:
        bound = inspect.signature(layer.function).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


def _scalar(value: Any) -> float | None:
    """A Python or NumPy number as a float; None for anything else (a tensor, an array of several values)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not is_graph_tensor(value) and hasattr(value, "numpy"):  # a constant Keras kept as an eager tensor (1.0 - x)
        value = np.asarray(value)
    if isinstance(value, np.ndarray | np.generic) and np.size(value) == 1:
        return float(np.asarray(value).reshape(()))
    return None
