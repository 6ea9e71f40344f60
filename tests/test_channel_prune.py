"""``kind: channel_prune``: dependency groups on models shaped like users' (residual adds, depthwise-separable
blocks, Flatten -> Dense), exactness when the removed channels are zero, and a recipe through optimize."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from channel_kit import group_of, zero_half_of_every_group
from conftest import channel_prune_qat, run_cli, write_recipe

from edgepipe.examples.cnns import ds_cnn, resnet
from edgepipe.examples.digits import cnn
from edgepipe.keras_compat import keras, tf
from edgepipe.models import reestimate_batchnorm
from edgepipe.optimization import channels
from edgepipe.tflite_model import TfliteModel

pytestmark = pytest.mark.slow


def test_residual_branches_share_one_group_and_the_output_layer_is_blocked() -> None:
    plan = channels.analyze(resnet())
    stem = group_of(plan, "stem_conv")
    assert sorted(stem.producers) == ["block1b_conv", "stem_conv"]  # tied by block1_add
    assert sorted(stem.sliced) == ["block1b_bn", "stem_bn"]
    assert {name for name, _ in stem.consumers} == {"block1a_conv", "block2a_conv", "block2_proj_conv"}
    assert sorted(group_of(plan, "block2b_conv").producers) == ["block2_proj_conv", "block2b_conv"]
    assert group_of(plan, "logits").blocked_by == ["logits (a model output)"]


def test_depthwise_follows_its_producer_and_a_separable_conv_reads_and_opens_a_group() -> None:
    plan = channels.analyze(ds_cnn())
    assert "ds1_dw" in group_of(plan, "stem_conv").sliced
    assert not group_of(plan, "ds2_pw_conv").blocked_by
    assert ("sep_conv", 0) in group_of(plan, "ds2_pw_conv").consumers
    assert group_of(plan, "sep_conv").sliced == ["sep_bn"] and not group_of(plan, "sep_conv").blocked_by


def test_a_separable_convolution_is_pruned_then_trained_with_quantization_under_its_own_name(tmp_path: Path) -> None:
    """Without model.split_separable_conv: the DS-CNN's SeparableConv2D loses half its filters and the inputs it
    reads, and QAT splits it into layers named after it (TF-MOT's own split named them depthwise_conv2d_1 and
    conv2d_1, which the weights column showed as whole tensor names)."""
    model = "{source: edgepipe.examples.cnns:ds_cnn, train: {epochs: 2, learning_rate: 0.003}}"
    done = run_cli(
        "optimize", str(write_recipe(tmp_path, channel_prune_qat("ds", model))), "--out", str(tmp_path / "run")
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "optimize.json").read_text())
    prune, qat = record["stages"]
    assert prune["details"]["channels"]["sep_conv"] == {"before": 64, "after": 32}
    assert prune["details"]["channels"]["ds2_pw_conv"] == {"before": 32, "after": 16}
    assert qat["details"]["split_separable"] == ["sep_conv -> sep_conv_dw (DepthwiseConv2D) + sep_conv (Conv2D 1x1)"]
    shapes = {row["layer"]: (row["op"], row["shape"]) for row in record["final"]["weights"]}
    assert shapes["sep_conv_dw"] == ("DEPTHWISE_CONV_2D", [1, 3, 3, 16])  # the 16 channels ds2_pw_conv kept
    assert shapes["sep_conv"] == ("CONV_2D", [32, 1, 1, 16])
    assert record["final"]["conformance"]["passed"]


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
    assert not group_of(plan, "a").blocked_by and not group_of(plan, "b").blocked_by
    assert plan.composite["cat_bn"][0] == "out" and plan.composite["c"][0] == "in"
    k = keras()
    inputs = k.Input((8, 8, 1))
    a = k.layers.Conv2D(4, 3, name="a")(inputs)
    merged = k.layers.Add(name="add")(
        [k.layers.Concatenate(name="cat")([a, a]), k.layers.Conv2D(8, 3, name="d")(inputs)]
    )
    model = k.Model(inputs, k.layers.Dense(3, name="out")(k.layers.GlobalAveragePooling2D()(merged)))
    assert group_of(channels.analyze(model), "a").blocked_by, "an Add after a Concatenate must block, not prune"


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
    group = channels.Group
    assert channels._kept(group(16), 0.9, 4, 4) == 4  # never below min_channels
    assert channels._kept(group(16), 0.3, 4, 8) == 16  # 11.2 rounds up to 16: nothing to remove
    assert channels._kept(group(32), 0.5, 4, 8) == 16
    assert channels._kept(group(24), 0.5, 4, 8) == 16
    # Read by a grouped convolution: a multiple of its groups as well (RegNet's 3 groups of 8; 4 and 6 -> 12)
    assert channels._kept(group(24, grouped_by=[3]), 0.5, 4, 4) == 12
    assert channels._kept(group(48, grouped_by=[4, 6]), 0.6, 1, 1) == 24
    assert channels._kept(group(24, grouped_by=[3]), 0.9, 4, 1) == 6  # min_channels 4, rounded up to 2 per part


def test_batchnorm_statistics_are_re_estimated_after_removal() -> None:
    """After rebuild, each BatchNorm's moving mean/variance describe what its (pruned) input now produces."""
    k = keras()
    model = resnet(width=8)
    model.build((None, 8, 8, 1))
    x = np.random.default_rng(0).random((300, 8, 8, 1), dtype=np.float32)
    bn = model.get_layer("block1a_bn")
    bn.set_weights([w * 0 + 5.0 for w in bn.get_weights()])  # statistics that describe nothing
    used = reestimate_batchnorm(model, x, limit=256, batch_size=64)
    assert used == 256
    conv_out = k.Model(model.input, model.get_layer("block1a_conv").output).predict(x[:256], verbose=0)
    moving_mean, moving_variance = bn.get_weights()[2:]
    # float32 sums in another order differ by ~2e-4 (seen once in a full run); the statistics before were 5.0
    np.testing.assert_allclose(moving_mean, conv_out.mean(axis=(0, 1, 2)), rtol=1e-3, atol=5e-4)
    batch_variances = [conv_out[i : i + 64].var(axis=(0, 1, 2)) for i in range(0, 256, 64)]
    np.testing.assert_allclose(moving_variance, np.mean(batch_variances, axis=0), rtol=2e-3, atol=1e-4)
    assert bn.momentum == 0.9  # the layer's own momentum is back for fine-tuning

    # A backbone nested as one layer of another model, as transfer learning builds it, is re-estimated too.
    inner = resnet(width=8)
    outer = k.Sequential([k.layers.Input((8, 8, 1)), inner, k.layers.Dense(3)])
    nested = inner.get_layer("block1a_bn")
    nested.set_weights([w * 0 + 5.0 for w in nested.get_weights()])
    assert reestimate_batchnorm(outer, x, limit=256, batch_size=64) == 256
    inner_out = k.Model(inner.input, inner.get_layer("block1a_conv").output).predict(x[:256], verbose=0)
    np.testing.assert_allclose(nested.get_weights()[2], inner_out.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)


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
    # After model.train the float model's statistics are the training data's, not lagging moving averages.
    assert record["baseline"]["batchnorm_recalibrated_on"] == 1347
    trained = keras().models.load_model(outcome.directory / "float" / "model.keras", compile=False)
    from edgepipe.examples.digits import load

    produced = keras().Model(trained.input, trained.get_layer("stem_conv").output).predict(load().x_train[0], verbose=0)
    moving_mean = trained.get_layer("stem_bn").get_weights()[2]
    np.testing.assert_allclose(moving_mean, produced.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)
    assert record["final"]["conformance"]["passed"]
    converted = TfliteModel.read(outcome.directory / "model.tflite")  # the plan reached the board's file
    filters = sorted(converted.op_inputs(op)[1].shape[0] for op in converted.ops if op.name == "CONV_2D")
    assert filters == [8, 8, 8, 16, 16, 16], filters
    macs = {name: record["analysis"][name]["total"]["macs"] for name in ("float", "final")}
    assert macs["final"] < macs["float"] / 2, macs  # fewer MACs on the board, not only fewer bytes


