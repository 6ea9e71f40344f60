"""What converting at batch 1 buys a model with a Reshape or a transposed convolution, paired on the local target.

    .venv/bin/python bench/batch_one.py          # about 2 minutes on 2 cores

With a free batch size, TensorFlow builds a Reshape's and a transposed convolution's output shape from the batch
at run time: the converted model runs SHAPE -> STRIDED_SLICE -> PACK before each, at every inference, and
XNNPACK leaves a TRANSPOSE_CONV whose output shape is not a constant to TFLite's own kernels, cutting the graph
into several delegated parts. edgepipe converts such a model at batch 1, the batch a board runs. Each model here
(untrained: the weights do not change the time) is converted to full-integer TFLite both ways, from the same
weights, and deployed to ``local`` with the free-batch model as ``--baseline``: the agent times both in the
same processes in alternating blocks, and the printed change is the median block ratio (the regression gate's
paired measure).
"""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from paired import p50_and_change, print_table

from edgepipe.convert.tflite import to_int8_tflite
from edgepipe.keras_compat import keras, tf
from edgepipe.tflite_model import TfliteModel


def unet() -> Any:
    """Two levels down, two Conv2DTranspose up, on 32x32x8 (a segmentation or denoising decoder)."""
    k = keras()
    inputs = k.Input((32, 32, 8))
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = k.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = k.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = k.layers.Conv2DTranspose(16, 2, strides=2, activation="relu")(x)
    x = k.layers.Conv2DTranspose(8, 2, strides=2, activation="relu")(x)
    return k.Model(inputs, k.layers.Conv2D(1, 1)(x))


def squeeze_excite() -> Any:
    """Three Conv2D blocks, each gated by squeeze-and-excitation (GlobalAveragePooling2D -> Reshape(1, 1, C) ->
    two 1x1 convolutions -> Multiply), as MobileNetV3 and EfficientNet have them."""
    k = keras()
    inputs = k.Input((16, 16, 3))
    x = inputs
    for filters in (16, 32, 32):
        x = k.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        gate = k.layers.Reshape((1, 1, filters))(k.layers.GlobalAveragePooling2D()(x))
        gate = k.layers.Conv2D(filters // 4, 1, activation="relu")(gate)
        x = k.layers.Multiply()([x, k.layers.Conv2D(filters, 1, activation="sigmoid")(gate)])
    return k.Model(inputs, k.layers.Dense(10)(k.layers.GlobalAveragePooling2D()(x)))


def free_batch_int8(model: Any, sample: np.ndarray) -> bytes:
    """The converter's default (``from_keras_model``: the batch left free), as edgepipe converted these before."""
    t = tf()
    converter = t.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [t.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None]] for row in sample)
    converter.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = t.int8
    return bytes(converter.convert())


MODELS: dict[str, Callable[[], Any]] = {"U-Net (Conv2DTranspose)": unet, "squeeze-excitation (Reshape)": squeeze_excite}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgepipe-batch-one-"))
    rows = []
    for index, (name, build) in enumerate(MODELS.items()):
        model = build()
        sample = np.random.default_rng(0).random((32, *model.input_shape[1:]), dtype=np.float32)
        free, fixed = work / f"{index}-free.tflite", work / f"{index}-batch1.tflite"
        free.write_bytes(free_batch_int8(model, sample))
        fixed.write_bytes(to_int8_tflite(model, sample))
        counts = [collections.Counter(op.name for op in TfliteModel.read(p).ops) for p in (free, fixed)]
        shape_ops = [sum(c[op] for op in ("SHAPE", "STRIDED_SLICE", "PACK")) for c in counts]
        p50, change = p50_and_change(fixed, free, work / f"{index}.json")
        rows.append(
            (
                name,
                f"{sum(counts[0].values())} -> {sum(counts[1].values())}",
                f"{shape_ops[0]} -> {shape_ops[1]}",
                p50,
                change,
            )
        )
    header = ("model", "operators", "shape operators", "p50 µs (free -> batch 1)", "latency change (paired)")
    print_table(header, rows)
    print(f"models and deploy results kept in {work}")


if __name__ == "__main__":
    main()
