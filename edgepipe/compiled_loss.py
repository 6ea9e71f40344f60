"""The loss a user's model was compiled with, read so that edgepipe can say when it trains with another.

edgepipe chooses the training loss itself (``tasks.Task.losses``): from the head for a classifier, the recipe's
``loss`` (mse unless it says mae or huber) for regression and reconstruction. A model saved compiled with
``Huber`` (or a factory that compiles its model) was fine-tuned with mse without a word; now the run says so.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

# Keras' names for the losses a recipe can choose (strings, function names, class names), lower-cased.
CANONICAL = {
    "mse": "mse",
    "mean_squared_error": "mse",
    "meansquarederror": "mse",
    "mae": "mae",
    "mean_absolute_error": "mae",
    "meanabsoluteerror": "mae",
    "huber": "huber",
    "huber_loss": "huber",
}


def compiled_loss(source: Any, model: Any) -> str | None:
    """The name of the loss ``model`` was compiled with: read from a factory's compiled model, or from the
    ``.keras``/``.h5`` file it was loaded from (edgepipe loads files uncompiled). None when nothing says."""
    if isinstance(source, Path):
        return _name(_from_file(source))
    return _name(getattr(model, "loss", None))


def canonical(name: str | None) -> str | None:
    """``mse``, ``mae`` or ``huber`` for a Keras name of one of them; None for any other loss."""
    return CANONICAL.get(name.lower()) if name else None


def _from_file(path: Path) -> Any:
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
            return (config.get("compile_config") or {}).get("loss")
        if path.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as handle:
                raw = handle.attrs.get("training_config")
            if raw is None:
                return None
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw).get("loss")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return None


def _name(loss: Any) -> str | None:
    """A loss as Keras holds or serializes it (a string, a function, a Loss object, a config dict, one per
    output in a list or mapping: the first) -> its name."""
    if isinstance(loss, list | tuple):
        return _name(loss[0]) if loss else None
    if isinstance(loss, dict):
        if "class_name" in loss:
            config = loss.get("config")
            fn = config.get("fn") if isinstance(config, dict) else None
            return str(loss["class_name"]) if loss["class_name"] != "LossFunctionWrapper" else fn
        return _name(next(iter(loss.values()), None))
    if isinstance(loss, str):
        return loss
    if loss is None:
        return None
    return getattr(loss, "__name__", None) or type(loss).__name__