def _squeeze_excite() -> Any:
    """Conv -> BN -> hard-swish written with TensorFlow functions (Keras records ``TFOpLambda`` layers), then a
    squeeze-and-excitation block (GlobalAveragePooling2D -> Reshape(1, 1, C) -> two 1x1 convolutions ->
    Multiply), as in MobileNetV3 and EfficientNet; one branch scaled by a per-channel constant."""
    k, t = keras(), tf()
    inputs = k.Input((8, 8, 1))
    x = k.layers.Conv2D(16, 3, padding="same", use_bias=False, name="expand")(inputs)
    x = k.layers.BatchNormalization(name="expand_bn")(x)
    x = x * t.nn.relu6(x + 3.0) * (1.0 / 6.0)  # hard-swish
    squeeze = k.layers.GlobalAveragePooling2D(name="se_pool")(x)
    squeeze = k.layers.Reshape((1, 1, 16), name="se_reshape")(squeeze)
    squeeze = k.layers.Conv2D(4, 1, activation="relu", name="se_reduce")(squeeze)
    squeeze = k.layers.Conv2D(16, 1, activation="sigmoid", name="se_expand")(squeeze)
    x = k.layers.Multiply(name="se_excite")([x, squeeze])
    x = k.layers.Conv2D(8, 1, name="project")(x)
    scaled = k.layers.Conv2D(8, 3, padding="same", name="scaled")(inputs) * np.arange(1.0, 9.0, dtype=np.float32)
    x = k.layers.Concatenate(name="join")([k.layers.GlobalAveragePooling2D()(x), k.layers.Flatten()(scaled)])
    return k.Model(inputs, k.layers.Dense(3, name="out")(x))


