"""Parameters, multiply-accumulates and activation memory of a TFLite model, per operator and in total.

Read from the flatbuffer, so the float and the int8 model are measured the same way. Activation memory is
the largest total size of the non-constant tensors alive at once when the operators run in file order (a
tensor lives from the op that produces it, or the start for a graph input, to its last reader, or the end for
a graph output). The interpreter's arena can do a little better by running some ops in place; this is the
figure that compares models fairly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepipe.convert.weights import SEQUENCE_LSTM_WEIGHTS, WEIGHTED_OPS
from edgepipe.tflite_model import Op, TfliteModel


def macs(model: TfliteModel, op: Op) -> int:
    """Multiply-accumulates of one operator for one inference (batch as in the file, normally 1)."""
    ins, outs = model.op_inputs(op), model.op_outputs(op)
    if not outs:
        return 0
    out_elements = outs[0].elements
    if op.name == "FULLY_CONNECTED" and len(ins) > 1:
        return out_elements * ins[1].shape[-1]
    if op.name == "CONV_2D" and len(ins) > 1:  # filter [out_c, kh, kw, in_c / groups]
        _, kh, kw, in_c = ins[1].shape
        return out_elements * kh * kw * in_c
    if op.name == "DEPTHWISE_CONV_2D" and len(ins) > 1:  # filter [1, kh, kw, out_c]
        return out_elements * ins[1].shape[1] * ins[1].shape[2]
    if op.name == "TRANSPOSE_CONV" and len(ins) > 2:  # inputs: output shape, filter [out_c, kh, kw, in_c], input
        out_c, kh, kw, _ = ins[1].shape
        return ins[2].elements * kh * kw * out_c
    if op.name == "BATCH_MATMUL" and len(ins) > 1:
        return out_elements * ins[0].shape[-1]
    if op.name in SEQUENCE_LSTMS and len(ins) > 8:
        return _lstm_macs(model, op)
    return 0


SEQUENCE_LSTMS = tuple(SEQUENCE_LSTM_WEIGHTS)
LSTM_BIASES = (12, 13, 14, 15, 17)  # int32 in a full-integer model, parameters all the same


def _lstm_macs(model: TfliteModel, op: Op) -> int:
    """Each time step multiplies the step's features and the previous output by every gate's matrices (four, or
    three without an input gate), and the projection if there is one."""
    features = model.tensors[op.inputs[0]]
    steps = features.elements // max(features.shape[-1], 1)  # batch x time
    per_step = sum(
        model.tensors[op.inputs[i]].elements
        for i in SEQUENCE_LSTM_WEIGHTS[op.name]  # input-to-gate, recurrent-to-gate matrices, projection
        if i < len(op.inputs) and op.inputs[i] >= 0
    )
    return steps * per_step


def _is_parameter(op: Op, position: int, dtype: str) -> bool:
    """Weights and biases count as parameters; int32/int64 constants of other ops are shapes and axes."""
    if dtype not in ("int32", "int64"):
        return True
    if op.name in SEQUENCE_LSTMS:
        return position in LSTM_BIASES
    return op.name in WEIGHTED_OPS and position == 2  # the int32 bias of a quantized FC / conv


def analyze(model: TfliteModel) -> dict[str, Any]:
    """Per-op rows and totals: params, MACs, constant bytes, activation bytes alive while the op runs."""
    lifetime = _lifetimes(model)
    counted: set[int] = set()
    rows = []
    for op in model.ops:
        constants = [
            model.tensors[t]
            for position, t in enumerate(op.inputs)
            if t >= 0
            and model.tensors[t].is_constant
            and t not in counted
            and _is_parameter(op, position, model.tensors[t].dtype)
        ]
        counted.update(t.index for t in constants)
        live = sum(model.tensors[t].nbytes for t, (start, end) in lifetime.items() if start <= op.index <= end)
        output = model.op_outputs(op)
        rows.append(
            {
                "index": op.index,
                "op": op.name,
                "output": output[0].name if output else "",
                "layer": keras_layer(model, op),
                "params": int(sum(t.elements for t in constants)),
                "nonzero_params": int(sum(np.count_nonzero(t.data) for t in constants if t.data is not None)),
                "param_bytes": int(sum(t.nbytes for t in constants)),
                "macs": int(macs(model, op)),
                "live_activation_bytes": int(live),
            }
        )
    peak_row = max(rows, key=lambda r: r["live_activation_bytes"]) if rows else None
    return {
        "layers": rows,
        "total": {
            "params": int(np.sum([r["params"] for r in rows])) if rows else 0,
            "nonzero_params": int(np.sum([r["nonzero_params"] for r in rows])) if rows else 0,
            "param_bytes": int(np.sum([r["param_bytes"] for r in rows])) if rows else 0,
            "macs": int(np.sum([r["macs"] for r in rows])) if rows else 0,
            "peak_activation_bytes": peak_row["live_activation_bytes"] if peak_row else 0,
            "peak_at_op": peak_row["index"] if peak_row else None,
            "ops": len(rows),
        },
    }


# What a folded BatchNorm or a fused activation calls its part of a tensor's name ("model/bn/batchnorm/mul_1",
# "model/bn/FusedBatchNormV3", "model/re_lu/Relu"): not the layer that computes the operator.
FOLDED_INTO_OPERATOR = ("batchnorm", "FusedBatchNorm", "Relu", "Relu6", "LeakyRelu", "Sigmoid", "Tanh", "Elu")


def keras_layer(model: TfliteModel, op: Op) -> str | None:
    """The Keras layer an operator came from, read from its tensors' names ("model/quant_dense_1/MatMul;..." ->
    "dense_1"): the weights first, then the output, passing over the parts a folded BatchNorm or a fused
    activation wrote (a Dense's kernel with a BatchNorm folded in is "model/batch_normalization_3/batchnorm/mul_1",
    its output "model/fc/MatMul;model/batch_normalization_3/...": the layer is "fc"). A standalone BatchNorm or
    activation keeps its own name. None when no tensor carries a scope (an output named
    "StatefulPartitionedCall:0" alone)."""
    tensors = [model.tensors[t] for t in op.inputs if t >= 0 and model.tensors[t].is_constant]
    tensors += model.op_outputs(op)
    scoped = [
        (parts[1].removeprefix("quant_"), parts[2:])
        for tensor in tensors
        for part in tensor.name.split(";")
        if len(parts := part.split("/")) >= 2 and parts[1]
    ]
    for scope, rest in scoped:
        if not any(segment.startswith(FOLDED_INTO_OPERATOR) for segment in rest):
            return scope
    return scoped[0][0] if scoped else None


def _lifetimes(model: TfliteModel) -> dict[int, tuple[int, int]]:
    """First and last op index at which each activation tensor must be in memory."""
    end_of_graph = len(model.ops)
    first: dict[int, int] = {i: -1 for i in model.inputs}
    last: dict[int, int] = {i: end_of_graph for i in model.outputs}
    for op in model.ops:
        for t in op.outputs:
            if t >= 0:
                first.setdefault(t, op.index)
        for t in op.inputs:
            if t >= 0 and not model.tensors[t].is_constant:
                last[t] = max(last.get(t, op.index), op.index)
    return {t: (first[t], last.get(t, first[t])) for t in first if not model.tensors[t].is_constant}
