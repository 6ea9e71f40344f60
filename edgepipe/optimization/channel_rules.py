"""What each kind of layer does to the channels it reads, for channel pruning's dependency graph
(``channels.analyze``): which layers pass a channel group through, which merge groups, which are sliced with
them, and why one stops a group when its class alone does not say."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepipe.custom_objects import is_users_layer

PASSTHROUGH = (
    "BatchNormalization", "ReLU", "Activation", "LeakyReLU", "PReLU", "ELU", "Dropout", "SpatialDropout2D",
    "MaxPooling2D", "AveragePooling2D", "ZeroPadding2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
    "GaussianNoise", "GaussianDropout", "UpSampling2D", "Cropping2D",
    # the same on sequences (sensor and audio models): channels are still the last axis
    "MaxPooling1D", "AveragePooling1D", "GlobalAveragePooling1D", "GlobalMaxPooling1D", "ZeroPadding1D",
    "UpSampling1D", "Cropping1D", "SpatialDropout1D",
    "Rescaling",  # with one scale and offset for every channel (arithmetic with a constant): see _per_channel
    "HardSwish", "HardSigmoid",  # edgepipe's own (hard_activations): a Keras 3 Activation("hard_swish") rebuilt
)  # fmt: skip
CONVOLUTIONS = ("Conv2D", "Conv1D")  # kernels (..., in, out): sliced on the last two axes
TRANSPOSED = ("Conv2DTranspose", "Conv1DTranspose")  # kernels (..., out, in): the decoders of U-Nets, autoencoders
# A depthwise kernel (..., in, multiplier) then a pointwise one (1, ..., in * multiplier, out): Xception, NASNet
SEPARABLE = ("SeparableConv2D", "SeparableConv1D")
FILTERS = (*CONVOLUTIONS, *TRANSPOSED, *SEPARABLE)  # the layers with ``filters``: each opens a channel group
MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
# TensorFlow functions (TFOpLambda layers) that act on each element alone: with every argument but the tensor a
# scalar, channel c of the output depends on channel c of the input only.
ELEMENTWISE = frozenset({
    "__operators__.add", "math.add", "math.subtract", "math.multiply", "math.truediv", "math.divide",
    "math.maximum", "math.minimum", "clip_by_value", "nn.relu", "nn.relu6", "nn.elu", "nn.leaky_relu", "nn.silu",
    "nn.swish", "nn.gelu", "math.sigmoid", "math.tanh", "math.abs", "math.square",
})  # fmt: skip


def kernel_axes(layer: Any) -> tuple[int, int]:
    """The axes of a convolution's or Dense's kernel that hold its input and its output channels."""
    return (-1, -2) if type(layer).__name__ in TRANSPOSED else (-2, -1)


def output_kernel(layer: Any) -> np.ndarray:
    """The kernel that makes a producer's output channels, with them on its last axis: a separable
    convolution's pointwise kernel, any other layer's only kernel."""
    weights = layer.get_weights()
    if type(layer).__name__ in SEPARABLE:
        return weights[1]
    return np.moveaxis(weights[0], kernel_axes(layer)[1], -1)


def separable_sliced(weights: list[np.ndarray], out: np.ndarray | None, inputs: np.ndarray | None) -> list[np.ndarray]:
    """A separable convolution's weights cut to the kept input and output channels. Input channel ``c`` is the
    depthwise kernel's ``c`` and, for a depth multiplier ``m``, the pointwise kernel's rows ``c * m .. c * m + m - 1``
    (the order in which the depthwise step lays out its outputs)."""
    depthwise, pointwise, rest = weights[0], weights[1], weights[2:]
    if inputs is not None:
        multiplier = depthwise.shape[-1]
        rows = (inputs[:, None] * multiplier + np.arange(multiplier)[None, :]).reshape(-1)
        depthwise, pointwise = np.take(depthwise, inputs, axis=-2), np.take(pointwise, rows, axis=-2)
    if out is not None:
        pointwise, rest = np.take(pointwise, out, axis=-1), [np.take(w, out, axis=-1) for w in rest]
    return [depthwise, pointwise, *rest]


def on_channels(layer: Any) -> bool:
    return layer.axis in (-1, len(layer.output_shape) - 1)


def sliced_along(layer: Any) -> bool:
    """A DepthwiseConv2D with depth multiplier 1, or a Reshape that keeps the channels as its last axis
    (``(C,)`` -> ``(1, 1, C)`` in a squeeze-excitation block, ``(H, W, C)`` -> ``(H * W, C)`` before a
    transformer): either keeps its input's channels and is cut with them. In row-major order a value's position
    is ``rest * C + c`` on both sides of such a Reshape, so channel c stays channel c."""
    kind = type(layer).__name__
    if kind == "DepthwiseConv2D":
        return bool(layer.depth_multiplier == 1)
    if kind != "Reshape":
        return False
    before, after = tuple(layer.input_shape[1:]), tuple(layer.output_shape[1:])
    return bool(before) and bool(after) and before[-1] is not None and before[-1] == after[-1]


def per_channel(layer: Any) -> bool:
    """A Rescaling with a scale or offset per channel: slicing the channels would have to slice those too."""
    if type(layer).__name__ != "Rescaling":
        return False
    return bool(np.size(layer.scale) != 1 or np.size(layer.offset) != 1)


def same_channels(layer: Any) -> bool:
    """Every input of a merge has the same number of channels (broadcasting over space is fine, over channels
    it is not: a one-channel tensor times a 16-channel one cannot share their channels)."""
    shapes = layer.input_shape if isinstance(layer.input_shape, list) else [layer.input_shape]
    return len({shape[-1] for shape in shapes}) == 1


def elementwise(layer: Any, tensors: int) -> bool:
    """A TFOpLambda applying an ``ELEMENTWISE`` function to ``tensors`` tensors, every other argument a scalar."""
    if layer.get_config().get("function") not in ELEMENTWISE:
        return False
    node = layer.inbound_nodes[0]
    arguments = [*node.call_args, *(v for key, v in node.call_kwargs.items() if key != "name")]
    scalars = [a for a in arguments if isinstance(a, int | float | np.number) or getattr(a, "shape", None) == ()]
    return len(arguments) - len(scalars) == tensors


def kind_and_why(layer: Any) -> str:
    """A layer's class, and what about it channel pruning cannot follow when the class alone does not say."""
    kind = type(layer).__name__
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return f"{kind}, channels_first: it reads axis 1 as the channels and works on the last axis"
    if kind in FILTERS and getattr(layer, "groups", 1) != 1:
        return f"{kind}, grouped (groups={layer.groups}), reading a Concatenate: its groups would straddle the parts"
    if kind in MERGES and not same_channels(layer):
        counts = " and ".join(str(shape[-1]) for shape in layer.input_shape)
        return f"{kind} of {counts} channels: broadcasts the narrower input across the other's channels"
    if kind in MERGES:  # the same channels in, one of them from something channel pruning does not follow
        return (
            f"{kind} with an input channel pruning does not follow (a model input or a layer left whole): every "
            "input of a merge keeps equal channels"
        )
    if is_users_layer(layer):
        return f"{kind}: a layer class of your own, whose use of the channels cannot be read"
    if kind == "Concatenate":
        where = "the channels" if on_channels(layer) else f"axis {layer.axis}"
        return (
            f"{kind} on {where} with an input channel pruning does not follow (a model input, a flattened "
            "tensor or a layer left whole)" + ("" if on_channels(layer) else ": every input keeps equal channels")
        )
    if kind == "TFOpLambda":
        return (
            f"{kind} {layer.get_config().get('function')}: a TensorFlow function not known to act on each "
            "channel alone (or given a tensor argument)"
        )
    if kind in ("Reshape", "Permute"):
        before, after = tuple(layer.input_shape[1:]), tuple(layer.output_shape[1:])
        return f"{kind} {before} -> {after}: moves the channels into other axes"
    if kind == "Softmax" or (kind == "Activation" and layer.get_config().get("activation") == "softmax"):
        axis = getattr(layer, "axis", -1)
        if axis in (-1, len(layer.input_shape) - 1, [-1]):
            return f"{kind}: normalizes across the channels, so removing one changes the others"
        return f"{kind} over axis {axis}: turns a removed (all-zero) channel into a constant the next layer reads"
    if kind == "DepthwiseConv2D" and getattr(layer, "depth_multiplier", 1) != 1:
        return (
            f"{kind}, depth_multiplier={layer.depth_multiplier}: each input channel makes {layer.depth_multiplier} "
            "outputs, which the next layer reads as channels of their own"
        )
    if kind == "LayerNormalization":
        return f"{kind}: its mean and variance span the channels, so removing one changes the others"
    if kind == "Lambda":
        return f"{kind}: Python code that does not act on each channel alone (tried on random inputs)"
    return kind