def test_squeeze_excitation_and_elementwise_functions_are_traced_and_a_per_channel_constant_blocks() -> None:
    model = _squeeze_excite()
    plan = channels.analyze(model)
    expand = group_of(plan, "expand")
    assert not expand.blocked_by and sorted(expand.producers) == ["expand", "se_expand"]  # tied by the Multiply
    assert "se_reshape" in expand.sliced and {n for n, _ in expand.consumers} == {"se_reduce", "project"}
    scaled = group_of(plan, "scaled").blocked_by
    assert scaled and "(TFOpLambda math.multiply:" in scaled[0]
    pruned = channels.rebuild(model, channels.decide(model, plan, channels.importance(model, plan, "l1"),
                                                     0.5, {}, False, 1, 4))  # fmt: skip
    assert pruned.get_layer("expand").filters == 8 and pruned.get_layer("se_expand").filters == 8
    assert pruned.get_layer("se_reshape").target_shape == (1, 1, 8) and pruned.get_layer("scaled").filters == 8
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    assert pruned.predict(x, verbose=0).shape == (4, 3)

    k = keras()  # a one-channel gate broadcast over 16 channels: the two cannot share channels
    inputs = k.Input((8, 8, 1))
    gate = k.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="gate")(inputs)
    gated = k.layers.Multiply(name="gated")([k.layers.Conv2D(16, 3, padding="same", name="wide")(inputs), gate])
    plan = channels.analyze(k.Model(inputs, k.layers.Dense(3)(k.layers.GlobalAveragePooling2D()(gated))))
    assert (
        group_of(plan, "wide").blocked_by
        == group_of(plan, "gate").blocked_by
        == ["gated (Multiply of 16 and 1 channels: broadcasts the narrower input across the other's channels)"]
    )

    shared = k.layers.Conv2D(8, 3, padding="same", name="shared")  # one set of weights on two branches
    a = k.layers.Conv2D(8, 3, padding="same", name="a")(inputs)
    b = k.layers.Conv2D(8, 3, padding="same", name="b")(inputs)
    merged = k.layers.Concatenate(name="both")([shared(a), shared(b)])
    plan = channels.analyze(k.Model(inputs, k.layers.Dense(3)(k.layers.GlobalAveragePooling2D()(merged))))
    assert group_of(plan, "a").blocked_by == ["shared (called 2 times: shared weights)"]
    assert group_of(plan, "b").blocked_by == ["shared (called 2 times: shared weights)"]
    assert not [g for g in plan.groups if "shared" in g.producers]  # its own filters are not a group either

    grouped = k.layers.Conv2D(16, 3, padding="same", groups=4, name="grouped")(a)  # ResNeXt, RegNet: followed
    plan = channels.analyze(k.Model(inputs, k.layers.Dense(3)(k.layers.GlobalAveragePooling2D()(grouped))))
    assert not group_of(plan, "a").blocked_by and group_of(plan, "a").parts == 4
    pair = k.layers.Concatenate(name="pair")([a, b])  # 8 + 8 channels in 4 parts of 4: a part would span both
    straddling = k.layers.Conv2D(16, 3, padding="same", groups=4, name="straddling")(pair)
    plan = channels.analyze(k.Model(inputs, k.layers.Dense(3)(k.layers.GlobalAveragePooling2D()(straddling))))
    assert group_of(plan, "a").blocked_by == [
        "straddling (Conv2D, grouped (groups=4), reading a Concatenate: its groups would straddle the parts)"
    ]


