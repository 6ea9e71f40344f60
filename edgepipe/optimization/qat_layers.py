"""What quantization-aware training does with each kind of layer: which TF-MOT cannot wrap (left to the
converter), which get their output quantized and nothing else, which read the model's input (left to the
converter too), and which activations TF-MOT's wrappers can fake-quantize."""

from __future__ import annotations

from typing import Any

from edgepipe.keras_compat import keras
from edgepipe.optimization.hard_activations import layers


def activation_breaks_output_quantization(layer: Any, registry: Any) -> bool:
    """A layer left out of QAT that TF-MOT would still wrap, and fail on. ``quantize_apply`` gives a left-out
    layer feeding a quantized one its output quantization with the registry's config (``OutputOnlyConfig``),
    which still wraps the layer's activation: a Conv2D with ``activation="selu"`` left out then fails the
    stage with the error that made the user leave it out. Such a layer gets the config that quantizes its
    output and nothing else, from edgepipe, instead."""
    try:
        return bool(registry.supports(layer) and unsupported_activation(layer, registry.get_quantize_config(layer)))
    except (ValueError, RuntimeError):
        return False


def activation_name(activation: Any) -> str:
    return getattr(activation, "__name__", type(activation).__name__)


# Layers whose ``activation`` TF-MOT wraps in a QuantizeAwareActivation.
ACTIVATED_LAYERS = frozenset({"Conv2D", "DepthwiseConv2D", "Dense", "Conv2DTranspose"})


def known_activations() -> frozenset[str]:
    """The activations TF-MOT's QuantizeAwareActivation fake-quantizes (TF-MOT 0.8.1: linear, relu, swish,
    gelu, softmax, sigmoid, tanh)."""
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_aware_activation import (
        QuantizeAwareActivation as Aware,
    )

    return Aware._PRE_QUANT_ACTIVATIONS | Aware._POST_QUANT_ACTIVATIONS | Aware._NO_QUANTIZE_ACTIVATIONS


def unsupported_activation(layer: Any, config: Any) -> str | None:
    """The name of an activation of ``layer`` that its quantize config cannot quantize, if any."""
    known = known_activations()
    try:
        activations = [activation for activation, _ in config.get_activations_and_quantizers(layer)]
        config.get_output_quantizers(layer)  # an Activation layer's config refuses an unknown one here
    except (ValueError, RuntimeError, AttributeError):
        return activation_name(getattr(layer, "activation", None))
    for activation in activations:
        if activation_name(activation) not in known:
            return activation_name(activation)
    return None


def inbound_layers(layer: Any) -> list[Any]:
    inbound = [node.inbound_layers for node in layer._inbound_nodes]
    return [source for group in inbound for source in (group if isinstance(group, list) else [group])]


def follows_a_foldable_layer(layer: Any) -> bool:
    """A BatchNormalization right after a Conv2D, DepthwiseConv2D or Dense: QAT folds it when it is annotated."""
    if type(layer).__name__ != "BatchNormalization":
        return False
    return any(type(source).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense") for source in inbound_layers(layer))


# Layers that are a fixed per-channel affine map at inference (x * a + b), which TF-MOT's registry lacks (but for
# a BatchNormalization its transforms fold into the Conv2D/DepthwiseConv2D/Dense before it).
AFFINE = ("Rescaling", "Normalization", "BatchNormalization")


def scales_an_input(layer: Any) -> bool:
    """An affine layer that reads a model input (``Rescaling(1/127.5, offset=-1)`` first, as in the Keras
    tutorials and Keras Applications; a ``Normalization`` adapted to the data; a BatchNormalization in front).
    Only the first: the converter gives a tensor between two such layers no range of its own (a Normalization
    after a Rescaling, both left to it: its output in [-0.5, 0.5], 0.87 accuracy instead of 0.96), so the
    second gets its output quantized (``output_quantized_only``).
    Quantized at its output a Rescaling becomes DEQUANTIZE -> QUANTIZE at the int8 input whenever it has an
    offset (measured, TF 2.21): not integer-only. Left out of QAT, the converter quantizes it from the
    calibration data (integer MUL and ADD, or folded into the input's scale and zero point)."""
    return type(layer).__name__ in AFFINE and all(type(s).__name__ == "InputLayer" for s in inbound_layers(layer))


def looks_up_input_ids(layer: Any) -> bool:
    """An Embedding reading an integer model input (token ids): TF-MOT would put a fake-quantizing layer on the
    ids, which fails ("FakeQuantWithMinMaxVars ... int32"), and has no Embedding config besides."""
    if type(layer).__name__ != "Embedding":
        return False
    sources = inbound_layers(layer)
    return bool(sources) and all(type(s).__name__ == "InputLayer" and not s.dtype.startswith("float") for s in sources)


# Layers TF-MOT's QAT cannot take and the converter quantizes well: attention, which TF-MOT has no config for
# and its QuantizeWrapper cannot hold at all (it asks the layer for its output shape from one input shape, and
# attention takes two or three), and recurrent layers (no config: QAT refused every LSTM, and layers.exclude
# was the fix it named). They stay float in the QAT model and the converter quantizes them (BATCH_MATMUL,
# SOFTMAX; one fused sequence LSTM per direction) from the representative data. What each is, for the note.
UNWRAPPABLE = {
    "MultiHeadAttention": "an attention layer",
    "Attention": "an attention layer",
    "AdditiveAttention": "an attention layer",
    "LSTM": "a recurrent layer",
    "GRU": "a recurrent layer",  # unrolled (a looped one is refused before training: convert.tflite)
    "SimpleRNN": "a recurrent layer",
    "Bidirectional": "a recurrent layer",
}


# Merges without weights that TF-MOT's registry lacks (it has Add and Concatenate): QAT refused them by name.
# Like Multiply, they need only their output quantized (int8 SUB, MAXIMUM, MINIMUM; Dot's BATCH_MATMUL).
WEIGHTLESS_MERGES = ("Subtract", "Average", "Maximum", "Minimum", "Dot")


def copies_values(layer: Any) -> bool:
    """A nearest-neighbour UpSampling2D, which copies its input's values: TF-MOT quantizes its output with a range
    of its own, and TFLite's int8 RESIZE_NEAREST_NEIGHBOR must keep its input's scale, so the converter put a
    QUANTIZE (a requantization) before each one (Keras' Oxford-pets U-Net: 2, 14 % slower than its PTQ model). Left
    unquantized, it keeps its input's scale, as post-training quantization gives it."""
    return type(layer).__name__ == "UpSampling2D" and layer.interpolation == "nearest"


def output_quantized_only(layer: Any) -> bool:
    """Layers QAT takes with their output quantized and nothing else: hard-swish and hard-sigmoid, a product of
    two tensors (squeeze-and-excitation's gate), an affine layer in the middle of the model (a BatchNormalization
    no layer before it can fold), and an Activation whose function TF-MOT cannot fake-quantize."""
    kind = type(layer).__name__
    if isinstance(layer, (*layers(), keras().layers.Multiply)) or kind in (
        *WEIGHTLESS_MERGES,
        "Rescaling",
        "Normalization",
        "Resizing",
        "PReLU",
        "LayerNormalization",
        "UnitNormalization",
    ):
        return True
    if kind == "BatchNormalization":
        return not follows_a_foldable_layer(layer)
    return kind == "Activation" and activation_name(layer.activation) not in known_activations()
