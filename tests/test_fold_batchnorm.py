"""A BatchNorm after a transposed or separable convolution, which TF-MOT's QAT does not fold, is folded into it
by the qat stage: the int8 model kept a MUL and an ADD per such BatchNorm that the float model's converter
folds away (Keras' Oxford-pets U-Net at 8x8: 6 MULs and 6 ADDs; paired on this machine, 10.8 % slower)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import qat_of, run_cli, write_recipe

from edgepipe.keras_compat import keras
from edgepipe.optimization.fold_batchnorm import fold_batchnorm
from edgepipe.tflite_model import TfliteModel

pytestmark = pytest.mark.slow


def _with_statistics(model: Any, seed: int = 0) -> Any:
    """Give every BatchNorm moving statistics and a scale and shift far from their initial values."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([rng.uniform(0.5, 2.0, w.shape) if "variance" in w.name or "gamma" in w.name
                               else rng.normal(0, 0.5, w.shape) for w in layer.weights])  # fmt: skip
    return model


def test_folding_is_exact_and_leaves_what_it_cannot_fold() -> None:
    k = keras()
    image = k.Input((4, 4, 2))
    up = k.layers.Conv2DTranspose(6, 2, strides=2, use_bias=False, name="up")(image)
    up = k.layers.BatchNormalization(name="up_bn")(up)
    sep = k.layers.BatchNormalization(name="sep_bn")(k.layers.SeparableConv2D(6, 3, padding="same", name="sep")(up))
    relu = k.layers.Conv2DTranspose(6, 3, padding="same", activation="relu", name="activated")(sep)
    relu = k.layers.BatchNormalization(name="after_relu")(relu)  # the activation comes between: not folded
    shared = k.layers.Conv2DTranspose(6, 1, name="read_twice")(relu)
    twice = k.layers.Add()([k.layers.BatchNormalization(name="one_reader")(shared), shared])  # read twice: kept
    series = k.Input((6, 3))
    seq = k.layers.BatchNormalization(name="seq_bn")(k.layers.Conv1DTranspose(4, 2, strides=2, name="seq_up")(series))
    pooled = [k.layers.GlobalAveragePooling2D()(twice), k.layers.GlobalAveragePooling1D()(seq)]
    model = _with_statistics(k.Model([image, series], k.layers.Concatenate()(pooled)))
    rng = np.random.default_rng(1)
    sample = [rng.random((8, 4, 4, 2), dtype=np.float32), rng.random((8, 6, 3), dtype=np.float32)]
    folded, lines = fold_batchnorm(model, sample, lambda layer: True)
    assert lines == [
        "up_bn into up (Conv2DTranspose)", "sep_bn into sep (SeparableConv2D)", "seq_bn into seq_up (Conv1DTranspose)"
    ]  # fmt: skip
    names = {layer.name for layer in folded.layers}
    assert not names & {"up_bn", "sep_bn", "seq_bn"} and {"after_relu", "one_reader"} <= names
    assert folded.get_layer("up").use_bias  # it had none: the BatchNorm's shift became its bias
    want, got = model.predict(sample, verbose=0), folded.predict(sample, verbose=0)
    assert np.abs(want - got).max() <= 1e-4 * max(np.abs(want).max(), 1.0)
    same, none = fold_batchnorm(model, sample, lambda layer: layer.name not in ("up", "sep_bn", "seq_bn"))
    assert none == [] and same is model  # a layer the stage leaves out is not folded


DECODER = '''
def decoder():
    """A digits classifier through a decoder block: Conv2DTranspose -> BatchNorm -> ReLU."""
    from edgepipe.keras_compat import keras
    k = keras()
    inputs = k.Input((8, 8, 1))
    x = k.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = k.layers.Conv2DTranspose(8, 2, strides=2, use_bias=False, name="up")(x)
    x = k.layers.ReLU()(k.layers.BatchNormalization(name="up_bn")(x))
    return k.Model(inputs, k.layers.Dense(10)(k.layers.GlobalAveragePooling2D()(x)))
'''


def test_qat_of_a_decoder_block_converts_without_a_batchnorm_left(tmp_path: Path) -> None:
    done, details = qat_of(tmp_path, DECODER, "decoder")
    assert "BatchNorm folded (TF-MOT's QAT does not fold it there): up_bn into up" in " ".join(done.stderr.split())
    assert details["folded_batchnorms"] == ["up_bn into up (Conv2DTranspose)"]
    ops = Counter(op.name for op in TfliteModel.read(tmp_path / "run" / "model.tflite").ops)
    assert ops["TRANSPOSE_CONV"] == 1 and ops["MUL"] == 0 and ops["ADD"] == 0, ops  # as in the float model


def test_prune_cluster_qat_leaves_a_layer_only_plain_qat_takes_to_the_converter(tmp_path: Path) -> None:
    """PCQAT refused the decoder's Conv2DTranspose ("does not support 'up' (Conv2DTranspose)"): TF-MOT's
    cluster-preserving registry has none. It is left out, frozen with its zeros, and not folded under PCQAT."""
    (tmp_path / "models.py").write_text(DECODER)
    recipe = """
    name: decoder-pcqat
    model: {source: "models:decoder", train: {epochs: 3, learning_rate: 0.003}}
    data: {source: edgepipe.examples.digits:load}
    fine_tune: {epochs: 1, learning_rate: 0.0005}
    stages: [{kind: prune, target_sparsity: 0.5}, {kind: cluster, clusters: 8}, {kind: qat}]
    gates: {max_accuracy_drop: null}
    """
    done = run_cli("optimize", str(write_recipe(tmp_path, recipe)), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    said = " ".join(done.stderr.split())
    assert "up: TF-MOT's PCQAT cannot take this layer (plain QAT can); left out of QAT" in said
    assert "BatchNorm folded" not in said  # a scale per channel would break the clusters PCQAT keeps
    details = json.loads((tmp_path / "run" / "optimize.json").read_text())["stages"][2]["details"]
    assert details["scheme"] == "PCQAT" and "up" in details["left_to_converter"] and "up" in details["frozen"]
    assert details["folded_batchnorms"] == []
