"""scikit-learn's handwritten digits (1,797 labelled 8x8 images): real data that ships inside a package.

``load`` is a data entry point; ``mlp`` and ``cnn`` are model factories returning *untrained* tf_keras models
(recipes that use them set ``model.train``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepipe.data import Dataset

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def load() -> Dataset:
    """Stratified 75/25 split with a fixed seed; pixels scaled to [0, 1], shape (8, 8, 1)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return Dataset("digits", x_train, y_train, x_test, y_test)


def mlp(hidden: int = 256) -> Any:
    """Flatten -> Dense(hidden) -> Dense(hidden) -> Dense(10) logits."""
    from edgepipe.keras_compat import keras

    k = keras()
    return k.Sequential(
        [
            k.layers.Input((8, 8, 1)),
            k.layers.Flatten(),
            k.layers.Dense(hidden, activation="relu", name="dense_1"),
            k.layers.Dense(hidden, activation="relu", name="dense_2"),
            k.layers.Dense(10, name="logits"),
        ],
        name="digits_mlp",
    )


def tiny_mlp() -> Any:
    """A 32-unit MLP that trains in about a second: for tests."""
    return mlp(hidden=32)


def cnn() -> Any:
    """Two small convolutions and a dense head: exercises per-channel conv quantization and clustering."""
    from edgepipe.keras_compat import keras

    k = keras()
    return k.Sequential(
        [
            k.layers.Input((8, 8, 1)),
            k.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_1"),
            k.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv_2"),
            k.layers.Flatten(),
            k.layers.Dense(64, activation="relu", name="dense_1"),
            k.layers.Dense(10, name="logits"),
        ],
        name="digits_cnn",
    )
