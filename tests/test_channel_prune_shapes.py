"""Channel pruning on shapes beyond classifier backbones: a U-Net's decoder (Conv2DTranspose, a skip
Concatenate, PReLU), a sequence model joined along time and reshaped from pixels; and the reason it names for
each layer it must stop at."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from channel_kit import group_of, zero_half_of_every_group

from edgepipe.keras_compat import keras, tf
from edgepipe.optimization import channels

pytestmark = pytest.mark.slow


def _pruned_exactly(model: Any, x: np.ndarray, round_to: int = 1) -> Any:
    """Zero half of every group, prune half, and check the pruned model answers as the zeroed one did."""
    rng = np.random.default_rng(0)
    zero_half_of_every_group(model, rng)
    reference = model.predict(x, verbose=0)
    plan = channels.analyze(model)
    decided = channels.decide(model, plan, channels.importance(model, plan, "l1"), 0.5, {}, False, 1, round_to)
    pruned = channels.rebuild(model, decided)
    assert np.abs(pruned.predict(x, verbose=0) - reference).max() <= 1e-5 * max(np.abs(reference).max(), 1.0)
    return pruned


def _unet() -> Any:
    """A two-level U-Net with a one-channel mask out: the shape of on-device segmentation models."""
    k = keras()
    inputs = k.Input((8, 8, 1))
    skip = k.layers.Conv2D(8, 3, padding="same", name="enc1")(inputs)
    skip = k.layers.ReLU()(k.layers.BatchNormalization(name="enc1_bn")(skip))
    x = k.layers.MaxPooling2D()(skip)
    x = k.layers.PReLU(name="enc2_prelu")(k.layers.Conv2D(16, 3, padding="same", name="enc2")(x))
    x = k.layers.Conv2DTranspose(8, 2, strides=2, name="up")(x)
    x = k.layers.Concatenate(name="join")([x, skip])
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu", name="dec")(x)
    return k.Model(inputs, k.layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x))


def test_a_unet_decoder_is_pruned_through_the_transposed_convolution_exactly() -> None:
    """Conv2DTranspose stopped every group it read or wrote ("up (Conv2DTranspose)"), and PReLU the group
    before it: a U-Net's decoder, half its MACs, stayed whole."""
    model = _unet()
    plan = channels.analyze(model)
    assert {g.producers[0]: g.blocked_by for g in plan.groups} == {
        "enc1": [], "enc2": [], "up": [], "dec": [], "mask": ["mask (a model output)"]
    }  # fmt: skip
    assert "enc2_prelu" in group_of(plan, "enc2").sliced
    x = np.random.default_rng(1).random((4, 8, 8, 1), dtype=np.float32)
    pruned = _pruned_exactly(model, x)
    assert [pruned.get_layer(n).filters for n in ("enc1", "enc2", "up", "dec")] == [4, 8, 4, 4]
    assert pruned.get_layer("up").kernel.shape == (2, 2, 4, 8)  # (.., out, in): both sides cut
    assert pruned.get_layer("enc2_prelu").alpha.shape == (4, 4, 8)
    assert pruned.get_layer("join").output_shape == (None, 8, 8, 8)


def test_a_sequence_joined_along_time_and_pixels_reshaped_to_a_sequence_are_followed_exactly() -> None:
    """A Concatenate along time ties its inputs' channels like an Add; a Reshape (H, W, C) -> (H * W, C) keeps
    channel c as channel c; a Conv1DTranspose decodes. Each used to stop the groups it met."""
    k = keras()
    image = k.Input((4, 4, 2))
    pixels = k.layers.Reshape((16, 12), name="to_sequence")(k.layers.Conv2D(12, 1, name="embed")(image))
    recent = k.layers.Conv1D(12, 3, padding="same", name="recent")(k.layers.Reshape((16, 2))(image))
    joined = k.layers.Concatenate(axis=1, name="along_time")([pixels, recent])
    up = k.layers.Conv1DTranspose(8, 2, strides=2, name="upsample")(joined)
    out = k.layers.Dense(3, name="logits")(k.layers.GlobalAveragePooling1D()(up))
    model = k.Model(image, out)
    plan = channels.analyze(model)
    assert sorted(group_of(plan, "embed").producers) == ["embed", "recent"]  # tied by the time axis
    assert "to_sequence" in group_of(plan, "embed").sliced
    assert not group_of(plan, "embed").blocked_by and not group_of(plan, "upsample").blocked_by
    x = np.random.default_rng(2).random((4, 4, 4, 2), dtype=np.float32)
    pruned = _pruned_exactly(model, x)
    assert pruned.get_layer("to_sequence").target_shape == (16, 6)
    assert [pruned.get_layer(n).filters for n in ("embed", "recent", "upsample")] == [6, 6, 4]


