"""Models whose tensors are not float32 where the int8 converter needs float32, rebuilt on load.

Mixed precision:

A model trained on a GPU with ``mixed_float16`` (or ``mixed_bfloat16``) keeps its variables in float32 but
records the policy in every layer's config, so a loaded model still computes in half precision. The int8
converter then failed on the float TFLite model ("'tf.Conv2D' op is neither a custom op nor a flex op": the
half-precision kernels have no TFLite builtin), and QAT would fake-quantize half-precision tensors. The same
layers with the float32 policy compute what the half-precision ones approximate, from the same variables.

Integer image inputs: a model declared ``Input(..., dtype="uint8")`` (camera frames, then ``Rescaling(1/255)``)
converted to a uint8 input, a CAST to float and a QUANTIZE: not integer-only, refused at verification. Its
values are exact in float32, so the input is declared float32 and the int8 model's input is quantized from the
data like any other (0..255 gives a scale of 1 and a zero point of -128: the uint8 value minus 128, exactly).
An integer input read by a lookup (an ``Embedding`` of token ids) stays an index input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepipe.errors import ModelError
from edgepipe.keras_compat import all_layers

_HALF = ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16")


def float32_model(model: Any, sample: Any) -> tuple[Any, list[str]]:
    """``model`` itself when every layer computes in float32; else its float32 twin and the note that says so."""
    half = [layer.name for layer in all_layers(model) if _policy_name(layer) in _HALF]
    if not half:
        return model, []
    policies = sorted({_policy_name(layer) for layer in all_layers(model)} & set(_HALF))
    config = model.get_config()
    _set_float32(config)
    try:
        rebuilt = type(model).from_config(config)
        rebuilt.set_weights(model.get_weights())
    except Exception as exc:  # a layer whose config the swap does not fit: say which policy blocks it
        raise ModelError(
            f"the model computes in {', '.join(policies)} ({len(half)} layers), which TFLite's int8 converter "
            f"cannot take, and rebuilding it in float32 failed: {type(exc).__name__}: {exc}",
            hint="load it under tf_keras.mixed_precision.set_global_policy('float32'), rebuild and save it again",
        ) from None
    before = [np.asarray(out, np.float32) for out in _as_list(model(sample, training=False))]
    after = [np.asarray(out) for out in _as_list(rebuilt(sample, training=False))]
    largest = max(float(np.max(np.abs(a - b))) for a, b in zip(before, after, strict=True))
    scale = max(float(np.max(np.abs(b))) for b in before) or 1.0
    return rebuilt, [
        f"{len(half)} layers computed in {', '.join(policies)} (mixed precision): rebuilt in float32, the same "
        f"weights (outputs differ by at most {largest:.3g}, {largest / scale:.2%} of their largest value: "
        "half precision's rounding)"
    ]


# Layers that read an integer input as indices or categories: their input must stay integer.
_LOOKUPS = ("Embedding", "CategoryEncoding", "IntegerLookup", "StringLookup", "Hashing", "HashedCrossing")


def float_inputs(model: Any) -> tuple[Any, list[str]]:
    """``model`` itself, or its twin whose integer inputs that feed arithmetic (not lookups) are float32."""
    config = model.get_config()
    changed = []
    for entry in config.get("layers", []):
        if entry.get("class_name") != "InputLayer":
            continue
        dtype = str(entry["config"].get("dtype"))
        if not dtype.startswith(("uint", "int")) or _feeds_lookup(model, entry["config"]["name"]):
            continue
        entry["config"]["dtype"] = "float32"
        changed.append(f"{entry['config']['name']} ({dtype})")
    if not changed:
        return model, []
    rebuilt = type(model).from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt, [
        f"integer input {', '.join(changed)} declared float32: its values are exact in float32, and the int8 "
        "model's input is quantized from the data (a uint8 input stays a CAST the int8 model cannot have)"
    ]


def _feeds_lookup(model: Any, input_name: str) -> bool:
    """Whether a lookup reads the input (a Sequential model does not list its InputLayer among its layers, so
    the layer is found from the model's input tensors); an input not found is left as it is."""
    for tensor in model.inputs:
        layer = tensor._keras_history.layer
        if layer.name == input_name:
            return any(type(node.outbound_layer).__name__ in _LOOKUPS for node in layer.outbound_nodes)
    return True


def _policy_name(layer: Any) -> str:
    policy = getattr(layer, "dtype_policy", None)
    return str(getattr(policy, "name", "float32"))


def _set_float32(node: Any) -> None:
    """Every layer's ``dtype`` in a model config set to float32 (nested models included)."""
    if isinstance(node, dict):
        dtype = node.get("dtype")
        name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if name in _HALF:
            node["dtype"] = "float32"
        for value in node.values():
            _set_float32(value)
    elif isinstance(node, list):
        for value in node:
            _set_float32(value)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]
