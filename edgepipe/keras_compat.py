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


def is_graph_tensor(value: object) -> bool:
    """A tf_keras symbolic tensor (a Functional graph's), and nothing else: tf_keras' own ``is_keras_tensor``
    raises on plain numbers and eager tensors, which graph replays meet among a call's arguments."""
    from tf_keras.src.engine.keras_tensor import KerasTensor

    return isinstance(value, KerasTensor)


def all_layers(model: object) -> list[Any]:
    """Every layer of ``model``, those of models nested in it as layers included (depth first)."""
    found: list[Any] = []
    for layer in getattr(model, "layers", []):
        found += [layer, *all_layers(layer)]
    return found


def flat_io(model: Any, model_class: Any) -> tuple[Any, list[str]]:
    """A functional model built with a dict of inputs or outputs (``Model({"img": ..., "meta": ...}, {...})``) as
    the same layers with lists (``model_class``: tf_keras' or Keras 3's Model): every stage, the converter and the
    data work with inputs and outputs in order. The order is Keras' own (``model.inputs``: the dict's keys
    sorted), which is how a dict of data arrays is read too (``data._collect``). A line per rebuilt side."""
    structures = {}  # never tested for truth: a single input is a Keras tensor, which refuses it
    for side in ("inputs", "outputs"):
        names = (f"_nested_{side}", f"_{side}_struct")  # tf_keras, Keras 3
        structures[side] = next((getattr(model, name) for name in names if hasattr(model, name)), None)
    if not any(isinstance(structure, dict) for structure in structures.values()):
        return model, []
    renamed = _named_by_keys(model, [structures["outputs"]] if isinstance(structures["outputs"], dict) else [])
    flat = model_class(list(model.inputs), list(model.outputs), name=model.name)
    return flat, [
        f"model {side} given as a dict, taken in the order {', '.join(sorted(structure))}"
        for side, structure in structures.items()
        if isinstance(structure, dict)
    ] + ([f"layers named by their dict keys: {', '.join(renamed)}"] if renamed else [])


def _named_by_keys(model: Any, structures: list[dict[str, Any]]) -> list[str]:
    """Name each layer that gives a dict's output by its key, as ``model.fit`` and ``compile(loss={...})`` address
    them (``{"cls": Dense(10)(x)}`` is the layer ``dense_1``, which a recipe's ``task: {cls: ...}`` and data given
    by name cannot know); unless another layer has that name. Returns ``old -> new`` per renamed layer."""
    taken = {layer.name for layer in model.layers}
    renamed = []
    for structure in structures:
        for key, tensor in sorted(structure.items()):
            history = getattr(tensor, "_keras_history", None)
            layer = getattr(history, "layer", None) or (history[0] if history else None)
            if layer is None or layer.name == key or key in taken or type(layer).__name__ == "InputLayer":
                continue  # an input keeps its name: the converted model's signature carries it
            renamed.append(f"{layer.name} -> {key}")
            taken.discard(layer.name)
            layer._name = key
            taken.add(key)
    return renamed
