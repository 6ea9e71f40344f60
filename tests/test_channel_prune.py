"""``kind: channel_prune``: dependency groups on models shaped like users' (residual adds, depthwise-separable
blocks, Flatten -> Dense), exactness when the removed channels are zero, and a recipe through optimize."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_recipe

from edgepipe.examples.cnns import ds_cnn, resnet
from edgepipe.examples.digits import cnn
from edgepipe.keras_compat import keras
from edgepipe.optimization import channels
from edgepipe.tflite_model import TfliteModel

pytestmark = pytest.mark.slow


def _group_of(plan: channels.Plan, producer: str) -> channels.Group:
    return next(group for group in plan.groups if producer in group.producers)


def test_residual_branches_share_one_group_and_the_output_layer_is_blocked() -> None:
    plan = channels.analyze(resnet())
    stem = _group_of(plan, "stem_conv")
    assert sorted(stem.producers) == ["block1b_conv", "stem_conv"]  # tied by block1_add
    assert sorted(stem.sliced) == ["block1b_bn", "stem_bn"]
    assert {name for name, _ in stem.consumers} == {"block1a_conv", "block2a_conv", "block2_proj_conv"}
    assert sorted(_group_of(plan, "block2b_conv").producers) == ["block2_proj_conv", "block2b_conv"]
    assert _group_of(plan, "logits").blocked_by == ["logits (a model output)"]


def test_depthwise_follows_its_producer_and_a_separable_conv_is_named_not_pruned() -> None:
    plan = channels.analyze(ds_cnn())
    assert "ds1_dw" in _group_of(plan, "stem_conv").sliced
    assert _group_of(plan, "ds2_pw_conv").blocked_by == ["sep_conv (SeparableConv2D)"]


def _concatenating() -> Any:
    """Two branches concatenated on the channel axis, then BatchNorm, a depthwise and a 1x1 convolution."""
    k = keras()
    inputs = k.Input((8, 8, 1))
    a = k.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs)
    b = k.layers.Conv2D(12, 3, padding="same", activation="relu", name="b")(inputs)
    x = k.layers.Concatenate(name="cat")([a, b])
    x = k.layers.BatchNormalization(name="cat_bn")(x)
    x = k.layers.DepthwiseConv2D(3, padding="same", name="cat_dw")(x)
    x = k.layers.Conv2D(8, 1, activation="relu", name="c")(x)
    return k.Model(inputs, k.layers.Dense(3, name="out")(k.layers.GlobalAveragePooling2D()(x)))


def test_a_concatenation_is_sliced_segment_by_segment() -> None:
    plan = channels.analyze(_concatenating())
    assert not _group_of(plan, "a").blocked_by and not _group_of(plan, "b").blocked_by
    assert plan.composite["cat_bn"][0] == "out" and plan.composite["c"][0] == "in"
    k = keras()
    inputs = k.Input((8, 8, 1))
    a = k.layers.Conv2D(4, 3, name="a")(inputs)
    merged = k.layers.Add(name="add")(
        [k.layers.Concatenate(name="cat")([a, a]), k.layers.Conv2D(8, 3, name="d")(inputs)]
    )
    model = k.Model(inputs, k.layers.Dense(3, name="out")(k.layers.GlobalAveragePooling2D()(merged)))
    assert _group_of(channels.analyze(model), "a").blocked_by, "an Add after a Concatenate must block, not prune"


def _zero_channels_and_prune(model: Any, zero: Any, criterion: str, ratio: float) -> tuple[Any, channels.Plan]:
    zero(model)
    plan = channels.analyze(model)
    plan = channels.decide(model, plan, channels.importance(model, plan, criterion), ratio, {}, False, 4, 4)
    return channels.rebuild(model, plan), plan


def test_removing_channels_that_are_exactly_zero_leaves_the_outputs_unchanged() -> None:
    """Conv -> BN -> ReLU with residual adds (BN gamma and beta zero: the channel is zero after the add), and a
    Sequential CNN whose Flatten feeds a Dense (zero filters and biases: zero after ReLU)."""
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 1), dtype=np.float32)
    drop = np.arange(0, 16, 2)  # half of every 16-channel group; the 32-channel groups lose 16

    def zero_bn(model: Any) -> None:
        for layer in model.layers:
            if type(layer).__name__ == "BatchNormalization" and not layer.name.startswith("logits"):
                weights = layer.get_weights()
                channels_here = weights[0].shape[0]
                doomed = drop if channels_here == 16 else np.arange(0, channels_here, 2)
                weights[0][doomed] = 0.0  # gamma
                weights[1][doomed] = 0.0  # beta
                layer.set_weights(weights)

    original = resnet()
    before = original.predict(x, verbose=0)
    pruned, _ = _zero_channels_and_prune(original, zero_bn, "bn_gamma", 0.5)
    assert np.allclose(pruned.predict(x, verbose=0), original.predict(x, verbose=0), atol=1e-5)
    assert not np.allclose(before, original.predict(x, verbose=0))  # the zeroing itself changed the model
    assert pruned.get_layer("stem_conv").filters == 8 and pruned.get_layer("block2b_conv").filters == 16
    assert pruned.count_params() < original.count_params() / 2

    def zero_filters(model: Any) -> None:
        for name in ("conv_1", "conv_2", "dense_1"):  # every group that will be pruned
            kernel, bias = model.get_layer(name).get_weights()
            doomed = np.arange(0, kernel.shape[-1], 2)
            kernel[..., doomed] = 0.0
            bias[doomed] = 0.0
            model.get_layer(name).set_weights([kernel, bias])

    concatenating = _concatenating()

    def zero_branches(model: Any) -> None:
        for name in ("a", "b", "c"):
            kernel, bias = model.get_layer(name).get_weights()
            doomed = np.arange(0, kernel.shape[-1], 2)
            kernel[..., doomed] = 0.0
            bias[doomed] = 0.0
            model.get_layer(name).set_weights([kernel, bias])

    pruned, _ = _zero_channels_and_prune(concatenating, zero_branches, "l1", 0.5)
    assert np.allclose(pruned.predict(x, verbose=0), concatenating.predict(x, verbose=0), atol=1e-5)
    assert [pruned.get_layer(n).filters for n in ("a", "b", "c")] == [4, 8, 4]
    assert pruned.get_layer("cat_dw").get_weights()[0].shape[2] == 12  # 4 + 8 kept, in segment order

    sequential = cnn()
    pruned, _ = _zero_channels_and_prune(sequential, zero_filters, "l1", 0.5)
    assert np.allclose(pruned.predict(x, verbose=0), sequential.predict(x, verbose=0), atol=1e-5)
    assert pruned.get_layer("conv_2").filters == 16
    assert pruned.get_layer("dense_1").get_weights()[0].shape[0] == sequential.get_layer("dense_1").input_shape[1] // 2


def test_the_fashion_cnn_prunes_through_batchnorm_pooling_and_flatten_exactly() -> None:
    """The Fashion-MNIST preset's model: Conv -> BN -> ReLU -> MaxPool blocks and a Flatten -> Dense head. With
    half of every block's BatchNorm gamma and beta zero, removing those channels changes no output."""
    from edgepipe.examples.fashion import conv_bn

    model = conv_bn(width=8)
    x = np.random.default_rng(1).random((8, 28, 28, 1), dtype=np.float32)

    def zero_bn(model: Any) -> None:
        for layer in model.layers:
            if type(layer).__name__ == "BatchNormalization":
                gamma, beta, *stats = layer.get_weights()
                gamma[::2], beta[::2] = 0.0, 0.0
                layer.set_weights([gamma, beta, *stats])

    pruned, plan = _zero_channels_and_prune(model, zero_bn, "bn_gamma", 0.5)
    assert np.allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert [pruned.get_layer(f"conv{i}_conv").filters for i in range(1, 5)] == [4, 4, 8, 8]
    assert pruned.get_layer("logits").get_weights()[0].shape[0] == 3 * 3 * 8  # Flatten rows of the kept channels
    assert list(plan.blocked()) == ["logits"]


