"""Models that are not one-input, one-output classifiers, on the same scikit-learn digits (trained in seconds):

- ``autoencoder`` + ``flat_digits``: a dense autoencoder (64 -> 32 -> 8 -> 32 -> 64) that reconstructs the
  flattened image (``task: reconstruction``; the data has no labels);
- ``two_heads`` + ``two_heads_data``: two inputs (the image and its 16 row and column sums) and two outputs
  (the digit, and whether it is 5 or more), a ``classification`` model with several inputs and outputs;
- ``ink_regressor`` + ``ink_data``: three real numbers per image (how much ink, and the row and column of its
  centre of mass), a ``regression`` model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepipe.data import Dataset
from edgepipe.examples import digits


def flat_digits() -> Dataset:
    """The digits as 64 pixel values in [0, 1], without labels: what the autoencoder reconstructs."""
    data = digits.load()
    return Dataset("digits-flat", data.x_train[0].reshape(-1, 64), (), data.x_test[0].reshape(-1, 64), ())


def autoencoder() -> Any:
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.layers.Input((64,), name="pixels")
    x = k.layers.Dense(32, activation="relu", name="encode_1")(inputs)
    x = k.layers.Dense(8, activation="relu", name="code")(x)
    x = k.layers.Dense(32, activation="relu", name="decode_1")(x)
    outputs = k.layers.Dense(64, name="reconstruction")(x)
    return k.Model(inputs, outputs, name="digits_autoencoder")


def _profile(images: np.ndarray) -> np.ndarray:
    """Row sums and column sums of each 8x8 image, scaled to [0, 1]: a second, small input."""
    flat = images[..., 0]
    return (np.concatenate([flat.sum(axis=2), flat.sum(axis=1)], axis=1) / 8.0).astype(np.float32)


def two_heads_data() -> Dataset:
    """Inputs (image, profile) and targets (digit 0-9, digit >= 5)."""
    data = digits.load()
    x_train, x_test = data.x_train[0], data.x_test[0]
    y_train, y_test = data.y_train[0], data.y_test[0]
    return Dataset(
        "digits-two-heads",
        (x_train, _profile(x_train)),
        (y_train, (y_train >= 5).astype(np.int64)),
        (x_test, _profile(x_test)),
        (y_test, (y_test >= 5).astype(np.int64)),
    )


def two_heads() -> Any:
    from edgepipe.keras_compat import keras

    k = keras()
    image = k.layers.Input((8, 8, 1), name="image")
    profile = k.layers.Input((16,), name="profile")
    x = k.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(image)
    x = k.layers.BatchNormalization(momentum=0.9, name="conv_bn")(x)
    x = k.layers.ReLU(name="conv_relu")(x)
    x = k.layers.Flatten(name="flatten")(x)
    p = k.layers.Dense(16, activation="relu", name="profile_dense")(profile)
    x = k.layers.Concatenate(name="join")([x, p])
    x = k.layers.Dense(32, activation="relu", name="shared")(x)
    digit = k.layers.Dense(10, name="digit")(x)
    high = k.layers.Dense(2, activation="softmax", name="high")(x)
    return k.Model([image, profile], [digit, high], name="digits_two_heads")


def ink_data() -> Dataset:
    """Targets per image: mean ink, and the row and column of the ink's centre of mass (in [0, 1])."""
    data = digits.load()

    def targets(images: np.ndarray) -> np.ndarray:
        flat = images[..., 0]
        ink = flat.sum(axis=(1, 2)) + 1e-6
        grid = np.arange(8, dtype=np.float32) / 7.0
        rows = (flat.sum(axis=2) * grid).sum(axis=1) / ink
        cols = (flat.sum(axis=1) * grid).sum(axis=1) / ink
        return np.stack([flat.mean(axis=(1, 2)), rows, cols], axis=1).astype(np.float32)

    return Dataset("digits-ink", data.x_train, (targets(data.x_train[0]),), data.x_test, (targets(data.x_test[0]),))


def ink_regressor() -> Any:
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.layers.Input((8, 8, 1), name="image")
    x = k.layers.Flatten(name="flatten")(inputs)
    x = k.layers.Dense(32, activation="relu", name="hidden")(x)
    outputs = k.layers.Dense(3, name="ink")(x)
    return k.Model(inputs, outputs, name="digits_ink")
