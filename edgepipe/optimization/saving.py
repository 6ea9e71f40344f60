"""Saving each stage's Keras model next to its TFLite model, in a format that loads back.

TF-MOT 0.8.1's quantization-aware layers do not survive Keras' native ``.keras`` format (the QuantizeLayer's
variables are not restored) nor, for the collaborative schemes (CQAT/PCQAT), HDF5. A Keras SavedModel
directory restores them all. So:

    float, prune and cluster stages   model.keras       (wrappers already stripped: plain Keras layers)
    qat stage                         model.savedmodel/ (load inside tfmot.quantization.keras.quantize_scope())

A SavedModel normally also holds every layer's traced call functions, which let a layer whose class the loader
does not know come back as a generic one. Tracing them is most of the save: 5.4 s against 1.6 s without, for
a small QAT CNN (the same outputs once loaded). A model built only of tf_keras, TensorFlow and TF-MOT classes
(which any loader knows inside the quantize scope) is saved without them; one with a layer of the user's own
or edgepipe's hard-swish keeps them, so that a process without that code can still load it.
``load`` does the right thing for both. A model that cannot be saved is reported, not fatal: the TFLite model
is the artifact that matters, and the reason goes into optimize.json.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgepipe.keras_compat import all_layers, keras, tfmot
from edgepipe.native_log import captured_stderr

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "model.savedmodel"
# Where the classes come from that tf_keras rebuilds from their configs alone, inside TF-MOT's quantize scope.
LOADER_KNOWS = ("tf_keras.", "keras.", "tensorflow.", "tensorflow_model_optimization.")


def is_quantization_aware(model: Any) -> bool:
    """True when the model holds TF-MOT's quantize wrappers (a QAT stage's model)."""
    return any(
        type(layer).__name__ in ("QuantizeWrapperV2", "QuantizeWrapper", "QuantizeLayer") for layer in model.layers
    )


def save(model: Any, folder: Path, root: Path) -> dict[str, Any]:
    """Save ``model`` into ``folder``; returns ``{"path": relative path or None, "error": reason or None}``."""
    folder.mkdir(parents=True, exist_ok=True)
    quantized = is_quantization_aware(model)
    path = folder / (SAVED_MODEL_DIR if quantized else KERAS_FILE)
    try:
        with captured_stderr(), tfmot().quantization.keras.quantize_scope():
            if quantized:  # the optimizer's slots are not needed to convert or evaluate, and double the size
                model.save(path, save_format="tf", include_optimizer=False, save_traces=not _known_classes(model))
            else:  # the native format has no include_optimizer; a model edgepipe compiled saves its optimizer
                model.save(path)
    except Exception as exc:  # a layer Keras cannot serialise: say which, keep the run
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"path": None, "error": f"{type(exc).__name__}: {first}"}
    return {"path": str(path.relative_to(root)), "error": None}


def _known_classes(model: Any) -> bool:
    """Whether every layer of ``model`` (and every layer a QAT wrapper holds) is of a class any tf_keras loader
    rebuilds from its config: the user's own layers and edgepipe's hard-swish keep their traced functions."""
    found = all_layers(model)
    layers = [*found, *(layer.layer for layer in found if hasattr(layer, "layer"))]
    return all(type(layer).__module__.startswith(LOADER_KNOWS) for layer in layers)


def python_layers(model: Any) -> list[str]:
    """The layers whose computation their class does not tell: a Lambda, a TensorFlow function called on Keras
    tensors (TFOpLambda) and the user's own layers, by name. An in-model spectrogram (``tf.signal.stft``) is one:
    only its converted operators show that TFLite runs it in float."""
    opaque = ("Lambda", "TFOpLambda", "SlicingOpLambda")
    return [
        layer.name
        for layer in all_layers(model)
        if type(layer).__name__ in opaque or not type(layer).__module__.startswith(LOADER_KNOWS)
    ]


def load(path: Path) -> Any:
    """A saved stage model, QAT layers included (inside TF-MOT's quantize scope), and the hard-swish layers the
    qat stage may have made (registered when ``hard_activations.layers`` first runs)."""
    from edgepipe.optimization.hard_activations import layers

    layers()
    with captured_stderr(), tfmot().quantization.keras.quantize_scope():
        return keras().models.load_model(path, compile=False)
