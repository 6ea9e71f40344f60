"""Every preset on models shaped like the ones users bring: Conv -> BN -> ReLU with residual adds (ResNet-style)
and depthwise-separable blocks with a SeparableConv2D (DS-CNN / mini-Xception style).

The presets are the shipped recipes with their model swapped for an example CNN and their epochs cut to what
a test can afford; their gates are dropped (a one-epoch fine-tune proves nothing about accuracy). What must
hold is structural: the run completes, the final model is integer-only, and quantization-aware training gives
exactly the operators post-training quantization gives (BatchNorm folded: no MUL, ADD or QUANTIZE of its own).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import REPO

from edgepipe.keras_compat import keras, tfmot
from edgepipe.optimization import pipeline, saving
from edgepipe.tflite_model import TfliteModel

pytestmark = pytest.mark.slow

# Every quantization scheme on a BatchNorm model, and PTQ and PCQAT (which carries both preserving transforms)
# on both: each run costs about a minute, so the two single-preserve schemes run on one model each.
COMBINATIONS = [
    ("ptq-int8", "resnet"),
    ("ptq-int8", "ds_cnn"),
    ("prune-qat", "resnet"),
    ("cluster-qat", "ds_cnn"),
    ("prune-cluster-qat", "resnet"),
    ("prune-cluster-qat", "ds_cnn"),
]
EXPECTED_SCHEME = {"ptq-int8": "PTQ", "prune-qat": "PQAT", "cluster-qat": "CQAT", "prune-cluster-qat": "PCQAT"}
_runs: dict[tuple[str, str], tuple[Path, dict[str, Any]]] = {}


def preset_on(preset: str, model: str, folder: Path) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / f"{preset}.yaml").read_text())
    recipe["name"] = f"{preset}-{model}"
    recipe["model"] = {
        "source": f"edgepipe.examples.cnns:{model}",
        "train": {"epochs": 2, "learning_rate": 0.003},
        "split_separable_conv": model == "ds_cnn",
    }
    recipe["fine_tune"] = {"epochs": 1, "learning_rate": 0.0005}
    for stage in recipe["stages"]:
        stage.pop("fine_tune", None)
    recipe["convert"] = {"representative_samples": 64}
    recipe["gates"] = {"max_accuracy_drop": None}
    path = folder / f"{preset}-{model}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def run_of(tmp_path_factory: pytest.TempPathFactory) -> Any:
    def run(preset: str, model: str) -> tuple[Path, dict[str, Any]]:
        if (preset, model) not in _runs:
            folder = tmp_path_factory.mktemp(f"{preset}-{model}")
            outcome = pipeline.run(pipeline.prepare(preset_on(preset, model, folder)), folder / "run")
            _runs[preset, model] = (outcome.directory, outcome.result)
        return _runs[preset, model]

    return run


def ops(path: Path) -> collections.Counter[str]:
    return collections.Counter(op.name for op in TfliteModel.read(path).ops)


@pytest.mark.parametrize(("preset", "model"), COMBINATIONS)
def test_preset_gives_an_integer_only_model_with_folded_batchnorm(run_of: Any, preset: str, model: str) -> None:
    directory, result = run_of(preset, model)
    assert result["final"]["conformance"]["passed"], result["final"]["conformance"]
    assert result["stages"][-1]["details"]["scheme"] == EXPECTED_SCHEME[preset]
    final = ops(directory / "model.tflite")
    # The first stage's model is converted with post-training quantization (for ptq-int8 it is the final one).
    ptq = ops(directory / result["stages"][0]["tflite"]["path"])
    assert final == ptq, (final, ptq)
    assert not {"MUL", "QUANTIZE", "DEQUANTIZE"} & set(final)
    assert final["ADD"] == (2 if model == "resnet" else 0)  # the residual adds, nothing from BatchNorm
    assert final["CONV_2D"] == (6 if model == "resnet" else 4)


def test_separable_conv_is_split_before_the_stages(run_of: Any) -> None:
    _, result = run_of("prune-cluster-qat", "ds_cnn")
    assert result["baseline"]["rewrites"] == ["sep_conv -> sep_conv_dw (DepthwiseConv2D) + sep_conv (Conv2D 1x1)"]
    pruned = result["stages"][0]["details"]["layers"]
    assert "sep_conv_dw" in pruned and "sep_conv" in pruned


def test_each_saved_keras_model_loads_and_gives_its_recorded_accuracy(run_of: Any) -> None:
    from edgepipe import models
    from edgepipe.examples.digits import load

    directory, result = run_of("prune-cluster-qat", "resnet")
    data = load()
    entries = [result["baseline"], *result["stages"]]
    assert [Path(e["keras_model"]).name for e in entries] == [
        "model.keras",
        "model.keras",
        "model.keras",
        "model.savedmodel",
    ]
    for entry in entries:
        model = saving.load(directory / entry["keras_model"])
        assert models.accuracy(model, data) == pytest.approx(entry["keras_accuracy"], abs=1e-6), entry["keras_model"]
    with tfmot().quantization.keras.quantize_scope():  # as the README says a user may load it, traced or not
        model = keras().models.load_model(directory / entries[-1]["keras_model"], compile=False)
    assert models.accuracy(model, data) == pytest.approx(entries[-1]["keras_accuracy"], abs=1e-6)


def test_split_separable_conv_is_exact_for_sequential_and_functional_models() -> None:
    from edgepipe.examples import cnns
    from edgepipe.keras_compat import keras
    from edgepipe.optimization.rewrite import split_separable_conv

    k = keras()
    sample = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    sequential = k.Sequential(
        [
            k.layers.Input((8, 8, 1)),
            k.layers.SeparableConv2D(8, 3, strides=2, depth_multiplier=2, activation="relu", name="sep"),
            k.layers.Flatten(),
            k.layers.Dense(3, name="out"),
        ]
    )
    for model in (sequential, cnns.ds_cnn()):
        split, lines = split_separable_conv(model, sample)
        assert not [layer for layer in split.layers if type(layer).__name__ == "SeparableConv2D"]
        assert len(lines) == 1
        np.testing.assert_allclose(split(sample), model(sample), atol=1e-5)
    assert [type(layer).__name__ for layer in split_separable_conv(sequential, sample)[0].layers] == [
        "DepthwiseConv2D",
        "Conv2D",
        "Flatten",
        "Dense",
    ]


def test_nested_models_are_inlined_exactly() -> None:
    """A backbone used as one layer (Keras Applications' MobileNetV2 in a Sequential, as transfer learning
    builds it) and a nested branch whose layer names the outer model also uses, with two outputs."""
    from edgepipe.keras_compat import keras
    from edgepipe.optimization import channels
    from edgepipe.optimization.rewrite import inline_nested_models

    k = keras()
    rng = np.random.default_rng(0)
    backbone = k.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    transfer = k.Sequential([k.layers.Input((32, 32, 3)), backbone, k.layers.Dense(10, name="head")])
    images = rng.random((4, 32, 32, 3), dtype=np.float32)
    flat, lines = inline_nested_models(transfer, images)
    assert lines == [f"{backbone.name} ({len(backbone.layers)} layers) inlined into {transfer.name}"]
    assert not [layer for layer in flat.layers if isinstance(layer, k.Model)]
    np.testing.assert_allclose(flat(images), transfer(images), atol=1e-5)
    assert channels.analyze(flat).blocked() == {"head": ["head (a model output)"]}  # the backbone is prunable

    branch = k.Sequential(
        [k.layers.Input((8, 8, 1)), k.layers.Conv2D(4, 3, name="conv"), k.layers.GlobalAveragePooling2D(name="gap")],
        name="branch",
    )
    inputs = k.Input((8, 8, 1), name="image")
    own = k.layers.GlobalAveragePooling2D(name="gap")(k.layers.Conv2D(4, 3, name="conv")(inputs))
    nested = branch(inputs)
    outer = k.Model(inputs, [k.layers.Dense(3, name="o1")(k.layers.Add()([nested, own])), k.layers.Dense(2)(nested)])
    sample = rng.random((4, 8, 8, 1), dtype=np.float32)
    flat, _ = inline_nested_models(outer, sample)
    assert {"conv", "gap", "branch_conv", "branch_gap"} <= {layer.name for layer in flat.layers}
    for got, want in zip(flat(sample), outer(sample), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)

    # A nested model called twice (a siamese pair) stays one set of weights after inlining.
    left, right = k.Input((8, 8, 1), name="left"), k.Input((8, 8, 1), name="right")
    siamese = k.Model([left, right], k.layers.Subtract()([branch(left), branch(right)]))
    flat, lines = inline_nested_models(siamese, [sample, sample[::-1]])
    assert len(lines) == 1 and [type(layer).__name__ for layer in flat.layers].count("Conv2D") == 1
    np.testing.assert_allclose(flat([sample, sample[::-1]]), siamese([sample, sample[::-1]]), atol=1e-5)


NESTED = """
def transfer():
    from edgepipe.keras_compat import keras
    from edgepipe.examples.cnns import resnet

    k = keras()
    backbone = resnet()
    features = k.Model(backbone.input, backbone.get_layer("pool").output, name="backbone")
    return k.Sequential([k.layers.Input((8, 8, 1)), features, k.layers.Dense(10, name="head")], name="transfer")


