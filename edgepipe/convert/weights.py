"""What actually survived into the converted weights: sparsity and unique values, per layer.

Measured on the constant weight tensors of the flatbuffer (not on the Keras model), because that is what the
board stores and what gzip sees. For int8 weights a zero is the tensor's zero point (0 for TFLite's symmetric
weight quantization). ``max_unique_per_channel`` matters for per-channel quantized convolutions, whose
channels each have their own scale: clustering to N values gives at most N per channel there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from edgepipe.tflite_model import Op, Tensor, TfliteModel

# Operators whose second input is the weight tensor (filter / kernel).
WEIGHTED_OPS = {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "TRANSPOSE_CONV", "BATCH_MATMUL"}


def weight_tensor(model: TfliteModel, op: Op) -> Tensor | None:
    if op.name not in WEIGHTED_OPS:
        return None
    index = 1  # FULLY_CONNECTED, CONV_*: (input, filter, bias); TRANSPOSE_CONV: (shape, filter, input)
    if len(op.inputs) <= index or op.inputs[index] < 0:
        return None
    tensor = model.tensors[op.inputs[index]]
    return tensor if tensor.is_constant else None


# The four projections inside a Keras MultiHeadAttention layer: named, so that its kernels are told apart.
ATTENTION_PARTS = frozenset({"query", "key", "value", "attention_output"})


def layer_name(tensor_name: str, keras_layers: Iterable[str]) -> str:
    """Best-effort Keras layer for a converted tensor name ("model/quant_dense_1/MatMul;..." -> "dense_1"): one
    of ``keras_layers`` if named (with its projection for an attention layer's: "mha/query"), else the tensor's
    scope (a layer a stage added, such as QAT's "sep_dw" split off a SeparableConv2D), else the name itself."""
    found = _named_layer(tensor_name, keras_layers)
    if found is not None:
        return found
    scope = tensor_name.split(";")[0].split("/")
    return scope[1].removeprefix("quant_") if len(scope) >= 3 and scope[1] else tensor_name.split(";")[0]


def _named_layer(tensor_name: str, keras_layers: Iterable[str]) -> str | None:
    """The longest of ``keras_layers`` that a segment of ``tensor_name`` names (an attention layer's with its
    projection), or None."""
    segments: set[str] = set()
    for part in tensor_name.replace(";", "/").split("/"):
        segments.update({part, part.removeprefix("quant_")})
    candidates = [name for name in keras_layers if name in segments]
    if not candidates:
        return None
    found = max(candidates, key=len)
    for name in tensor_name.split(";"):  # "m/attend/Mul;m/attend/query/add;...": the query's
        scope = name.split("/")
        after = scope[scope.index(found) + 1] if found in scope[:-1] else None
        if after in ATTENTION_PARTS:
            return f"{found}/{after}"
    return found


def kernel_layers(model: Any) -> list[str]:
    """The names of ``model``'s layers that can own a weighted operator's weights (a Dense, a convolution, an
    attention layer; not a normalization, whose weights the converter folds into the layer before it):
    what ``weight_stats`` names rows by. A BatchNormalization folded into a Dense or a depthwise convolution
    names the folded kernel ("model/batch_normalization_3/batchnorm/mul_1"): labelled by every layer's name, the
    Dense's row was called "batch_normalization_3"."""
    return [
        layer.name
        for layer in model.layers
        if layer.weights and "Normalization" not in type(getattr(layer, "layer", layer)).__name__
    ]


# A fused LSTM's weights: input-to-gate and recurrent-to-gate matrices (inputs 1-8) and the projection (16).
SEQUENCE_LSTM_WEIGHTS = {"UNIDIRECTIONAL_SEQUENCE_LSTM": (*range(1, 9), 16), "LSTM": (*range(1, 9), 16)}


def lstm_weights(model: TfliteModel, op: Op) -> list[Tensor]:
    positions = SEQUENCE_LSTM_WEIGHTS.get(op.name, ())
    found = [model.tensors[op.inputs[p]] for p in positions if p < len(op.inputs) and op.inputs[p] >= 0]
    return [tensor for tensor in found if tensor.data is not None]


def weight_stats(model: TfliteModel, keras_layers: Iterable[str] = ()) -> list[dict[str, Any]]:
    names = list(keras_layers)
    rows = []
    for op in model.ops:
        if op.name in SEQUENCE_LSTM_WEIGHTS:
            row = _lstm_row(model, op, names)
            if row is not None:
                rows.append(row)
            continue
        tensor = weight_tensor(model, op)
        if tensor is None or tensor.data is None:
            continue
        values = tensor.data
        zero = int(tensor.zero_point[0]) if tensor.zero_point is not None and tensor.zero_point.size else 0
        zero_mask = values == (zero if np.issubdtype(values.dtype, np.integer) else 0.0)
        axis = tensor.quantized_dimension if values.ndim else 0
        per_channel = (
            max(len(np.unique(np.take(values, c, axis=axis))) for c in range(values.shape[axis]))
            if values.ndim and tensor.scale is not None and tensor.scale.size > 1
            else None
        )
        rows.append(
            {
                "layer": _weights_layer(model, op, tensor, names),
                "op": op.name,
                "tensor": tensor.name,
                "dtype": tensor.dtype,
                "shape": list(tensor.shape),
                "count": int(values.size),
                "sparsity": round(float(zero_mask.mean()), 6),
                "unique": len(np.unique(values)),
                "max_unique_per_channel": per_channel,
            }
        )
    return rows


def _weights_layer(model: TfliteModel, op: Op, tensor: Tensor, names: list[str]) -> str:
    """The layer that owns ``op``'s weights ``tensor``: named by the tensor, else by the operator's output (a
    Dense with a BatchNormalization folded in: "model/fc/MatMul;model/batch_normalization_3/..."), else the
    tensor's scope."""
    output = model.op_outputs(op)
    by_output = _named_layer(output[0].name, names) if output else None
    return _named_layer(tensor.name, names) or by_output or layer_name(tensor.name, names)


def _lstm_row(model: TfliteModel, op: Op, names: list[str]) -> dict[str, Any] | None:
    """One row for all of a fused LSTM's weight matrices, named after the op's output (or ``LSTM@<op index>``:
    the converter names its constants ``arith.constantN``). ``unique`` is the most of any one matrix, as each
    gate's matrix is clustered on its own; its weights are quantized per tensor (no per-channel figure)."""
    tensors = lstm_weights(model, op)
    if not tensors:
        return None
    zeros = sum(int(np.count_nonzero(t.data == _zero(t))) for t in tensors if t.data is not None)
    count = sum(int(t.data.size) for t in tensors if t.data is not None)
    output = model.op_outputs(op)
    named = layer_name(output[0].name, names) if output else ""
    return {
        "layer": named if named in names else f"LSTM@{op.index}",  # the converter's output name may be generic
        "op": op.name,
        "tensor": tensors[0].name,
        "dtype": tensors[0].dtype,
        "shape": [count],
        "count": count,
        "sparsity": round(zeros / count, 6) if count else 0.0,
        "unique": max(len(np.unique(t.data)) for t in tensors if t.data is not None),
        "max_unique_per_channel": None,
    }


def _zero(tensor: Tensor) -> float:
    if tensor.data is not None and np.issubdtype(tensor.data.dtype, np.integer) and tensor.zero_point is not None:
        return int(tensor.zero_point[0]) if tensor.zero_point.size else 0
    return 0.0


def overall_sparsity(rows: list[dict[str, Any]]) -> float:
    """Zeros over all weights of all weighted layers."""
    total = sum(r["count"] for r in rows)
    return round(sum(r["sparsity"] * r["count"] for r in rows) / total, 6) if total else 0.0