def acts_per_channel(layer: Any) -> bool:
    """A Lambda (Python code, ``t[:, -1, :]`` taking a sequence's last step, say) that acts on each channel of
    one input alone, found by running it on random inputs, since its code cannot be read: it keeps the channels
    on the last axis, permuting them permutes its output alike, and the kept half computed alone equals the
    same channels computed with the others zeroed, which stay zero (what removing channels whose weights are
    zero must keep: ``2 * t - 1`` acts per channel but turns a removed channel into -1 for the next layer)."""
    shape = layer.input_shape
    if isinstance(shape, list) or len(shape) < 2 or not shape[-1] or shape[-1] < 2:
        return False
    if layer.get_config().get("output_shape") is not None:  # a fixed output shape would not shrink with it
        return False
    channels = int(shape[-1])
    rng = np.random.default_rng(0)
    x = rng.normal(size=[2, *(5 if d is None else int(d) for d in shape[1:])]).astype(np.float32)
    order, kept = rng.permutation(channels), np.sort(rng.choice(channels, channels // 2, replace=False))
    zeroed = np.zeros_like(x)
    zeroed[..., kept] = x[..., kept]
    try:
        out = np.asarray(layer(x))
        if out.ndim < 2 or out.shape[0] != 2 or out.shape[-1] != channels:
            return False
        alone, with_zeros = np.asarray(layer(x[..., kept])), np.asarray(layer(zeroed))
        removed = np.setdiff1d(np.arange(channels), kept)
        return bool(
            np.allclose(np.asarray(layer(x[..., order])), out[..., order], atol=1e-5)
            and alone.shape[-1] == len(kept)
            and np.allclose(alone, with_zeros[..., kept], atol=1e-5)
            and not np.any(with_zeros[..., removed])
        )
    except Exception:  # the code does not take other shapes: it cannot run on fewer channels either
        return False


def simple(layer: Any) -> bool:
    """A convolution edgepipe knows how to slice: channels last, and grouped only if a plain Conv2D or Conv1D."""
    kind = type(layer).__name__
    if kind in FILTERS:
        return layer.data_format == "channels_last" and (kind in CONVOLUTIONS or getattr(layer, "groups", 1) == 1)
    return True


def grouped_sliced(kernel: np.ndarray, groups: int, out: np.ndarray | None, inputs: np.ndarray | None) -> np.ndarray:
    """A grouped convolution's kernel ``(..., in / groups, out)`` cut to the kept channels. Output channel ``o``
    belongs to group ``o // (out / groups)`` and reads that group's inputs only, at the kernel's rows
    ``0 .. in / groups - 1``. The kept inputs come in equal numbers from every group (the plan keeps them so), so
    each kept output takes the rows of its own group's kept inputs."""
    rows_per_group, outputs = kernel.shape[-2], kernel.shape[-1]
    kept_out = np.arange(outputs) if out is None else out
    if inputs is None:
        rows = np.tile(np.arange(rows_per_group), (groups, 1))
    else:
        rows = inputs.reshape(groups, -1) - (np.arange(groups) * rows_per_group)[:, None]
    group_of = kept_out // (outputs // groups)
    return np.stack([kernel[..., rows[group_of[n]], o] for n, o in enumerate(kept_out)], axis=-1)
