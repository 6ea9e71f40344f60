"""Convolutional models shaped like the ones users bring, sized for the 8x8 digits so they train in seconds.

Every factory returns an *untrained* tf_keras model (recipes that use them set ``model.train``):

- ``resnet``: Conv2D -> BatchNormalization -> ReLU blocks with residual adds (a ResNet-8 in miniature);
- ``ds_cnn``: depthwise-separable blocks as keyword-spotting DS-CNNs have them (DepthwiseConv2D -> BN -> ReLU ->
  Conv2D 1x1 -> BN -> ReLU), plus a SeparableConv2D -> BN -> ReLU block as mini-Xception has it;
- ``softmax_cnn``: a Conv -> BN -> ReLU classifier whose head ends in softmax (probabilities, not logits);
- ``se_cnn``: MobileNetV3-style inverted residual blocks with squeeze-and-excitation and hard-swish written
  with TensorFlow functions (``x * relu6(x + 3) / 6``), as Keras Applications' MobileNetV3 has them.

They exist so that tests and users see what edgepipe does with BatchNorm folding, residual adds and
depthwise convolutions, not only with dense layers.
"""

from __future__ import annotations

from typing import Any

INPUT_SHAPE = (8, 8, 1)
CLASSES = 10
# Keras' default (0.99) needs thousands of steps before the moving statistics describe the data; the digits
# give about 40 steps an epoch, so the examples use 0.9 as small-data recipes do.
BN_MOMENTUM = 0.9


def _conv_bn_relu(k: Any, x: Any, filters: int, name: str, strides: int = 1, kernel: int = 3) -> Any:
    x = k.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return k.layers.ReLU(name=f"{name}_relu")(x)


def resnet(width: int = 16) -> Any:
    """Stem, two residual blocks (the second downsamples with a 1x1 projection), global pooling, logits."""
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.layers.Input(INPUT_SHAPE, name="image")
    x = _conv_bn_relu(k, inputs, width, "stem")

    y = _conv_bn_relu(k, x, width, "block1a")
    y = k.layers.Conv2D(width, 3, padding="same", use_bias=False, name="block1b_conv")(y)
    y = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name="block1b_bn")(y)
    x = k.layers.ReLU(name="block1_out")(k.layers.Add(name="block1_add")([x, y]))

    y = _conv_bn_relu(k, x, 2 * width, "block2a", strides=2)
    y = k.layers.Conv2D(2 * width, 3, padding="same", use_bias=False, name="block2b_conv")(y)
    y = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name="block2b_bn")(y)
    shortcut = k.layers.Conv2D(2 * width, 1, strides=2, use_bias=False, name="block2_proj_conv")(x)
    shortcut = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name="block2_proj_bn")(shortcut)
    x = k.layers.ReLU(name="block2_out")(k.layers.Add(name="block2_add")([shortcut, y]))

    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = k.layers.Dense(CLASSES, name="logits")(x)
    return k.Model(inputs, outputs, name="digits_resnet")


def ds_cnn(width: int = 32) -> Any:
    """Conv stem, two depthwise-separable blocks written out, one SeparableConv2D block, pooling, logits."""
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.layers.Input(INPUT_SHAPE, name="image")
    x = _conv_bn_relu(k, inputs, width, "stem")
    for index, strides in enumerate((1, 2), start=1):
        x = k.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"ds{index}_dw")(x)
        x = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"ds{index}_dw_bn")(x)
        x = k.layers.ReLU(name=f"ds{index}_dw_relu")(x)
        x = _conv_bn_relu(k, x, width, f"ds{index}_pw", kernel=1)
    x = k.layers.SeparableConv2D(2 * width, 3, padding="same", use_bias=False, name="sep_conv")(x)
    x = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name="sep_bn")(x)
    x = k.layers.ReLU(name="sep_relu")(x)
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = k.layers.Dense(CLASSES, name="logits")(x)
    return k.Model(inputs, outputs, name="digits_ds_cnn")


def softmax_cnn(width: int = 16) -> Any:
    """Conv -> BN -> ReLU twice, flatten, and a Dense head with ``activation="softmax"``."""
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.layers.Input(INPUT_SHAPE, name="image")
    x = _conv_bn_relu(k, inputs, width, "conv1")
    x = _conv_bn_relu(k, x, width, "conv2", strides=2)
    x = k.layers.Flatten(name="flatten")(x)
    outputs = k.layers.Dense(CLASSES, activation="softmax", name="probabilities")(x)
    return k.Model(inputs, outputs, name="digits_softmax_cnn")


def _hard_swish(x: Any) -> Any:
    """``x * relu6(x + 3) / 6`` with TensorFlow functions: Keras records each call as a TFOpLambda layer."""
    from edgepipe.keras_compat import tf

    return x * tf().nn.relu6(x + 3.0) * (1.0 / 6.0)


def _inverted_residual(k: Any, x: Any, expand: int, name: str) -> Any:
    """1x1 expand -> BN -> hard-swish -> 3x3 depthwise -> BN -> hard-swish -> squeeze-and-excitation -> 1x1
    project -> BN, added to the block's input."""
    channels = x.shape[-1]
    y = k.layers.Conv2D(expand, 1, use_bias=False, name=f"{name}_expand")(x)
    y = _hard_swish(k.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_expand_bn")(y))
    y = k.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(y)
    y = _hard_swish(k.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(y))
    squeeze = k.layers.GlobalAveragePooling2D(name=f"{name}_se_pool")(y)
    squeeze = k.layers.Reshape((1, 1, expand), name=f"{name}_se_reshape")(squeeze)
    squeeze = k.layers.Conv2D(max(4, expand // 4), 1, activation="relu", name=f"{name}_se_reduce")(squeeze)
    squeeze = k.layers.Conv2D(expand, 1, activation="sigmoid", name=f"{name}_se_expand")(squeeze)
    y = k.layers.Multiply(name=f"{name}_se_excite")([y, squeeze])
    y = k.layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_project")(y)
    y = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_project_bn")(y)
    return k.layers.Add(name=f"{name}_add")([x, y])


def se_cnn(width: int = 16) -> Any:
    """Conv stem, two inverted residual blocks with squeeze-and-excitation and hard-swish, pooling, logits."""
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.layers.Input(INPUT_SHAPE, name="image")
    x = _conv_bn_relu(k, inputs, width, "stem")
    x = _inverted_residual(k, x, 2 * width, "block1")
    x = _inverted_residual(k, x, 2 * width, "block2")
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    return k.Model(inputs, k.layers.Dense(CLASSES, name="logits")(x), name="digits_se_cnn")