def _doubler() -> type:
    class Doubler(keras().layers.Layer):
        """A user's own layer: what it does to the channels cannot be read."""

        def call(self, x: Any) -> Any:
            return 2.0 * x

    return Doubler


def test_every_layer_that_stops_a_group_says_why() -> None:
    """Reshape, Permute, Softmax, a TensorFlow function with a tensor argument, a broadcast Multiply, an Add or a
    Concatenate with a model input and a user's own layer gave their class name alone ("reshape (Reshape)")."""
    k = keras()
    inputs = k.Input((4, 4, 2))

    def conv(name: str, filters: int = 8) -> Any:
        return k.layers.Conv2D(filters, 1, name=name)(inputs)

    heads = {
        "moved": k.layers.Reshape((4, 32), name="fold")(conv("moved")),
        "permuted": k.layers.Permute((3, 1, 2), name="swap")(conv("permuted")),
        "normed": k.layers.Softmax(name="spread")(conv("normed")),
        "attended": k.layers.Softmax(axis=1, name="over_rows")(conv("attended")),
        "weighted": conv("weighted") * tf().constant(np.arange(1.0, 9.0, dtype=np.float32)),
        "gated": k.layers.Multiply(name="gate")([conv("gated"), conv("gate_map", 1)]),
        "joined": k.layers.Concatenate(axis=1, name="with_input")([conv("joined", 2), inputs]),
        "residual": k.layers.Add(name="plus_input")([conv("residual", 2), inputs]),
        "doubled": _doubler()(name="doubler")(conv("doubled")),
    }
    pooled = [k.layers.Flatten()(h) for h in heads.values()]
    plan = channels.analyze(k.Model(inputs, k.layers.Dense(3)(k.layers.Concatenate()(pooled))))
    why = {name: group_of(plan, name).blocked_by for name in heads}
    assert why.pop("residual") == [
        "plus_input (Add with an input channel pruning does not follow (a model input or a layer left whole): "
        "every input of a merge keeps equal channels)"
    ]
    doubled = "doubler (Doubler: a layer class of your own, whose use of the channels cannot be read)"
    assert why.pop("doubled") == [doubled]
    weighted = why.pop("weighted")
    assert len(weighted) == 1 and weighted[0].endswith(
        "(TFOpLambda math.multiply: a TensorFlow function not known to act on each channel alone (or given a "
        "tensor argument))"
    )
    assert why == {
        "moved": ["fold (Reshape (4, 4, 8) -> (4, 32): moves the channels into other axes)"],
        "permuted": ["swap (Permute (4, 4, 8) -> (8, 4, 4): moves the channels into other axes)"],
        "normed": ["spread (Softmax: normalizes across the channels, so removing one changes the others)"],
        "attended": [
            "over_rows (Softmax over axis 1: turns a removed (all-zero) channel into a constant the next layer reads)"
        ],
        "gated": ["gate (Multiply of 8 and 1 channels: broadcasts the narrower input across the other's channels)"],
        "joined": [
            "with_input (Concatenate on axis 1 with an input channel pruning does not follow (a model input, a "
            "flattened tensor or a layer left whole): every input keeps equal channels)"
        ],
    }
    assert group_of(plan, "gate_map").blocked_by == why["gated"]


