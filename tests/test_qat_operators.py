"""QAT's int8 model runs the operators post-training quantization gives, on the shape of Keras' Oxford-pets U-Net
example (a ReLU on a ReLU's output, residual adds read by a nearest-neighbour UpSampling2D). It had a RELU and
two QUANTIZE operators more, and ran 13 % slower than the PTQ model of the same architecture, measured paired."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import qat_of

from edgepipe.keras_compat import keras
from edgepipe.optimization.repeated_relu import drop_repeated_relu
from edgepipe.tflite_model import TfliteModel

pytestmark = pytest.mark.slow

MODELS = '''
def unet():
    """Keras' Oxford-pets U-Net, one level down and one up, with a digits classifier's head."""
    from edgepipe.keras_compat import keras
    k = keras()
    inputs = k.Input((8, 8, 1))
    x = k.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = k.layers.Activation("relu", name="stem_relu")(k.layers.BatchNormalization(name="stem_bn")(x))
    previous = x
    x = k.layers.Activation("relu", name="block_relu")(x)  # the example's: a ReLU of the stem's ReLU
    x = k.layers.BatchNormalization()(k.layers.SeparableConv2D(16, 3, padding="same", name="sep")(x))
    x = k.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = k.layers.add([x, k.layers.Conv2D(16, 1, strides=2, padding="same", name="down_proj")(previous)])
    previous = x
    x = k.layers.Activation("relu", name="up_relu")(x)
    x = k.layers.BatchNormalization()(k.layers.Conv2DTranspose(16, 3, padding="same", name="up")(x))
    x = k.layers.UpSampling2D(2)(x)
    x = k.layers.add([x, k.layers.Conv2D(16, 1, name="up_proj")(k.layers.UpSampling2D(2)(previous))])
    return k.Model(inputs, k.layers.Dense(10, name="logits")(k.layers.GlobalAveragePooling2D()(x)))
'''


def test_qat_of_keras_unet_example_runs_the_float_models_operators(tmp_path: Path) -> None:
    done, details = qat_of(tmp_path, MODELS, "unet")
    assert details["dropped_relus"] == ["block_relu (a ReLU of stem_relu's ReLU output)"]
    assert "ReLU layers that change nothing" in " ".join(done.stderr.split())
    final, float_ = (Counter(op.name for op in TfliteModel.read(path).ops) for path in (
        tmp_path / "run" / "model.tflite", tmp_path / "run" / "float" / "model.tflite"
    ))  # fmt: skip
    assert final == float_, (final, float_)  # no RELU of a RELU, no QUANTIZE before a RESIZE_NEAREST_NEIGHBOR
    assert final["RESIZE_NEAREST_NEIGHBOR"] == 2 and final["RELU"] == 1  # the add read by the upsampling


def test_only_a_plain_relu_of_a_non_negative_output_is_dropped() -> None:
    k = keras()
    inputs = k.Input((6,))
    capped = k.layers.Dense(4, activation="relu6", name="capped")(inputs)
    again = k.layers.ReLU(name="again")(capped)  # dropped: relu6's output is never below zero
    leaky = k.layers.LeakyReLU(name="leaky")(k.layers.Dense(4, name="linear")(inputs))
    kept = k.layers.Activation("relu", name="after_leaky")(leaky)  # kept: a leaky ReLU's output can be negative
    clipped = k.layers.ReLU(max_value=1.0, name="clipped")(k.layers.ReLU(name="first")(inputs))  # kept: caps too
    last = k.layers.ReLU(name="last")(k.layers.ReLU(name="inner")(inputs))  # kept: a model output
    model = k.Model(inputs, [k.layers.Concatenate()([again, kept, clipped]), last])
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    dropped, lines = drop_repeated_relu(model, x, lambda layer: True)
    assert lines == ["again (a ReLU of capped's ReLU output)"]
    assert "again" not in {layer.name for layer in dropped.layers}
    for want, got in zip(model.predict(x, verbose=0), dropped.predict(x, verbose=0), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    same, none = drop_repeated_relu(model, x, lambda layer: layer.name != "again")
    assert none == [] and same is model