def test_min_channels_and_rounding() -> None:
    assert channels._kept(16, 0.9, 4, 4) == 4  # never below min_channels
    assert channels._kept(16, 0.3, 4, 8) == 16  # 11.2 rounds up to 16: nothing to remove
    assert channels._kept(32, 0.5, 4, 8) == 16
    assert channels._kept(24, 0.5, 4, 8) == 16


def test_batchnorm_statistics_are_re_estimated_after_removal() -> None:
    """After rebuild, each BatchNorm's moving mean/variance describe what its (pruned) input now produces."""
    k = keras()
    model = resnet(width=8)
    model.build((None, 8, 8, 1))
    x = np.random.default_rng(0).random((300, 8, 8, 1), dtype=np.float32)
    bn = model.get_layer("block1a_bn")
    bn.set_weights([w * 0 + 5.0 for w in bn.get_weights()])  # statistics that describe nothing
    used = channels.recalibrate_batchnorm(model, x, limit=256, batch_size=64)
    assert used == 256
    conv_out = k.Model(model.input, model.get_layer("block1a_conv").output).predict(x[:256], verbose=0)
    moving_mean, moving_variance = bn.get_weights()[2:]
    np.testing.assert_allclose(moving_mean, conv_out.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)
    batch_variances = [conv_out[i : i + 64].var(axis=(0, 1, 2)) for i in range(0, 256, 64)]
    np.testing.assert_allclose(moving_variance, np.mean(batch_variances, axis=0), rtol=2e-3, atol=1e-4)
    assert bn.momentum == 0.9  # the layer's own momentum is back for fine-tuning


RECIPE = """
name: channel-prune-qat
model: {source: edgepipe.examples.cnns:resnet, train: {epochs: 2, learning_rate: 0.003}}
data: {source: edgepipe.examples.digits:load}
fine_tune: {epochs: 1, learning_rate: 0.001}
stages:
  - {kind: channel_prune, ratio: 0.5, criterion: bn_gamma, round_to: 4, steps: 2}
  - {kind: qat}
convert: {representative_samples: 64}
gates: {max_accuracy_drop: 50}
"""


def test_a_channel_prune_recipe_gives_a_smaller_int8_model(tmp_path: Path) -> None:
    from edgepipe.optimization import pipeline

    outcome = pipeline.run(pipeline.prepare(write_recipe(tmp_path, RECIPE)), tmp_path / "run")
    record = outcome.result
    stage = record["stages"][0]
    assert stage["kind"] == "channel_prune"
    details = stage["details"]
    assert details["channels"]["stem_conv"] == {"before": 16, "after": 8}
    assert details["channels"]["block2a_conv"] == {"before": 32, "after": 16}
    assert "logits" in next(iter(details["left_unpruned"]))
    assert details["batchnorm_recalibrated_on"] == 1347  # all training samples (fewer than the 2048 cap)
    assert record["final"]["conformance"]["passed"]
    converted = TfliteModel.read(outcome.directory / "model.tflite")  # the plan reached the board's file
    filters = sorted(converted.op_inputs(op)[1].shape[0] for op in converted.ops if op.name == "CONV_2D")
    assert filters == [8, 8, 8, 16, 16, 16], filters
    macs = {name: record["analysis"][name]["total"]["macs"] for name in ("float", "final")}
    assert macs["final"] < macs["float"] / 2, macs  # fewer MACs on the board, not only fewer bytes
