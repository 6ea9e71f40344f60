"""Layers no full-integer model can come out of, refused by name before any training, with what to use instead.

Each ended late before: GroupNormalization with an internal error measuring the float model, a Masking layer
with a converter SIGSEGV after training, an Embedding(mask_zero=True), a Conv3D or an ELU with "not
integer-only" after training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli, write_recipe
from test_user_layers import MODELS

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("factory", "data", "said", "fix"),
    [
        # was exit 70 measuring the float model (its free-batch BROADCAST_TO fails in the interpreter); at a
        # fixed batch its SQUARE stays float in the int8 model
        ("grouped", "edgepipe.examples.digits:load", "groups (GroupNormalization)", "use LayerNormalization"),
        # was a SIGSEGV in the converter, after training
        ("masked", "models:rows", "masking (Masking): TFLite has no masks", "remove the Masking layer"),
        # was "not integer-only: CAST ..." after training
        ("masked_ids", "models:tokens", "embedding (Embedding, mask_zero=True)", "mask_zero=False"),
        # the float model trained, then its conversion failed on a tf.DenseBincount / tf.HashTableV2
        (
            "encoded",
            "models:two_columns",
            "category_encoding (CategoryEncoding): TFLite has no operator for its "
            "counting (tf.DenseBincount): even the float model would not convert; integer_lookup (IntegerLookup)",
            "encode in the data function instead",
        ),
        # were "not integer-only: CAST ..." after training; the ThresholdedReLU's fix named a ReLU with a threshold,
        # which the converter writes with the same CAST
        (
            "thresholds",
            "edgepipe.examples.digits:load",
            "shifted (ReLU, threshold=0.2): its comparison with the threshold becomes GREATER -> float CAST "
            "(not integer-only); gate (ThresholdedReLU): its comparison becomes a float CAST",
            "use ReLU without a threshold (max_value and negative_slope convert: RELU6, LEAKY_RELU)",
        ),
        # were float CONV_3D and ELU islands (and a converter failure on tf.MaxPool3D) after training; every
        # layer named at once, each kind with its reason and fix
        (
            "video",
            "models:clips",
            "conv3d (Conv3D): TFLite's CONV_3D kernel is float only (the model would keep DEQUANTIZE -> CONV_3D -> "
            "QUANTIZE); max_pooling3d (MaxPooling3D): TFLite has no 3-D pooling operator (the converter fails on "
            "tf.MaxPool3D); elu (ELU): the converter keeps ELU in float",
            "stack the frames on the channel axis and use Conv2D, or run a Conv2D on each frame (TimeDistributed) "
            "and mix the frames with a Conv1D over time ((2+1)-D); pool each frame with MaxPooling2D "
            "(TimeDistributed), or use GlobalMaxPooling3D, which converts; use selu",
        ),
    ],
)
def test_a_layer_no_integer_model_can_come_from_is_refused_before_training(
    tmp_path: Path, factory: str, data: str, said: str, fix: str
) -> None:
    (tmp_path / "models.py").write_text(MODELS)
    recipe = f"""
    name: refused
    model: {{source: "models:{factory}", train: {{epochs: 1}}}}
    data: {{source: "{data}"}}
    stages: [{{kind: ptq}}]
    """
    done = run_cli("optimize", str(write_recipe(tmp_path, recipe)), "--out", str(tmp_path / "run"))
    assert done.returncode == 4, done.stderr[-3000:]
    words = " ".join(done.stderr.split())
    assert f"full-integer conversion of {said}" in words and fix in words, words
    assert "training the float model" not in words and "Traceback" not in words and not (tmp_path / "run").exists()


CONSTANT_INPUT = '''
import numpy as np


def positions():
    """A ViT-like model adding position embeddings computed outside the model: a constant, never trained."""
    from edgepipe.keras_compat import keras
    k = keras()
    inputs = k.Input((8, 8, 1))
    x = k.layers.Reshape((16, 8))(k.layers.Conv2D(8, 2, strides=2)(inputs))
    fixed = k.layers.Embedding(16, 8)(np.arange(16)[None])
    x = k.layers.Add(name="with_positions")([x, fixed])
    return k.Model(inputs, k.layers.Dense(10)(k.layers.GlobalAveragePooling1D()(x)))
'''


def test_a_layer_called_on_a_tensor_computed_outside_the_model_is_refused_when_it_loads(tmp_path: Path) -> None:
    """Every stage ended with an internal error (exit 70: Keras' clone_model cannot rebuild the model)."""
    (tmp_path / "models.py").write_text(CONSTANT_INPUT)
    recipe = """
    name: constant
    model: {source: "models:positions", train: {epochs: 1}}
    data: {source: edgepipe.examples.digits:load}
    stages: [{kind: ptq}]
    """
    done = run_cli("optimize", str(write_recipe(tmp_path, recipe)), "--out", str(tmp_path / "run"))
    assert done.returncode == 3, done.stderr[-3000:]
    words = " ".join(done.stderr.split())
    assert "error: model 'model': with_positions (Add) takes a constant tensor beside the model's own" in words
    assert "hint: compute it inside the model: a layer of your own that holds it as a weight" in words
    assert "training the float model" not in words and "Traceback" not in words and not (tmp_path / "run").exists()
