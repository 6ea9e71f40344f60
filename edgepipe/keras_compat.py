"""The ONLY module that selects Keras 2 (tf_keras) for TensorFlow and imports tf_keras and TF-MOT.

TF-MOT 0.8 works only with Keras 2, which TensorFlow 2.16+ ships as the separate ``tf_keras`` package and uses
only when ``TF_USE_LEGACY_KERAS=1`` is set *before* TensorFlow is first imported. Everything else in edgepipe
asks this module for ``tf``, ``keras`` and ``tfmot`` so that the order is right and ``import edgepipe`` (and
``edgepipe --help``) never import TensorFlow at all.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

from edgepipe.errors import ModelError


def select_keras2() -> None:
    """Select Keras 2 for TensorFlow without importing it: call before running code that may import TF."""
    _select_legacy_keras()


def _select_legacy_keras() -> None:
    if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        # TensorFlow was imported by someone else first; tf.keras may then be Keras 3 and TF-MOT breaks.
        tf = sys.modules["tensorflow"]
        if not getattr(tf.keras, "__name__", "").startswith("tf_keras"):
            raise ModelError(
                "TensorFlow was imported before edgepipe could select Keras 2 (tf_keras), which TF-MOT needs",
                hint="set TF_USE_LEGACY_KERAS=1 in the environment, or import edgepipe before tensorflow",
            )
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tf() -> ModuleType:
    """TensorFlow, with Keras 2 selected; its C++ start-up notices are kept off the terminal."""
    _select_legacy_keras()
    if "tensorflow" not in sys.modules:
        from edgepipe.native_log import captured_stderr

        with captured_stderr():
            import tensorflow
    import tensorflow

    return tensorflow


def keras() -> ModuleType:
    """The tf_keras package (Keras 2), which TF-MOT wraps."""
    tf()
    try:
        import tf_keras
    except ImportError:
        raise ModelError(
            "tf_keras is not installed; TF-MOT needs Keras 2",
            hint="run scripts/setup, or: pip install --no-deps tf-keras==2.21.0",
        ) from None
    return tf_keras


def tfmot() -> ModuleType:
    """tensorflow_model_optimization, imported after Keras 2 is selected."""
    keras()
    import tensorflow_model_optimization

    return tensorflow_model_optimization


def is_keras3_model(model: Any) -> bool:
    """True for a model built with Keras 3 (the ``keras`` package), which TF-MOT cannot wrap."""
    return type(model).__module__.startswith("keras.") or type(model).__module__ == "keras"


def convert_keras3(model: Any, sample: Any) -> Any:
    """Rebuild a Keras 3 model in tf_keras where that can be done faithfully, else raise ModelError saying why.

    Faithful means: a Sequential model whose every layer exists in tf_keras with the same constructor
    arguments, and whose rebuilt twin gives the same outputs (to 1e-5) on ``sample``.
    """
    import inspect

    import numpy as np

    k2 = keras()
    if type(model).__name__ != "Sequential":
        raise ModelError(
            f"this is a Keras 3 {type(model).__name__} model; edgepipe converts only Keras 3 Sequential models "
            "to Keras 2 (tf_keras), which TF-MOT needs",
            hint="build the model with tf_keras (import tf_keras as keras) and re-save it, or give a factory",
        )
    layers = []
    for layer in model.layers:
        cls = getattr(k2.layers, type(layer).__name__, None)
        if cls is None:
            raise ModelError(
                f"Keras 3 layer {layer.name!r} ({type(layer).__name__}) has no tf_keras equivalent",
                hint="rebuild the model with tf_keras layers",
            )
        config = dict(layer.get_config())
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = layer.dtype
        for key, value in list(config.items()):
            # Initializers only matter before training, and the trained weights are copied below; Keras 3 adds
            # arguments to them that tf_keras lacks, so they are passed by class name.
            if key.endswith("_initializer") and isinstance(value, dict):
                config[key] = value.get("class_name")
        accepted = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable", "dtype"}
        dropped = {k: v for k, v in config.items() if k not in accepted and v not in (None, False, {}, [])}
        if dropped:
            raise ModelError(
                f"Keras 3 layer {layer.name!r} ({type(layer).__name__}) uses settings tf_keras does not have: "
                f"{', '.join(sorted(dropped))}",
                hint="rebuild the model with tf_keras layers",
            )
        config = {k: v for k, v in config.items() if k in accepted}
        try:
            layers.append(cls.from_config(config))
        except Exception as exc:  # tf_keras raises many kinds for an unknown config
            raise ModelError(
                f"Keras 3 layer {layer.name!r} ({type(layer).__name__}) cannot be rebuilt in tf_keras: {exc}"
            ) from None
    twin = k2.Sequential([k2.layers.Input(model.input_shape[1:]), *layers], name=model.name)
    for source, target in zip(model.layers, twin.layers, strict=True):
        target.set_weights([np.asarray(w) for w in source.get_weights()])
    want = np.asarray(model(sample, training=False))
    got = np.asarray(twin(sample, training=False))
    worst = float(np.max(np.abs(want - got))) if want.size else 0.0
    if want.shape != got.shape or worst > 1e-5:
        raise ModelError(
            f"the tf_keras rebuild of this Keras 3 model does not give the same outputs (largest difference {worst:g})",
            hint="build the model with tf_keras (import tf_keras as keras) and re-save it",
        )
    return twin