def test_a_layer_that_takes_axis_1_for_the_channels_stops_the_group_it_reads() -> None:
    """Keras' time-series Transformer example pools with GlobalAveragePooling1D(data_format="channels_first"),
    which averages the last axis (the channels here) and keeps the time steps. It was passed through as if it
    kept the channels: the next Dense was cut by channel on inputs that are time steps (a wrong model, or a
    failed rebuild when the counts differ)."""
    k = keras()
    series = k.Input((12, 3))
    x = k.layers.Conv1D(8, 3, padding="same", activation="relu", name="conv")(series)
    x = k.layers.GlobalAveragePooling1D(data_format="channels_first", name="over_channels")(x)
    h = k.layers.Dense(6, activation="relu", name="hidden")(x)
    image = k.Input((4, 4, 2))
    flat = k.layers.Flatten(data_format="channels_first", name="flat_cf")(k.layers.Conv2D(4, 1, name="pixels")(image))
    joined = k.layers.Concatenate()([h, k.layers.Dense(5, name="side")(flat)])
    model = k.Model([series, image], k.layers.Dense(3, name="logits")(joined))
    plan = channels.analyze(model)
    axis_1 = "channels_first: it reads axis 1 as the channels and works on the last axis"
    assert group_of(plan, "conv").blocked_by == [f"over_channels (GlobalAveragePooling1D, {axis_1})"]
    assert group_of(plan, "pixels").blocked_by == [f"flat_cf (Flatten, {axis_1})"]
    assert not group_of(plan, "hidden").blocked_by  # the Dense after it is free to shrink
    rng = np.random.default_rng(3)
    x = [rng.random((4, 12, 3), dtype=np.float32), rng.random((4, 4, 4, 2), dtype=np.float32)]
    pruned = _pruned_exactly(model, x)
    assert pruned.get_layer("conv").filters == 8 and pruned.get_layer("hidden").units == 3


def _xception_block() -> Any:
    """Xception's residual block: SeparableConv2D -> BN -> ReLU -> SeparableConv2D -> BN added to a 1x1 Conv2D
    projection; the first with a depth multiplier of 2; then a SeparableConv2D that reads a Concatenate."""
    k = keras()
    inputs = k.Input((8, 8, 3))
    stem = k.layers.ReLU()(k.layers.BatchNormalization(name="stem_bn")(k.layers.Conv2D(8, 3, name="stem")(inputs)))
    x = k.layers.SeparableConv2D(16, 3, padding="same", depth_multiplier=2, use_bias=False, name="sep_a")(stem)
    x = k.layers.ReLU()(k.layers.BatchNormalization(name="sep_a_bn")(x))
    x = k.layers.BatchNormalization(name="sep_b_bn")(k.layers.SeparableConv2D(16, 3, padding="same", name="sep_b")(x))
    shortcut = k.layers.BatchNormalization(name="proj_bn")(k.layers.Conv2D(16, 1, name="proj")(stem))
    x = k.layers.ReLU()(k.layers.Add(name="residual")([x, shortcut]))
    x = k.layers.Concatenate(name="join")([x, stem])
    x = k.layers.SeparableConv2D(8, 3, activation="relu", name="sep_c")(x)
    return k.Model(inputs, k.layers.Dense(3, name="out")(k.layers.GlobalAveragePooling2D()(x)))


