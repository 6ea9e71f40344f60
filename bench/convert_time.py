"""How long a conversion takes when the converter is handed the Keras model against only its variables.

    .venv/bin/python bench/convert_time.py          # about 2 minutes on 2 cores

``TFLiteConverter.from_keras_model`` (and ``from_concrete_functions`` with the model as the functions' owner)
first exports the model as a Keras SavedModel, which traces every layer's call function; a QAT model's
wrappers make that the larger part of the conversion. edgepipe hands the converter the inference function
and a module holding the model's variables. Each model is converted to full-integer TFLite both ways, in
alternating rounds in this one process, and the medians are printed side by side, with whether the two
files hold the same operators and the same weights.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgepipe.convert import tflite
from edgepipe.examples import cnns
from edgepipe.keras_compat import tf, tfmot
from edgepipe.tflite_model import TfliteModel

ROUNDS = 3


def keras_model_converter(model: Any) -> Any:
    """The converter as edgepipe made it before: the model itself handed over."""
    return tf().lite.TFLiteConverter.from_keras_model(model)


def int8(model: Any, sample: np.ndarray, make: Callable[[Any], Any]) -> tuple[bytes, float]:
    t = tf()
    started = time.perf_counter()
    converter = make(model)
    converter.optimizations = [t.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None]] for row in sample)
    converter.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = t.int8
    content = bytes(converter.convert())
    return content, time.perf_counter() - started


def same_model(a: bytes, b: bytes) -> bool:
    """The same operators in the same order, and the same constant tensors."""
    first, second = TfliteModel.read(a), TfliteModel.read(b)
    if [op.name for op in first.ops] != [op.name for op in second.ops]:
        return False
    constants = [[t.data for t in m.tensors if t.data is not None] for m in (first, second)]
    return len(constants[0]) == len(constants[1]) and all(np.array_equal(x, y) for x, y in zip(*constants, strict=True))


def qat_resnet() -> Any:
    """The digits ResNet-style CNN with TF-MOT's quantize wrappers (untrained: the time does not depend on it)."""
    return tfmot().quantization.keras.quantize_model(cnns.resnet())


MODELS: dict[str, Callable[[], Any]] = {
    "ResNet-style CNN": cnns.resnet,
    "DS-CNN": cnns.ds_cnn,
    "ResNet-style CNN, QAT wrappers": qat_resnet,
}


def main() -> None:
    print(f"{'model':34} {'model handed over':>18} {'variables only':>15} {'ratio':>7}  same operators and weights")
    for name, build in MODELS.items():
        model = build()
        sample = np.random.default_rng(0).random((16, *model.input_shape[1:]), dtype=np.float32)
        times: dict[str, list[float]] = {"keras": [], "variables": []}
        files: dict[str, bytes] = {}
        for _ in range(ROUNDS):  # alternating, so that a busy moment of the machine hits both
            files["keras"], seconds = int8(model, sample, keras_model_converter)
            times["keras"].append(seconds)
            files["variables"], seconds = int8(model, sample, tflite.converter_for)
            times["variables"].append(seconds)
        old, new = statistics.median(times["keras"]), statistics.median(times["variables"])
        same = same_model(files["keras"], files["variables"])
        print(f"{name:34} {old:17.2f}s {new:14.2f}s {old / new:6.1f}x  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