def _convnext_block() -> Any:
    """A ConvNeXt-style block (depthwise conv, then a Dense MLP on every pixel, a residual add) and a transformer
    MLP on the resulting sequence of 16 pixels."""
    k = keras()
    inputs = k.Input((8, 8, 1))
    x = k.layers.Conv2D(16, 2, strides=2, name="stem")(inputs)
    x = k.layers.BatchNormalization()(x)
    h = k.layers.DepthwiseConv2D(3, padding="same")(x)
    h = k.layers.Dense(64, activation="gelu", name="up")(h)
    x = k.layers.Add()([x, k.layers.Dense(16, name="down")(h)])
    s = k.layers.Reshape((16, 16), name="to_sequence")(x)
    s = k.layers.Dense(8, name="seq_down")(k.layers.Dense(32, activation="relu", name="seq_up")(s))
    return k.Model(inputs, k.layers.Dense(10, name="logits")(k.layers.GlobalAveragePooling1D()(s)))


def test_a_dense_on_pixels_or_a_sequence_prunes_like_a_1x1_convolution_exactly() -> None:
    """It was left whole ('Dense on a 3-D input'), and so was every Add it fed: a ConvNeXt or transformer MLP,
    the most prunable part of those models, kept every channel."""
    rng = np.random.default_rng(0)
    model = _convnext_block()
    x = rng.random((16, 8, 8, 1), dtype=np.float32)
    doomed = zero_half_of_every_group(model, rng)
    reference = model.predict(x, verbose=0)
    plan = channels.analyze(model)
    assert {g.producers[0]: g.blocked_by for g in plan.groups} == {
        "stem": [], "up": [], "seq_up": [], "seq_down": [], "logits": ["logits (a model output)"]
    }  # the Reshape (4, 4, 16) -> (16, 16) keeps the channels last: it is sliced with them  # fmt: skip
    assert "to_sequence" in group_of(plan, "stem").sliced
    assert sorted(group_of(plan, "stem").producers) == ["down", "stem"]  # the residual add ties them
    assert len(doomed) == 4
    pruned = channels.rebuild(model, channels.decide(model, plan, channels.importance(model, plan, "l1"),
                                                     0.5, {}, False, 1, 1))  # fmt: skip
    units = {name: pruned.get_layer(name).units for name in ("up", "down", "seq_up", "seq_down")}
    assert units == {"up": 32, "down": 8, "seq_up": 16, "seq_down": 4}
    assert pruned.get_layer("stem").filters == 8 and pruned.get_layer("to_sequence").target_shape == (16, 8)
    assert np.abs(pruned.predict(x, verbose=0) - reference).max() <= 1e-5 * np.abs(reference).max()


def test_a_layer_normalization_or_a_lambda_in_the_way_is_named_with_its_reason() -> None:
    k = keras()
    inputs = k.Input((8, 8))
    a = k.layers.LayerNormalization(name="norm")(k.layers.Conv1D(16, 3, name="a")(inputs))
    b = k.layers.Lambda(lambda t: k.activations.softmax(t), name="spread")(k.layers.Conv1D(16, 3, name="b")(inputs))
    c = k.layers.Lambda(lambda t: t[..., :8], name="first_half")(k.layers.Conv1D(16, 3, name="c")(inputs))
    merged = k.layers.Concatenate()([k.layers.GlobalAveragePooling1D()(t) for t in (a, b, c)])
    plan = channels.analyze(k.Model(inputs, k.layers.Dense(3)(merged)))
    assert group_of(plan, "a").blocked_by == [
        "norm (LayerNormalization: its mean and variance span the channels, so removing one changes the others)"
    ]
    why = "Lambda: Python code that does not act on each channel alone (tried on random inputs)"
    assert group_of(plan, "b").blocked_by == [f"spread ({why})"]
    assert group_of(plan, "c").blocked_by == [f"first_half ({why})"]
    image = k.Input((8, 8, 1))
    doubled = k.layers.DepthwiseConv2D(3, depth_multiplier=2, name="doubled")(k.layers.Conv2D(4, 3, name="d")(image))
    plan = channels.analyze(k.Model(image, k.layers.Dense(3)(k.layers.GlobalAveragePooling2D()(doubled))))
    assert group_of(plan, "d").blocked_by == [
        "doubled (DepthwiseConv2D, depth_multiplier=2: each input channel makes 2 outputs, which the next layer "
        "reads as channels of their own)"
    ]


