"""Exact rewrites of the float model before any stage: layers TF-MOT handles better in another, equal form.

``split_separable_conv``: a SeparableConv2D is a DepthwiseConv2D (with the strides and dilation) followed by a
1x1 Conv2D (with the bias and activation). TF-MOT's QAT makes the same split inside ``quantize_apply``, but
only for QAT; splitting up front lets pruning and clustering treat the depthwise and the pointwise kernels as
the separate layers they become on the board, and later stages see layers with their own names
(``NAME_dw`` and ``NAME``). The rewrite is checked numerically: the split model must give the same outputs.

``inline_nested_models``: a model used as one layer of another (the transfer-learning shape,
``Sequential([MobileNetV2(include_top=False), Dense(10)])``) is opaque to TF-MOT, whose wrappers take layers,
not models (QAT refuses it, pruning skips it), and to channel pruning's dependency graph. Its layers are
called, as copies with the same weights, on the outer model's tensors instead: one flat model, the same
function (checked numerically like the split).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from edgepipe.errors import ModelError
from edgepipe.keras_compat import keras, tf

TOLERANCE = 1e-4


def split_separable_conv(model: Any, sample: np.ndarray) -> tuple[Any, list[str]]:
    """The model with every SeparableConv2D split in two, and a line per split layer for the result."""
    separable = [layer for layer in model.layers if type(layer).__name__ == "SeparableConv2D"]
    if not separable:
        return model, []
    k = keras()
    config = copy.deepcopy(model.get_config())
    rewritten = []
    for entry in config["layers"]:
        if entry["class_name"] != "SeparableConv2D":
            rewritten.append(entry)
            continue
        depthwise, pointwise = _split_config(entry)
        rewritten.extend([depthwise, pointwise])
    config["layers"] = rewritten
    split = (k.Sequential if isinstance(model, k.Sequential) else k.Model).from_config(config)
    for layer in model.layers:
        if type(layer).__name__ == "SeparableConv2D":
            weights = layer.get_weights()
            split.get_layer(f"{layer.name}_dw").set_weights([weights[0]])
            split.get_layer(layer.name).set_weights(weights[1:])
        elif layer.weights:
            split.get_layer(layer.name).set_weights(layer.get_weights())
    check_same(model, split, sample, "splitting SeparableConv2D", "leave model.split_separable_conv off for this model")
    return split, [
        f"{layer.name} -> {layer.name}_dw (DepthwiseConv2D) + {layer.name} (Conv2D 1x1)" for layer in separable
    ]


def _split_config(entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Layer configs of the depthwise and pointwise halves; the pointwise half keeps the name (and so the
    references of the layers after it), the depthwise half takes the original inputs."""
    config = entry["config"]
    name = config["name"]
    depthwise = {
        "class_name": "DepthwiseConv2D",
        "config": {
            "name": f"{name}_dw",
            "trainable": config.get("trainable", True),
            "dtype": config.get("dtype", "float32"),
            "kernel_size": config["kernel_size"],
            "strides": config["strides"],
            "padding": config["padding"],
            "data_format": config.get("data_format"),
            "dilation_rate": config["dilation_rate"],
            "depth_multiplier": config["depth_multiplier"],
            "activation": "linear",
            "use_bias": False,
            "depthwise_initializer": config["depthwise_initializer"],
            "depthwise_regularizer": config.get("depthwise_regularizer"),
            "depthwise_constraint": config.get("depthwise_constraint"),
        },
        "name": f"{name}_dw",
    }
    pointwise = {
        "class_name": "Conv2D",
        "config": {
            "name": name,
            "trainable": config.get("trainable", True),
            "dtype": config.get("dtype", "float32"),
            "filters": config["filters"],
            "kernel_size": [1, 1],
            "strides": [1, 1],
            "padding": "valid",
            "data_format": config.get("data_format"),
            "activation": config["activation"],
            "use_bias": config["use_bias"],
            "kernel_initializer": config["pointwise_initializer"],
            "bias_initializer": config["bias_initializer"],
            "kernel_regularizer": config.get("pointwise_regularizer"),
            "bias_regularizer": config.get("bias_regularizer"),
            "activity_regularizer": config.get("activity_regularizer"),
            "kernel_constraint": config.get("pointwise_constraint"),
            "bias_constraint": config.get("bias_constraint"),
        },
        "name": name,
    }
    if "inbound_nodes" in entry:  # Functional: the depthwise half reads the original inputs
        depthwise["inbound_nodes"] = entry["inbound_nodes"]
        pointwise["inbound_nodes"] = [[[f"{name}_dw", 0, 0, {}]]]
    return depthwise, pointwise


