"""Saving each stage's Keras model next to its TFLite model, in a format that loads back.

TF-MOT 0.8.1's quantization-aware layers do not survive Keras' native ``.keras`` format (the QuantizeLayer's
variables are not restored) nor, for the collaborative schemes (CQAT/PCQAT), HDF5. A Keras SavedModel
directory restores them all. So:

    float, prune and cluster stages   model.keras       (wrappers already stripped: plain Keras layers)
    qat stage                         model.savedmodel/ (load inside tfmot.quantization.keras.quantize_scope())

``load`` does the right thing for both. A model that cannot be saved is reported, not fatal: the TFLite model
is the artifact that matters, and the reason goes into optimize.json.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgepipe.keras_compat import keras, tfmot
from edgepipe.native_log import captured_stderr

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "model.savedmodel"


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
                model.save(path, save_format="tf", include_optimizer=False)
            else:  # the native format has no include_optimizer; a model edgepipe compiled saves its optimizer
                model.save(path)
    except Exception as exc:  # a layer Keras cannot serialise: say which, keep the run
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"path": None, "error": f"{type(exc).__name__}: {first}"}
    return {"path": str(path.relative_to(root)), "error": None}


def load(path: Path) -> Any:
    """A saved stage model, QAT layers included (inside TF-MOT's quantize scope), and the hard-swish layers the
    qat stage may have made (registered when ``hard_activations.layers`` first runs)."""
    from edgepipe.optimization.hard_activations import layers

    layers()
    with captured_stderr(), tfmot().quantization.keras.quantize_scope():
        return keras().models.load_model(path, compile=False)