def test_separable_convolutions_are_pruned_in_place_exactly() -> None:
    """A SeparableConv2D stopped every group it touched unless the recipe split it first: Keras' Xception had 1 of
    29 groups pruned, NASNetMobile none. Its depthwise kernel and its pointwise kernel's rows are now cut on the
    input channels (``multiplier`` rows per channel), the pointwise columns on its own."""
    model = _xception_block()
    plan = channels.analyze(model)
    assert not plan.blocked().keys() - {"out"}, plan.blocked()
    stem = group_of(plan, "stem")
    assert {name for name, _ in stem.consumers} == {"sep_a", "proj"} and plan.composite["sep_c"][0] == "in"
    assert sorted(group_of(plan, "sep_b").producers) == ["proj", "sep_b"]  # tied by the residual add
    assert group_of(plan, "sep_a").sliced == ["sep_a_bn"]
    x = np.random.default_rng(1).random((4, 8, 8, 3), dtype=np.float32)
    pruned = _pruned_exactly(model, x)
    depthwise, pointwise = pruned.get_layer("sep_a").get_weights()
    assert depthwise.shape == (3, 3, 4, 2) and pointwise.shape == (1, 1, 8, 8)  # 4 of 8 inputs, x2; 8 of 16 out
    depthwise, pointwise, bias = pruned.get_layer("sep_c").get_weights()
    assert depthwise.shape[2] == 12 and pointwise.shape[2:] == (12, 4) and bias.shape == (4,)  # 8 + 4 read

    k = keras()
    steps = k.Input((16, 4))  # a sensor model of SeparableConv1D blocks
    y = k.layers.SeparableConv1D(8, 3, padding="same", activation="relu", name="sep1")(steps)
    y = k.layers.SeparableConv1D(8, 3, padding="same", activation="relu", name="sep2")(y)
    sequence = k.Model(steps, k.layers.Dense(2)(k.layers.GlobalAveragePooling1D()(y)))
    pruned = _pruned_exactly(sequence, np.random.default_rng(2).random((4, 16, 4), dtype=np.float32))
    assert [pruned.get_layer(name).filters for name in ("sep1", "sep2")] == [4, 4]


def test_grouped_convolutions_keep_equal_channels_in_every_group_exactly() -> None:
    """RegNet's and ResNeXt's blocks: 1x1 -> a 3x3 Conv2D with groups=3 -> 1x1, added to the block's input. Each
    of the grouped convolution's 3 parts reads only its own third of the channels, so the group it reads and the
    group it makes each lose the same number of channels in every third; a second grouped convolution (groups=4)
    on the same channels makes them keep equal numbers in every twelfth. They stopped the groups before."""
    k = keras()
    inputs = k.Input((6, 6, 3))
    stem = k.layers.ReLU()(k.layers.BatchNormalization(name="stem_bn")(k.layers.Conv2D(24, 3, name="stem")(inputs)))
    x = k.layers.Conv2D(24, 1, activation="relu", name="reduce")(stem)
    x = k.layers.BatchNormalization(name="grouped_bn")(
        k.layers.Conv2D(24, 3, padding="same", groups=3, name="grouped")(x)
    )
    x = k.layers.Conv2D(24, 1, name="expand")(k.layers.ReLU()(x))
    x = k.layers.Add(name="residual")([x, stem])
    side = k.layers.Conv2D(8, 3, groups=4, activation="relu", name="quartered")(x)  # 24 in, 8 out: 4 parts
    pooled = [k.layers.GlobalAveragePooling2D()(t) for t in (x, side)]
    steps = k.Input((12, 4))
    y = k.layers.Conv1D(8, 3, activation="relu", name="seq")(steps)
    y = k.layers.Conv1D(8, 3, groups=2, activation="relu", name="seq_grouped")(y)
    heads = k.layers.Concatenate()([*pooled, k.layers.GlobalAveragePooling1D()(y)])
    model = k.Model([inputs, steps], k.layers.Dense(3, name="out")(heads))
    plan = channels.analyze(model)
    assert list(plan.blocked()) == ["out"], plan.blocked()
    assert group_of(plan, "reduce").parts == 3 and group_of(plan, "grouped").parts == 3
    assert group_of(plan, "stem").parts == 4 and group_of(plan, "quartered").parts == 4
    assert group_of(plan, "seq").parts == 2
    rng = np.random.default_rng(3)
    x = [rng.random((4, 6, 6, 3), dtype=np.float32), rng.random((4, 12, 4), dtype=np.float32)]
    pruned = _pruned_exactly(model, x)
    assert pruned.get_layer("grouped").get_weights()[0].shape == (3, 3, 4, 12)  # 12 of 24 in: 4 per part; 12 out
    assert pruned.get_layer("quartered").get_weights()[0].shape == (3, 3, 3, 4)
    assert pruned.get_layer("seq_grouped").get_weights()[0].shape == (3, 2, 4)