def inline_nested_models(model: Any, sample: Any) -> tuple[Any, list[str]]:
    """The model with every nested model's layers in its own graph, and a line per inlined model."""
    k = keras()
    if not any(isinstance(layer, k.Model) for layer in model.layers):
        return model, []
    inputs = [
        k.Input(batch_shape=t.shape, dtype=t.dtype, name=name)
        for t, name in zip(model.inputs, model.input_names, strict=True)
    ]
    tensors = {id(old): new for old, new in zip(model.inputs, inputs, strict=True)}
    names = {layer.name for layer in model.layers}
    twins: dict[int, tuple[Any, Any]] = {}  # id(layer) -> (layer, its copy): a shared layer stays shared
    inlined: list[str] = []
    _replay(model, None, tensors, names, twins, inlined)
    flat = k.Model(inputs, [tensors[id(t)] for t in model.outputs], name=model.name)
    for original, twin in twins.values():
        twin.set_weights(original.get_weights())
    check_same(model, flat, sample, "inlining nested models", "build the model without nesting models in it")
    return flat, inlined


def _replay(
    model: Any, nested: str | None, tensors: dict[int, Any], names: set[str], twins: dict, inlined: list[str]
) -> None:
    """Call a copy of each layer of ``model``'s graph, in order, on the tensors that ``tensors`` maps its inputs
    to; a nested model's graph is replayed the same way, its inputs mapped to what it was called on. Layers of
    a nested model keep their names unless the outer model has the name already (then ``MODEL_NAME``)."""
    k, t = keras(), tf()
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            if isinstance(layer, k.layers.InputLayer):
                continue
            args, kwargs = t.nest.map_structure(lambda x: tensors.get(id(x), x), (node.call_args, node.call_kwargs))
            if isinstance(layer, k.Model):
                given = [x for x in t.nest.flatten((args, kwargs)) if k.backend.is_keras_tensor(x)]
                for inner, outer in zip(layer.inputs, given, strict=True):
                    tensors[id(inner)] = outer
                _replay(layer, layer.name, tensors, names, twins, inlined)
                for inner, outer in zip(layer.outputs, t.nest.flatten(node.outputs), strict=True):
                    tensors[id(outer)] = tensors[id(inner)]
                line = f"{layer.name} ({len(layer.layers)} layers) inlined into {model.name}"
                inlined.extend([] if line in inlined else [line])
                continue
            if id(layer) not in twins:  # a layer called twice (shared weights) is copied once and called twice
                config = layer.get_config()
                if nested is not None and config["name"] in names:
                    config["name"] = f"{nested}_{config['name']}"
                names.add(config["name"])
                twins[id(layer)] = (layer, layer.__class__.from_config(config))
            produced = twins[id(layer)][1](*args, **kwargs)
            for old, new in zip(t.nest.flatten(node.outputs), t.nest.flatten(produced), strict=True):
                tensors[id(old)] = new


def check_same(model: Any, rewritten: Any, sample: Any, what: str, hint: str) -> None:
    """The rewritten model gives the same outputs on ``sample`` (to ``TOLERANCE``), or a ModelError."""
    want = [np.asarray(o) for o in _as_list(model(sample, training=False))]
    got = [np.asarray(o) for o in _as_list(rewritten(sample, training=False))]
    if [a.shape for a in want] != [b.shape for b in got]:
        raise ModelError(f"{what} changed the shapes of the model's outputs", hint=hint)
    worst = max((float(np.max(np.abs(a - b))) for a, b in zip(want, got, strict=True) if a.size), default=0.0)
    if worst > TOLERANCE:
        raise ModelError(f"{what} changed the model's outputs (largest difference {worst:g})", hint=hint)


def _as_list(outputs: Any) -> list[Any]:
    return list(outputs) if isinstance(outputs, list | tuple) else [outputs]
