"""Run a TFLite model on the host with the LiteRT interpreter: accuracy, predictions, agreement with Keras.

Inputs are quantized with the model's own input scale and zero point, exactly as a board must do it; outputs
are dequantized with the output's. This is the "host-side TFLite accuracy" that on-device results are
compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepipe.errors import ModelError
from edgepipe.native_log import captured_stderr

BATCH = 256


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    predictions: np.ndarray
    scores: np.ndarray  # dequantized outputs


def quantize(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    if scale == 0:
        raise ModelError("the model's integer input has no quantization scale")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def raw_outputs(model_content: bytes, x: np.ndarray, threads: int = 1) -> tuple[np.ndarray, float, int]:
    """The model's first output, as the interpreter wrote it (int8 for a full-integer model), plus its scale
    and zero point. Batches of 256 when the model's batch is dynamic: the device agent chunks the same way."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        with captured_stderr():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
            interpreter = Interpreter(model_content=model_content, num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"the LiteRT interpreter cannot load the model: {exc}") from None
    source = interpreter.get_input_details()[0]
    batch = BATCH if list(source.get("shape_signature", [1]))[:1] == [-1] else 1
    outputs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        interpreter.resize_tensor_input(source["index"], [len(chunk), *source["shape"][1:]])
        interpreter.allocate_tensors()
        details_in = interpreter.get_input_details()[0]
        scale, zero = details_in["quantization"]
        interpreter.set_tensor(details_in["index"], quantize(chunk, details_in["dtype"], scale, zero))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy())
    out_scale, out_zero = interpreter.get_output_details()[0]["quantization"]
    return np.concatenate(outputs).reshape(len(x), -1), float(out_scale), int(out_zero)


def run(model_content: bytes, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Dequantized outputs of the model for every sample of ``x``."""
    raw, scale, zero_point = raw_outputs(model_content, x, threads)
    return (raw.astype(np.float32) - zero_point) * scale if scale else raw.astype(np.float32)


def evaluate(model_content: bytes, x: np.ndarray, y: np.ndarray) -> Evaluation:
    scores = run(model_content, x)
    predictions = scores.argmax(axis=1)
    return Evaluation(float(np.mean(predictions == y)), predictions, scores)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of samples on which two models give the same top-1 answer."""
    return float(np.mean(a == b))