def test_a_lambda_acting_on_each_channel_alone_is_followed_exactly() -> None:
    """A TCN's ``t[:, -1, :]`` (the last time step) and an arithmetic Lambda: channel pruning stopped at every
    Lambda ("Python code, whose use of the channels cannot be read"), leaving the convolutions before it whole.
    One whose zero is not zero (``t - 1``) still stops it, with the reason."""
    k = keras()
    rng = np.random.default_rng(0)
    inputs = k.Input((12, 6))
    h = k.layers.Conv1D(16, 3, padding="causal", activation="relu", name="conv")(inputs)
    h = k.layers.Conv1D(16, 3, padding="causal", dilation_rate=2, name="dilated")(h)
    h = k.layers.Lambda(lambda t: 2.0 * k.activations.relu(t), name="double")(h)
    shifted = k.layers.Lambda(lambda t: t - 1.0, name="shift")(k.layers.Conv1D(16, 3, name="side")(inputs))
    last = k.layers.Lambda(lambda t: t[:, -1, :], name="last")
    side = k.layers.Dense(4, name="side_logits")(k.layers.GlobalAveragePooling1D()(shifted))
    model = k.Model(inputs, k.layers.Add(name="sum")([k.layers.Dense(4, name="logits")(last(h)), side]))
    plan = channels.analyze(model)
    why = "Lambda: Python code that does not act on each channel alone (tried on random inputs)"
    assert {g.producers[0]: g.blocked_by for g in plan.groups} == {
        "conv": [], "dilated": [], "side": [f"shift ({why})"], "logits": ["sum (a model output)"]
    }  # a removed channel would come out of t - 1 as -1 for the next layer  # fmt: skip
    x = rng.random((8, 12, 6), dtype=np.float32)
    zero_half_of_every_group(model, rng)
    reference = model.predict(x, verbose=0)
    pruned = channels.rebuild(model, channels.decide(model, plan, channels.importance(model, plan, "l1"),
                                                     0.5, {}, False, 1, 1))  # fmt: skip
    assert [pruned.get_layer(name).filters for name in ("conv", "dilated")] == [8, 8]
    assert np.abs(pruned.predict(x, verbose=0) - reference).max() <= 1e-5 * np.abs(reference).max()


APPLICATIONS = {  # Keras Applications at 32x32, untrained, logits out: the architectures users start from
    "MobileNetV2": lambda a: a.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
                                           classifier_activation=None),
    "MobileNetV3Small": lambda a: a.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=10,
                                                     classifier_activation=None),
    "EfficientNetB0": lambda a: a.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=10,
                                                 classifier_activation=None),
    "DenseNet121": lambda a: a.DenseNet121(input_shape=(32, 32, 3), weights=None, classes=10,
                                           classifier_activation=None),
    "RegNetX002": lambda a: a.RegNetX002(input_shape=(32, 32, 3), weights=None, classes=10,
                                         classifier_activation=None),  # grouped convolutions
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_applications_prune_exactly_when_the_removed_channels_are_zero(name: str) -> None:
    """Inverted residuals (MobileNetV2), hard-swish and squeeze-excitation (MobileNetV3, EfficientNet), dense
    concatenations (DenseNet), grouped convolutions (RegNet): every group but the logits is pruned, and removing
    exactly the zeroed half of each leaves the logits unchanged."""
    rng = np.random.default_rng(0)
    model = APPLICATIONS[name](keras().applications)
    for layer in model.layers:  # BatchNorm statistics that are not the identity, so that zeroing is visible
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, variance = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.1, beta), rng.normal(0, 0.1, mean),
                               rng.uniform(0.5, 1.5, variance)])  # fmt: skip
    x = rng.random((4, 32, 32, 3), dtype=np.float32)
    untouched = model.predict(x, verbose=0)
    doomed = zero_half_of_every_group(model, rng)
    reference = model.predict(x, verbose=0)
    assert not np.allclose(untouched, reference)
    plan = channels.analyze(model)
    assert list(plan.blocked().values()) == [[f"{model.layers[-1].name} (a model output)"]], plan.blocked()
    plan = channels.decide(model, plan, channels.importance(model, plan, "bn_gamma"), 0.5, {}, False, 1, 1)
    for index, zeroed in doomed.items():
        assert np.array_equal(plan.keep[index], np.setdiff1d(np.arange(plan.groups[index].channels), zeroed))
    pruned = channels.rebuild(model, plan)
    assert pruned.count_params() < model.count_params() * 0.35
    scale = np.abs(reference).max()
    assert np.abs(pruned.predict(x, verbose=0) - reference).max() <= 1e-5 * scale