def opaque():
    from edgepipe.keras_compat import keras

    k = keras()

    class Scaled(k.layers.Layer):  # no get_config: cannot be copied from its configuration
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def call(self, x):
            return x * self.factor

    inner = k.Sequential([k.layers.Input((8, 8, 1)), k.layers.Flatten(), Scaled(2.0)], name="inner")
    return k.Sequential([k.layers.Input((8, 8, 1)), inner, k.layers.Dense(10, name="head")])
"""


def test_a_transfer_learning_model_is_inlined_then_channel_pruned_and_quantization_aware_trained(
    tmp_path: Path,
) -> None:
    """Through the CLI: before, QAT ended in an internal error on the nested backbone and channel_prune found
    nothing to remove. A nested model that cannot be copied is named, before any training."""
    from conftest import channel_prune_qat, run_cli, write_recipe

    (tmp_path / "nested_models.py").write_text(NESTED)
    env = {"PYTHONPATH": str(tmp_path)}
    body = channel_prune_qat("transfer", "{source: nested_models:transfer, train: {epochs: 2, learning_rate: 0.003}}")
    done = run_cli("optimize", str(write_recipe(tmp_path, body)), "--out", str(tmp_path / "run"), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "note: backbone (21 layers) inlined into transfer" in done.stderr  # progress goes to stderr
    result = __import__("json").loads((tmp_path / "run" / "optimize.json").read_text())
    assert result["baseline"]["rewrites"] == ["backbone (21 layers) inlined into transfer"]
    assert result["stages"][0]["details"]["channels"]["stem_conv"] == {"before": 16, "after": 8}
    assert result["stages"][1]["details"]["scheme"] == "QAT" and result["final"]["conformance"]["passed"]

    opaque = body.replace("nested_models:transfer, train: {epochs: 2, learning_rate: 0.003}", "nested_models:opaque")
    done = run_cli(
        "optimize", str(write_recipe(tmp_path, opaque, "opaque.yaml")), "--out", str(tmp_path / "o"), env=env
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "model.source: the nested model(s) ['inner'] cannot be inlined" in done.stderr
    assert "hint: build the model flat" in done.stderr and "Traceback" not in done.stderr
