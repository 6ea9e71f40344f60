"""What a Flatten instead of a global pooling over a 1x1 map buys, paired on the local target.

    .venv/bin/python bench/one_pixel_pool.py          # about a minute on 2 cores

MobileNetV2 (alpha 0.35) on a 32x32 input ends at a 1x1 map, which Keras' head pools without ``keepdims``:
TFLite runs a MEAN over one pixel. MobileNetV3-Small pools with ``keepdims`` (the converter drops that
pooling itself): nothing is replaced, and its row shows the measure's noise. Each model (untrained: the
weights do not change the time) is converted to full-integer TFLite as it is and after edgepipe's rewrite
(``flatten_one_pixel_pooling``), from the same weights, and deployed to ``local`` with the unrewritten model
as ``--baseline``: the agent times both in the same processes in alternating blocks, and the printed change
is the median block ratio (the regression gate's paired measure).
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
from edgepipe.keras_compat import keras
from edgepipe.optimization.one_pixel_pooling import flatten_one_pixel_pooling
from edgepipe.tflite_model import TfliteModel


def mobilenet_v2() -> Any:
    return keras().applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)


def mobilenet_v3_small() -> Any:
    return keras().applications.MobileNetV3Small(
        input_shape=(32, 32, 3), minimalistic=True, weights=None, classes=10, include_preprocessing=False
    )


MODELS: dict[str, Callable[[], Any]] = {
    "MobileNetV2 0.35, 32x32": mobilenet_v2,
    "MobileNetV3-Small, 32x32 (control)": mobilenet_v3_small,  # its head pools with keepdims: nothing to replace
}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgepipe-one-pixel-"))
    rows = []
    for index, (name, build) in enumerate(MODELS.items()):
        model = build()
        sample = np.random.default_rng(0).random((32, *model.input_shape[1:]), dtype=np.float32)
        flat, lines = flatten_one_pixel_pooling(model, sample)
        pooled, flattened = work / f"{index}-pooled.tflite", work / f"{index}-flattened.tflite"
        pooled.write_bytes(to_int8_tflite(model, sample))
        flattened.write_bytes(to_int8_tflite(flat, sample))
        means = [collections.Counter(op.name for op in TfliteModel.read(p).ops)["MEAN"] for p in (pooled, flattened)]
        p50, change = p50_and_change(flattened, pooled, work / f"{index}.json")
        rows.append(
            (
                name,
                f"{len(lines)}",
                f"{means[0]} -> {means[1]}",
                p50,
                change,
            )
        )
    print_table(("model", "poolings replaced", "MEAN", "p50 µs (pooled -> flatten)", "latency change (paired)"), rows)
    print(f"models and deploy results kept in {work}")


if __name__ == "__main__":
    main()