SE_RECIPE = channel_prune_qat(
    "se-cnn", "{source: edgepipe.examples.cnns:se_cnn, train: {epochs: 3, learning_rate: 0.003}}"
)


def test_a_mobilenetv3_style_model_prunes_and_trains_with_quantization_its_hard_swish_included(
    tmp_path: Path,
) -> None:
    """Squeeze-and-excitation and hard-swish written with TensorFlow functions (TFOpLambda layers, which TF-MOT's
    QAT cannot take) through the CLI, no exclude: each hard-swish chain becomes one layer and the SE gate's
    product gets its output quantized, so QAT covers the whole model, and the int8 model keeps TFLite's fused
    HARD_SWISH (four, one per chain: no stray ADD or MUL left of them)."""
    done = run_cli("optimize", str(write_recipe(tmp_path, SE_RECIPE)), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "optimize.json").read_text())
    pruned, quantized = result["stages"][0]["details"], result["stages"][1]["details"]
    assert pruned["left_unpruned"] == {"logits": ["logits (a model output)"]}
    assert pruned["channels"]["block1_expand"] == {"before": 32, "after": 16}
    assert pruned["channels"]["block1_se_expand"] == {"before": 32, "after": 16}  # tied by the gate's Multiply
    assert quantized["fused"] == ["4 hard_swish chain(s) -> one hard_swish layer each"]
    assert "block1_se_excite" in quantized["layers"] and not quantized["left_out"]
    assert result["final"]["conformance"]["passed"]
    assert result["stages"][-1]["totals"]["macs"] < result["baseline"]["totals"]["macs"] * 0.4
    ops = Counter(op.name for op in TfliteModel.read(tmp_path / "run" / "model.tflite").ops)
    assert ops["HARD_SWISH"] == 4 and ops["ADD"] == 2 and ops["MUL"] == 2, ops  # 2 residual adds, 2 SE gates


def test_qat_names_a_tensorflow_function_it_cannot_take_with_the_exclude_that_fixes_it(tmp_path: Path) -> None:
    """A TensorFlow function with no Keras layer that computes it (``tf.abs``; ``x * 2`` becomes a Rescaling on
    load) stays a TFOpLambda layer, which breaks TF-MOT's cloning: the qat stage names it and the exclude that
    fixes it (exit 3, no traceback, no run folder); following the hint gives an integer-only model."""
    k = keras()
    inputs = k.Input((8, 8, 1))
    x = k.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = k.layers.GlobalAveragePooling2D(name="pool")(tf().math.abs(x))
    model = k.Model(inputs, k.layers.Dense(10, name="logits")(x))
    model.save(tmp_path / "doubled.keras")
    doubled = next(layer.name for layer in model.layers if type(layer).__name__ == "TFOpLambda")  # tf.math.abs_N
    recipe = channel_prune_qat("doubled", "{source: doubled.keras}").replace(
        "  - {kind: channel_prune, ratio: 0.5, round_to: 4}\n", ""
    )
    done = run_cli("optimize", str(write_recipe(tmp_path, recipe)), "--out", str(tmp_path / "refused"))
    assert done.returncode == 3, done.stderr[-2000:]
    said = " ".join(done.stderr.split())
    assert f"stages[0]: TF-MOT's 8-bit quantization-aware training does not support '{doubled}' (TFOpLambda)" in said
    assert f"exclude: ['{doubled}']" in said
    assert "Traceback" not in done.stderr and not (tmp_path / "refused").exists()
    fixed = recipe.replace("{kind: qat}", '{kind: qat, layers: {exclude: ["tf.*"]}}')
    done = run_cli("optimize", str(write_recipe(tmp_path, fixed)), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "optimize.json").read_text())["final"]["conformance"]["passed"]
