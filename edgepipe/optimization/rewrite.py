"""Exact rewrites of the float model before any stage: layers TF-MOT handles better in another, equal form.

``split_separable_conv``: a SeparableConv2D is a DepthwiseConv2D (with the strides and dilation) followed by a
1x1 Conv2D (with the bias and activation). TF-MOT's QAT makes the same split inside ``quantize_apply``, but
only for QAT; splitting up front lets pruning and clustering treat the depthwise and the pointwise kernels as
the separate layers they become on the board, and later stages see layers with their own names
(``NAME_dw`` and ``NAME``). The rewrite is checked numerically: the split model must give the same outputs.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from edgepipe.errors import ModelError
from edgepipe.keras_compat import keras

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
    want, got = np.asarray(model(sample, training=False)), np.asarray(split(sample, training=False))
    worst = float(np.max(np.abs(want - got))) if want.size else 0.0
    if want.shape != got.shape or worst > TOLERANCE:
        raise ModelError(
            f"splitting SeparableConv2D changed the model's outputs (largest difference {worst:g})",
            hint="leave model.split_separable_conv off for this model",
        )
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
