"""1-D layers as their 2-D equivalents on a height-1 image, so that quantization-aware training can take them.

TF-MOT 0.8.1's QAT has no Conv1D or Conv1DTranspose, no MaxPooling1D or UpSampling1D and no BatchNormalization
after a Conv1D (its registry lists them commented out), so every sensor or audio model built from Conv1D blocks
was refused.
TFLite has no 1-D convolution either: the converter turns each Conv1D into EXPAND_DIMS -> CONV_2D -> SQUEEZE.
``lift_1d`` does that once, in Keras, for a whole chain: a sequence ``(steps, channels)`` becomes
``(1, steps, channels)`` where the chain starts, each 1-D layer its 2-D twin with a kernel of height 1 (the same
weights, reshaped), and the tensor goes back to ``(steps, channels)`` only where a layer that needs a sequence
reads it. Conv2D -> BatchNormalization -> ReLU is then what TF-MOT folds and quantizes. The qat stage lifts
its own copy; the rewrite is checked numerically like the others (``rewrite.check_same``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepipe.keras_compat import keras, tf
from edgepipe.optimization.rewrite import check_same, fresh_inputs, graph_calls

# Layers that act on the last axis or element by element: the same layer works on the lifted tensor.
SAME_ON_4D = frozenset(
    {
        "BatchNormalization", "ReLU", "Activation", "LeakyReLU", "ELU", "Softmax", "Dropout", "GaussianNoise",
        "GaussianDropout", "Dense", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
    }
)  # fmt: skip
ONE_D = frozenset(
    {
        "Conv1D", "DepthwiseConv1D", "SeparableConv1D", "Conv1DTranspose", "MaxPooling1D", "AveragePooling1D",
        "GlobalAveragePooling1D", "GlobalMaxPooling1D", "UpSampling1D", "ZeroPadding1D", "Cropping1D",
        "SpatialDropout1D",
    }
)  # fmt: skip


# The 1-D layers TF-MOT 0.8.1's QAT registry lacks (it has the 1-D average pooling, padding and cropping): a model
# is lifted only when it has one of these, and then every 1-D layer of the chain is lifted with them. TF-MOT takes
# a SeparableConv1D through a rewrite of its own, into layers it names depthwise_conv2d_N and conv2d_N; lifted, it
# is a SeparableConv2D that the qat stage splits into layers named after it.
UNSUPPORTED_BY_QAT = frozenset(
    {"Conv1D", "DepthwiseConv1D", "SeparableConv1D", "Conv1DTranspose", "MaxPooling1D", "UpSampling1D"}
)


def needs_lift(model: Any) -> bool:
    return any(type(layer).__name__ in UNSUPPORTED_BY_QAT for layer in model.layers)


def lift_1d(model: Any, sample: Any) -> tuple[Any, list[str]]:
    """``model`` with its 1-D layers as 2-D ones on height-1 tensors; and the names of the lifted layers."""
    if not needs_lift(model):
        return model, []
    k, t = keras(), tf()
    inputs, tensors = fresh_inputs(model)
    lifted: set[int] = set()  # ids of new tensors that are (batch, 1, steps, channels) stand-ins for sequences
    copies: list[tuple[Any, Any, Any]] = []  # (original, new layer, how to convert its weights)
    names: list[str] = []

    made: dict[tuple[str, int], Any] = {}  # one Reshape per tensor and direction, however many layers read it

    def sequence(x: Any) -> Any:  # a lifted tensor back to (batch, steps, channels)
        if id(x) not in lifted:
            return x
        if ("1d", id(x)) not in made:
            name = _unique(model, f"{x.name.split('/')[0]}_to_1d", made)
            made["1d", id(x)] = k.layers.Reshape(_free(x.shape[2:]), name=name)(x)
        return made["1d", id(x)]

    def image(x: Any) -> Any:  # a sequence as a height-1 image
        if id(x) in lifted:
            return x
        if ("2d", id(x)) not in made:
            name = _unique(model, f"{x.name.split('/')[0]}_to_2d", made)
            made["2d", id(x)] = k.layers.Reshape(_free((1, *x.shape[1:])), name=name)(x)
            lifted.add(id(made["2d", id(x)]))
        return made["2d", id(x)]

    for node, layer, args, kwargs in graph_calls(model, tensors):
        given = [x for x in t.nest.flatten(args) if k.backend.is_keras_tensor(x)]
        kind = type(layer).__name__
        twin = _twin_2d(layer) if kind in ONE_D and all(len(x.shape) in (3, 4) for x in given) else None
        if twin is not None:
            source = image(given[0])
            if layer.get_config().get("padding") == "causal":  # pad the past only, then a valid conv
                past = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
                source = k.layers.ZeroPadding2D(((0, 0), (past, 0)), name=f"{layer.name}_causal_pad")(source)
                lifted.add(id(source))
            produced = twin(source)
            if len(produced.shape) == 4:
                lifted.add(id(produced))
            copies.append((layer, twin, _kernel_2d))
            names.append(layer.name)
        elif given and all(id(x) in lifted for x in given) and kind in (*SAME_ON_4D, "Concatenate", "Flatten"):
            produced = _call_copy(layer, copies, args, kwargs, lifted=True)
            if kind != "Flatten":  # Flatten of (1, steps, channels): the same order as of the sequence
                lifted.add(id(produced))
        else:
            args, kwargs = t.nest.map_structure(sequence, (args, kwargs))
            produced = _call_copy(layer, copies, args, kwargs)
        for old, new in zip(t.nest.flatten(node.outputs), t.nest.flatten(produced), strict=True):
            tensors[id(old)] = new  # every output: an LSTM with return_state gives three
    outputs = [sequence(tensors[id(x)]) for x in model.outputs]
    rebuilt = k.Model(inputs, outputs, name=model.name)
    for original, new, convert in copies:
        new.set_weights(convert(original.get_weights()))
    check_same(model, rebuilt, sample, "lifting 1-D layers to 2-D", "use a ptq stage for this model")
    return rebuilt, names


def _call_copy(
    layer: Any, copies: list[tuple[Any, Any, Any]], args: Any, kwargs: dict[str, Any], lifted: bool = False
) -> Any:
    """A copy of ``layer`` (the same config; its weights are set once the model is built) called on ``args``.
    On lifted tensors an axis counted from the front (a BatchNormalization's ``[2]``) moves one place on."""
    config = layer.get_config()
    if lifted and "axis" in config:
        config["axis"] = _shifted(config["axis"])
    twin = layer.__class__.from_config(config)
    copies.append((layer, twin, lambda weights: weights))
    return twin(*args, **kwargs)


def _free(shape: Any) -> tuple[int, ...]:
    """A Reshape target: a sequence of any length (``None`` steps) is Keras' -1."""
    return tuple(-1 if d is None else int(d) for d in shape)


def _shifted(axis: Any) -> Any:
    if isinstance(axis, list | tuple):
        return [_shifted(a) for a in axis]
    return axis + 1 if isinstance(axis, int) and axis > 0 else axis


def _kernel_2d(weights: list[np.ndarray]) -> list[np.ndarray]:
    """A 1-D kernel ``(k, in, out)`` as a 2-D one ``(1, k, in, out)`` (a transposed one's ``(k, out, in)`` likewise);
    biases and other weights as they are."""
    return [w[None, ...] if w.ndim == 3 else w for w in weights]


def _unique(model: Any, name: str, made: dict[tuple[str, int], Any]) -> str:
    taken = {layer.name for layer in model.layers} | {x.name.split("/")[0] for x in made.values()}
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def _twin_2d(layer: Any) -> Any | None:
    """The 2-D layer computing ``layer`` on a height-1 image, with its name; None where there is none."""
    k, c = keras(), layer.get_config()
    kind, name = type(layer).__name__, layer.name
    if kind in ("Conv1D", "DepthwiseConv1D"):
        if c.get("data_format", "channels_last") != "channels_last":
            return None
        padding = "valid" if c["padding"] == "causal" else c["padding"]  # the caller pads a causal one
        common = dict(
            kernel_size=(1, c["kernel_size"][0]), strides=(1, c["strides"][0]), padding=padding,
            dilation_rate=(1, c["dilation_rate"][0]), activation=c["activation"], use_bias=c["use_bias"],
            bias_initializer=c["bias_initializer"], name=name,
        )  # fmt: skip
        if kind == "Conv1D":
            groups = c.get("groups", 1)  # a grouped kernel (k, in / g, out) lifts as any other
            return k.layers.Conv2D(c["filters"], kernel_initializer=c["kernel_initializer"], groups=groups, **common)
        return k.layers.DepthwiseConv2D(
            depth_multiplier=c["depth_multiplier"], depthwise_initializer=c["depthwise_initializer"], **common
        )
    if kind == "SeparableConv1D":  # depthwise (k, in, m) -> (1, k, in, m); pointwise (1, in * m, out) -> (1, 1, ...)
        if c.get("data_format", "channels_last") != "channels_last":
            return None
        padding = "valid" if c["padding"] == "causal" else c["padding"]  # the caller pads a causal one
        return k.layers.SeparableConv2D(
            c["filters"], (1, c["kernel_size"][0]), strides=(1, c["strides"][0]), padding=padding,
            dilation_rate=(1, c["dilation_rate"][0]), depth_multiplier=c["depth_multiplier"],
            activation=c["activation"], use_bias=c["use_bias"], depthwise_initializer=c["depthwise_initializer"],
            pointwise_initializer=c["pointwise_initializer"], bias_initializer=c["bias_initializer"], name=name,
        )  # fmt: skip
    if kind == "Conv1DTranspose":  # kernel (k, out, in) -> (1, k, out, in), as Conv2DTranspose holds it
        if c.get("data_format", "channels_last") != "channels_last":
            return None
        output_padding = c.get("output_padding")
        return k.layers.Conv2DTranspose(
            c["filters"], (1, c["kernel_size"][0]), strides=(1, c["strides"][0]), padding=c["padding"],
            output_padding=None if output_padding is None else (0, output_padding[0]),
            dilation_rate=(1, c["dilation_rate"][0]), activation=c["activation"], use_bias=c["use_bias"],
            kernel_initializer=c["kernel_initializer"], bias_initializer=c["bias_initializer"], name=name,
        )  # fmt: skip
    if kind in ("MaxPooling1D", "AveragePooling1D"):
        if c.get("data_format", "channels_last") != "channels_last":
            return None
        cls = k.layers.MaxPooling2D if kind == "MaxPooling1D" else k.layers.AveragePooling2D
        return cls((1, c["pool_size"][0]), strides=(1, c["strides"][0]), padding=c["padding"], name=name)
    if kind in ("GlobalAveragePooling1D", "GlobalMaxPooling1D"):
        if c.get("data_format", "channels_last") != "channels_last":
            return None
        cls = k.layers.GlobalAveragePooling2D if kind == "GlobalAveragePooling1D" else k.layers.GlobalMaxPooling2D
        return cls(keepdims=c.get("keepdims", False), name=name) if not c.get("keepdims") else None
    if kind == "UpSampling1D":
        return k.layers.UpSampling2D((1, c["size"]), name=name)
    if kind == "ZeroPadding1D":
        return k.layers.ZeroPadding2D(((0, 0), tuple(c["padding"])), name=name)
    if kind == "Cropping1D":
        return k.layers.Cropping2D(((0, 0), tuple(c["cropping"])), name=name)
    if kind == "SpatialDropout1D":
        return k.layers.SpatialDropout2D(c["rate"], name=name)
    return None
