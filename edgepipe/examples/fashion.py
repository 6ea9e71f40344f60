"""Fashion-MNIST (70,000 labelled 28x28 images) from Debian's ``dataset-fashion-mnist`` package.

The package installs the original IDX files under ``/usr/share/datasets/fashion-mnist``; nothing is downloaded.
``EDGEPIPE_FASHION_MNIST_DIR`` points elsewhere if the files live somewhere else.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.data import Dataset
from edgepipe.errors import ConfigError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def data_dir() -> Path:
    return Path(os.environ.get("EDGEPIPE_FASHION_MNIST_DIR", DEFAULT_DIR))


def _read_idx(path: Path) -> np.ndarray:
    """Read one gzip'd IDX file (big-endian header: magic, then one uint32 per dimension)."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def load() -> Dataset:
    """The full official split: 60,000 training and 10,000 test images, scaled to [0, 1], shape (28, 28, 1)."""
    folder = data_dir()
    missing = [name for name in FILES.values() if not (folder / name).exists()]
    if missing:
        raise ConfigError(
            f"Fashion-MNIST files not found in {folder}: {', '.join(missing)}",
            hint="apt-get install dataset-fashion-mnist (or set EDGEPIPE_FASHION_MNIST_DIR)",
        )
    arrays = {key: _read_idx(folder / name) for key, name in FILES.items()}
    return Dataset(
        "fashion-mnist",
        (arrays["x_train"] / 255.0).astype(np.float32)[..., None],
        arrays["y_train"].astype(np.int64),
        (arrays["x_test"] / 255.0).astype(np.float32)[..., None],
        arrays["y_test"].astype(np.int64),
    )


def cnn() -> Any:
    """A small convolutional classifier (~100k parameters) for 28x28x1 inputs."""
    from edgepipe.keras_compat import keras

    k = keras()
    return k.Sequential(
        [
            k.layers.Input((28, 28, 1)),
            k.layers.Conv2D(16, 3, activation="relu", name="conv_1"),
            k.layers.MaxPooling2D(name="pool_1"),
            k.layers.Conv2D(32, 3, activation="relu", name="conv_2"),
            k.layers.MaxPooling2D(name="pool_2"),
            k.layers.Flatten(),
            k.layers.Dense(128, activation="relu", name="dense_1"),
            k.layers.Dense(10, name="logits"),
        ],
        name="fashion_cnn",
    )


def conv_bn(width: int = 32) -> Any:
    """A VGG-style CNN as embedded teams train on Fashion-MNIST: Conv -> BatchNorm -> ReLU pairs, max pooling,
    Flatten -> Dense logits (about 7 M MACs at width 32, so the convolutions, not per-operator overhead, take
    the time: what channel pruning is for)."""
    from edgepipe.keras_compat import keras

    k = keras()

    def block(x: Any, filters: int, name: str) -> Any:
        x = k.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = k.layers.BatchNormalization(name=f"{name}_bn")(x)
        return k.layers.ReLU(name=f"{name}_relu")(x)

    inputs = k.layers.Input((28, 28, 1), name="image")
    x = block(inputs, width, "conv1")
    x = k.layers.MaxPooling2D(name="pool1")(x)
    x = block(x, width, "conv2")
    x = block(x, 2 * width, "conv3")
    x = k.layers.MaxPooling2D(name="pool2")(x)
    x = block(x, 2 * width, "conv4")
    x = k.layers.MaxPooling2D(name="pool3")(x)
    x = k.layers.Flatten(name="flatten")(x)
    outputs = k.layers.Dense(10, name="logits")(x)
    return k.Model(inputs, outputs, name="fashion_conv_bn")
