"""Hard-swish and hard-sigmoid chains of TensorFlow functions fused into one layer each, for QAT: on Keras
Applications' MobileNetV3Small (Multiply / ReLU layers around the functions) the fused model computes exactly the
same, keeps a chain the stage's layer selection leaves out, and saves and loads back."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from edgepipe.keras_compat import keras
from edgepipe.optimization import saving
from edgepipe.optimization.hard_activations import fuse_hard_activations


def test_mobilenetv3_hard_swish_and_hard_sigmoid_become_one_layer_each_and_compute_the_same(tmp_path: Path) -> None:
    k = keras()
    k.utils.set_random_seed(0)
    model = k.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=10)
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    fused, lines = fuse_hard_activations(model, x)
    assert lines == ["19 hard_swish chain(s) -> one hard_swish layer each",
                     "9 hard_sigmoid chain(s) -> one hard_sigmoid layer each"]  # fmt: skip
    kinds = Counter(type(layer).__name__ for layer in fused.layers)
    assert (kinds["HardSwish"], kinds["HardSigmoid"], kinds["TFOpLambda"]) == (19, 9, 0)
    assert kinds["Multiply"] == 9  # the squeeze-and-excitation gates stay: only the chains' own products go
    want = model.predict(x, verbose=0)
    assert np.abs(fused.predict(x, verbose=0) - want).max() <= 1e-6 * np.abs(want).max()

    first = next(layer for layer in model.layers if type(layer).__name__ == "TFOpLambda")
    partial, lines = fuse_hard_activations(model, x, lambda layer: layer.name != first.name)
    assert lines[0] == "18 hard_swish chain(s) -> one hard_swish layer each"  # the stem's chain stays as it was
    assert first.name in {layer.name for layer in partial.layers}

    fused.save(tmp_path / "fused.keras")
    again = saving.load(tmp_path / "fused.keras")
    assert np.array_equal(again.predict(x, verbose=0), fused.predict(x, verbose=0))
