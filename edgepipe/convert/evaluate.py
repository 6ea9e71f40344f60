"""Run a TFLite model on the host with the LiteRT interpreter: outputs, the task's score, agreement with Keras.

Inputs are quantized with the model's own input scale and zero point, exactly as a board must do it; outputs
are dequantized with the output's. This is the "host-side TFLite" figure that on-device results are compared
with.

The interpreter lists a model's inputs and outputs in its own order, which need not be Keras' (it is not for
two inputs named ``zeta`` and ``alpha``). ``io_order`` maps Keras' order to the interpreter's through the
model's signature, whose names are the Keras input and output names; everything here takes and returns arrays
in Keras' order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepipe.errors import ModelError
from edgepipe.native_log import captured_stderr
from edgepipe.tasks import Score, Task

BATCH = 256


@dataclass(frozen=True)
class IoOrder:
    """For each Keras input and output, in Keras' order, its position in the interpreter's details lists."""

    inputs: tuple[int, ...] = (0,)
    outputs: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class Evaluation:
    score: Score
    outputs: tuple[np.ndarray, ...]  # dequantized, Keras order

    @property
    def accuracy(self) -> float:
        return self.score.value


def quantize(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    if scale == 0:  # an index input (token ids into an Embedding): integers, as they are
        return np.rint(x).astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _interpreter(model_content: bytes, threads: int = 1) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    try:
        with captured_stderr():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
            return Interpreter(model_content=model_content, num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"the LiteRT interpreter cannot load the model: {exc}") from None


def _checked(step: Any, batch: int) -> None:
    """An interpreter step whose kernel fails (a shape it cannot prepare, say) as the model's error, not ours."""
    try:
        step()
    except RuntimeError as exc:
        first = " ".join(str(exc).split())
        raise ModelError(
            f"the converted model fails in the LiteRT interpreter (batch of {batch}): {first}",
            hint="a layer converted to operators that do not run; the message names the operator: replace that "
            "layer, or report the model shape to edgepipe",
        ) from None


def io_order(model_content: bytes, input_names: Sequence[str], output_names: Sequence[str]) -> IoOrder:
    """Where Keras' inputs and outputs (by name) sit in the interpreter's lists, read from the signature."""
    interpreter = _interpreter(model_content)
    details_in, details_out = interpreter.get_input_details(), interpreter.get_output_details()
    if len(details_in) == 1 and len(details_out) == 1:
        return IoOrder()
    signatures = interpreter.get_signature_list()
    if not signatures:
        return IoOrder(tuple(range(len(details_in))), tuple(range(len(details_out))))
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    by_name_in = {name: d["index"] for name, d in runner.get_input_details().items()}
    by_name_out = {name: d["index"] for name, d in runner.get_output_details().items()}
    positions_in = [d["index"] for d in details_in]
    positions_out = [d["index"] for d in details_out]
    try:
        return IoOrder(
            tuple(positions_in.index(by_name_in[name]) for name in input_names),
            tuple(positions_out.index(by_name_out[name]) for name in output_names),
        )
    except (KeyError, ValueError):
        raise ModelError(
            f"the TFLite model's signature names {sorted(by_name_in)} -> {sorted(by_name_out)} do not match the "
            f"Keras model's inputs {list(input_names)} and outputs {list(output_names)}"
        ) from None


def raw_outputs(
    model_content: bytes, x: Sequence[np.ndarray], order: IoOrder | None = None, threads: int = 1
) -> list[tuple[np.ndarray, float, int]]:
    """Each output as the interpreter wrote it (int8 for a full-integer model) with its scale and zero point,
    in Keras' order. Batches of 256 when the model's batch is dynamic: the device agent chunks the same way."""
    from edgepipe.tflite_model import TfliteModel

    interpreter = _interpreter(model_content, threads)
    stateful = TfliteModel.read(model_content).stateful
    order = order or IoOrder(tuple(range(len(x))), tuple(range(len(interpreter.get_output_details()))))
    sources = interpreter.get_input_details()
    batch = BATCH if all(list(d.get("shape_signature", [1]))[:1] == [-1] for d in sources) else 1
    count = len(x[0])
    chunks: list[list[np.ndarray]] = [[] for _ in order.outputs]
    for start in range(0, count, batch):
        size = min(batch, count - start)
        for keras_index, position in enumerate(order.inputs):  # the data's own shape: a dimension may be free
            interpreter.resize_tensor_input(sources[position]["index"], [size, *x[keras_index].shape[1:]])
        _checked(interpreter.allocate_tensors, size)
        details_in = interpreter.get_input_details()
        for keras_index, position in enumerate(order.inputs):
            detail = details_in[position]
            scale, zero = detail["quantization"]
            chunk = x[keras_index][start : start + size]
            interpreter.set_tensor(detail["index"], quantize(chunk, detail["dtype"], scale, zero))
        if stateful:  # a fused LSTM would start from the previous sample's state
            interpreter.reset_all_variables()
        _checked(interpreter.invoke, size)
        details_out = interpreter.get_output_details()
        for keras_index, position in enumerate(order.outputs):
            chunks[keras_index].append(interpreter.get_tensor(details_out[position]["index"]).copy())
    details_out = interpreter.get_output_details()
    results = []
    for keras_index, position in enumerate(order.outputs):
        scale, zero = details_out[position]["quantization"]
        results.append((np.concatenate(chunks[keras_index]).reshape(count, -1), float(scale), int(zero)))
    return results


def run(
    model_content: bytes, x: Sequence[np.ndarray], order: IoOrder | None = None, threads: int = 1
) -> tuple[np.ndarray, ...]:
    """Dequantized outputs of the model for every sample, one array per output (Keras' order)."""
    return tuple(
        (raw.astype(np.float32) - zero) * scale if scale else raw.astype(np.float32)
        for raw, scale, zero in raw_outputs(model_content, x, order, threads)
    )


def evaluate(
    model_content: bytes,
    x: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    task: Task,
    order: IoOrder | None = None,
) -> Evaluation:
    outputs = run(model_content, x, order)
    return Evaluation(task.score(outputs, targets), outputs)
