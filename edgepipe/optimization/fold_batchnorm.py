"""BatchNormalization folded into the transposed or separable convolution before it, for QAT.

TF-MOT's QAT folds a BatchNormalization into a Conv2D, DepthwiseConv2D or Dense before it, but not into a
Conv2DTranspose (a U-Net's or an autoencoder's decoder) or a SeparableConv2D (Xception, Keras' segmentation
example): those stay two layers, each quantized at its output, and the int8 model keeps a MUL and an ADD per
BatchNorm that the float model's converter folds away (Keras' Oxford-pets U-Net at 8x8: 6 MULs and 6 ADDs more
than its float model). In inference mode a BatchNorm is ``x * s + (beta - mean * s)`` per channel with
``s = gamma / sqrt(variance + epsilon)``, so the convolution's kernel scaled by ``s`` on its output channels
and its bias mapped the same way compute both: the qat stage folds them on its own copy, checked numerically,
and the fine-tune trains the folded convolution. Plain QAT only: a scale per output channel breaks the shared
values that CQAT and PCQAT preserve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgepipe.optimization import rewrite

# Convolutions TF-MOT's QAT does not fold a BatchNorm into, and the axis of each weight that holds the output
# channels (every other weight is copied unchanged).
FOLDED_INTO = {
    "Conv2DTranspose": {"kernel": -2, "bias": -1},
    "Conv1DTranspose": {"kernel": -2, "bias": -1},
    "SeparableConv2D": {"pointwise_kernel": -1, "bias": -1},
    "SeparableConv1D": {"pointwise_kernel": -1, "bias": -1},
}


def foldable_pairs(model: Any, chosen: Callable[[Any], bool]) -> dict[str, Any]:
    """The BatchNorms (by name) to fold, each with the convolution before it: the convolution is one of
    ``FOLDED_INTO``, linear, called once and read by this BatchNorm alone, which normalizes its last axis; both
    ``chosen`` (in the stage's layers)."""
    pairs = {}
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization" or len(layer.inbound_nodes) != 1 or not chosen(layer):
            continue
        sources = layer.inbound_nodes[0].inbound_layers
        source = sources[0] if isinstance(sources, list) and len(sources) == 1 else sources
        if isinstance(source, list) or type(source).__name__ not in FOLDED_INTO or not chosen(source):
            continue
        axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
        last = axis in (-1, len(layer.input_shape) - 1)
        linear = source.get_config().get("activation") in ("linear", None)
        if last and linear and len(source.inbound_nodes) == 1 and len(source.outbound_nodes) == 1:
            pairs[layer.name] = source
    return pairs


def fold_batchnorm(model: Any, sample: Any, chosen: Callable[[Any], bool]) -> tuple[Any, list[str]]:
    """The model with each BatchNorm of ``foldable_pairs`` folded into its convolution (which keeps its name,
    with a bias), and a line per fold."""
    pairs = foldable_pairs(model, chosen)
    if not pairs:
        return model, []
    norms = {source.name: model.get_layer(name) for name, source in pairs.items()}

    def folded(node: Any, layer: Any, args: Any, kwargs: Any) -> Any:
        if layer.name not in norms:
            return None
        twin = layer.__class__.from_config({**layer.get_config(), "use_bias": True})
        produced = twin(*args, **kwargs)
        twin.set_weights(_folded_weights(layer, twin, norms[layer.name]))
        return produced

    flat, _, _ = rewrite.replayed(model, skip=frozenset(pairs), replace=folded)
    rewrite.check_same(model, flat, sample, "folding BatchNorms into convolutions", "leave the BatchNorm out of QAT")
    return flat, [f"{norm} into {source.name} ({type(source).__name__})" for norm, source in pairs.items()]


def _folded_weights(layer: Any, twin: Any, norm: Any) -> list[np.ndarray]:
    weights = {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in norm.weights}
    mean, variance = weights["moving_mean"], weights["moving_variance"]
    gamma, beta = weights.get("gamma", np.ones_like(mean)), weights.get("beta", np.zeros_like(mean))
    scale = gamma / np.sqrt(variance + norm.epsilon)
    given = {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in layer.weights}
    bias = given.get("bias", np.zeros_like(mean))
    new = {**given, "bias": (bias - mean) * scale + beta}
    axes = FOLDED_INTO[type(layer).__name__]
    kernel = next(name for name in axes if name != "bias")
    new[kernel] = np.moveaxis(np.moveaxis(given[kernel], axes[kernel], -1) * scale, -1, axes[kernel])
    return [new[w.name.split("/")[-1].split(":")[0]] for w in twin.weights]
