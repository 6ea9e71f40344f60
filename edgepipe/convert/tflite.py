"""Keras -> TFLite: the float reference model and the full-integer (int8 weights and activations) model.

Full-integer means ``TFLITE_BUILTINS_INT8`` only: the converter fails rather than fall back to a float kernel,
and inputs/outputs are int8 (or uint8). The converter's own C++ log goes to a captured file descriptor so the
terminal stays readable; its last lines are put in the error when conversion fails.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from edgepipe.errors import ConversionError
from edgepipe.keras_compat import tf
from edgepipe.native_log import captured_stderr


def _convert(converter: Any, what: str) -> bytes:
    import warnings

    with captured_stderr() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bytes(converter.convert())
        except Exception as exc:
            error = exc
    detail = [line for line in log if "error" in line.lower()][-3:] or log[-3:]
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise ConversionError(
        f"{what} conversion failed: {first}" + (f" | converter log: {' | '.join(detail)}" if detail else ""),
        hint="an operator without an int8 kernel cannot be fully quantized; check the layers of the model",
    )


def to_float_tflite(model: Any) -> bytes:
    """The float32 TFLite model: the size and accuracy reference every stage is compared with."""
    converter = tf().lite.TFLiteConverter.from_keras_model(model)
    return _convert(converter, "float TFLite")


def to_int8_tflite(model: Any, representative: np.ndarray | Sequence[np.ndarray], io_type: str = "int8") -> bytes:
    """Full-integer TFLite; ``representative`` samples (from the training split, one array per input)
    calibrate the activation ranges."""
    tensorflow = tf()
    converter = tensorflow.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tensorflow.lite.Optimize.DEFAULT]
    arrays = [representative] if isinstance(representative, np.ndarray) else list(representative)
    samples = [np.asarray(a, dtype=np.float32) for a in arrays]
    names = list(model.input_names)

    def calibration() -> Iterator[list[np.ndarray] | dict[str, np.ndarray]]:
        for i in range(len(samples[0])):
            if len(samples) == 1:
                yield [samples[0][i : i + 1]]
            else:  # by signature name: the converter's input order need not be Keras'
                yield {name: sample[i : i + 1] for name, sample in zip(names, samples, strict=True)}

    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tensorflow.lite.OpsSet.TFLITE_BUILTINS_INT8]
    io = {"int8": tensorflow.int8, "uint8": tensorflow.uint8}[io_type]
    converter.inference_input_type = io
    converter.inference_output_type = io
    return _convert(converter, "full-integer")
