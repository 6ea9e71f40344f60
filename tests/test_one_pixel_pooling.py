"""A global pooling over a 1x1 map (MobileNet on a small input ends at one pixel) becomes a Flatten of the same
name: the int8 model had a MEAN over one pixel, which the board ran at every inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import channel_prune_qat, run_cli, write_recipe

from edgepipe.keras_compat import keras
from edgepipe.optimization.one_pixel_pooling import flatten_one_pixel_pooling
from edgepipe.tflite_model import TfliteModel

MODELS = '''
import tf_keras as k


def one_pixel():
    """Conv -> BN -> ReLU blocks down to a 1x1 map, then Keras' default head."""
    h = i = k.layers.Input((8, 8, 1))
    for filters in (16, 32, 64):
        h = k.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"conv_{filters}")(h)
        h = k.layers.ReLU()(k.layers.BatchNormalization()(h))
    h = k.layers.GlobalAveragePooling2D(name="pool")(h)
    return k.Model(i, k.layers.Dense(10, name="logits")(h))
'''


@pytest.mark.slow
def test_a_pooling_over_one_pixel_is_a_flatten_that_channel_pruning_and_qat_take(tmp_path: Path) -> None:
    (tmp_path / "models.py").write_text(MODELS)
    recipe = channel_prune_qat("one-pixel", "{source: models:one_pixel, train: {epochs: 3, learning_rate: 0.003}}")
    done = run_cli("optimize", str(write_recipe(tmp_path, recipe)), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pool: GlobalAveragePooling2D over a 1x1 map -> Flatten" in " ".join(done.stderr.split())
    record = json.loads((tmp_path / "run" / "optimize.json").read_text())
    assert record["baseline"]["rewrites"] == ["pool: GlobalAveragePooling2D over a 1x1 map -> Flatten"]
    assert record["stages"][0]["details"]["channels"]["conv_64"] == {"before": 64, "after": 32}
    for path in ("float/model.tflite", "model.tflite"):
        model = TfliteModel.read(tmp_path / "run" / path)
        assert [op.name for op in model.ops][-2:] == ["RESHAPE", "FULLY_CONNECTED"], path  # no MEAN
    final = TfliteModel.read(tmp_path / "run" / "model.tflite")
    head = next(op for op in final.ops if op.name == "FULLY_CONNECTED")
    assert tuple(final.tensors[head.inputs[1]].shape) == (10, 32)  # the logits read the 32 kept channels
    assert record["final"]["conformance"]["passed"]


def test_only_a_pooling_over_one_pixel_without_keepdims_is_replaced() -> None:
    k = keras()
    inputs = k.Input((4, 4, 3))
    one = k.layers.Conv2D(8, 4, name="to_one")(inputs)  # 1x1
    pooled = [
        k.layers.GlobalAveragePooling2D(name="avg")(one),
        k.layers.GlobalMaxPooling2D(name="max")(one),
        k.layers.Flatten()(k.layers.GlobalAveragePooling2D(keepdims=True, name="kept")(one)),
        k.layers.GlobalAveragePooling2D(name="wide")(inputs),  # a 4x4 map: a real average
    ]
    model = k.Model(inputs, k.layers.Concatenate()(pooled))
    sample = np.random.default_rng(0).random((8, 4, 4, 3), dtype=np.float32)
    flat, lines = flatten_one_pixel_pooling(model, sample)  # raises if the outputs differ
    kinds = {layer.name: type(layer).__name__ for layer in flat.layers}
    assert (kinds["avg"], kinds["max"], kinds["kept"], kinds["wide"]) == (
        "Flatten", "Flatten", "GlobalAveragePooling2D", "GlobalAveragePooling2D"
    )  # fmt: skip
    assert lines == ["avg: GlobalAveragePooling2D over a 1x1 map -> Flatten",
                     "max: GlobalMaxPooling2D over a 1x1 map -> Flatten"]  # fmt: skip
    assert np.array_equal(model.predict(sample, verbose=0), flat.predict(sample, verbose=0))
