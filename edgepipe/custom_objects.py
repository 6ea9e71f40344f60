"""A model's own Keras classes (custom layers, activations, constraints): made known to tf_keras by name.

Every stage copies the model from its layers' configs (TF-MOT's wrappers, ``clone_model``, edgepipe's
rebuilds), and tf_keras resolves each class name in a config through its registry. A class that the
registry does not hold, whether in a saved file or in a model a factory built with an unregistered
``Layer`` subclass, failed deep inside tf_keras with "'str' object is not callable".

Two ways in, both the user's own code:

- a factory's model: its classes are live objects already, and are registered by name on load;
- a saved file: the recipe names the modules that define them (``model.custom_objects``), which are
  imported from the recipe's folder like a ``module:function`` source. edgepipe never imports a module
  because a model file names it: a file from elsewhere does not choose the code that runs.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe.errors import ConfigError, ModelError
from edgepipe.keras_compat import all_layers, keras, select_keras2

# Packages whose classes tf_keras' deserializer finds without help (module recorded in a .keras config).
_KNOWN_MODULES = ("keras", "tf_keras", "tensorflow", "tensorflow_model_optimization")


@dataclass(frozen=True)
class Unknown:
    """A class a model file names that this process does not know: its config name and recorded module."""

    name: str
    module: str | None

    def __str__(self) -> str:
        return f"{self.name} (module {self.module!r})" if self.module else self.name


def register_modules(modules: list[str], search_dir: Path | None, file: str | None) -> list[str]:
    """Import each named module (from ``search_dir`` first) and register its Keras classes by name.

    Classes decorated with ``register_keras_serializable`` register themselves on import; every other
    class in the module that is a Keras layer, model, regularizer, constraint or initializer is added
    under its class name, which is the name tf_keras writes for an unregistered class. ``module:Name``
    registers one object (a custom activation function, say) under ``Name``. Returns what was added.
    """
    select_keras2()
    if search_dir is not None and str(search_dir) not in sys.path:
        sys.path.insert(0, str(search_dir))
    added: list[str] = []
    for index, entry in enumerate(modules):
        field = f"model.custom_objects[{index}]"
        module_name, _, attribute = entry.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # the user's module may fail in any way while it runs
            raise ConfigError.at(
                file, field, f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
            ) from None
        if attribute:
            target = getattr(module, attribute, None)
            if target is None:
                raise ConfigError.at(file, field, f"module {module_name!r} has no {attribute!r}")
            added += _register({attribute: target})
        else:
            added += _register(dict(_keras_classes(module)))
    return added


def register_model_classes(model: Any) -> list[str]:
    """Register the classes of a model built in this process whose configs tf_keras could not resolve."""
    return _register({_registered_name(cls): cls for cls in own_classes(model)})


def own_classes(model: Any) -> list[type]:
    """The classes of the model's layers (nested ones too) that are not Keras' or TensorFlow's."""
    found: list[type] = []
    for layer in all_layers(model):
        cls = type(layer)
        if not _is_builtin(cls.__module__) and cls not in found:
            found.append(cls)
    return found


def unknown_classes(path: Path) -> list[Unknown]:
    """The classes a saved model's config names that tf_keras cannot resolve here (empty when unreadable)."""
    config = _saved_config(path)
    if config is None:
        return []
    unknown: dict[str, Unknown] = {}
    for entry in _class_entries(config):
        module, name = entry.get("module"), entry.get("registered_name") or entry["class_name"]
        if (module is not None and _is_builtin(str(module))) or name.startswith("__"):
            continue  # "__keras_tensor__": Keras 3's record of a tensor argument, not a class
        if not _known(name, entry["class_name"], legacy=module is None):
            shown = str(entry["class_name"]).rpartition(">")[2]  # HDF5 keeps "package>Class" as the class name
            unknown.setdefault(name, Unknown(shown, None if module is None else str(module)))
    return list(unknown.values())


def _known(name: str, class_name: str, legacy: bool) -> bool:
    """Whether tf_keras (or Keras 3, for a Keras 3 file) resolves a class name from a config.

    ``legacy``: an HDF5 config records no module, so a built-in is recognised by its class name.
    """
    k = keras()
    if name in k.saving.get_custom_objects() or class_name in k.saving.get_custom_objects():
        return True
    if "keras" in sys.modules and name in sys.modules["keras"].saving.get_custom_objects():
        return True
    if not legacy:
        return False
    if class_name in ("Functional", "Sequential", "Model"):
        return True
    namespaces = (k.layers, k.initializers, k.regularizers, k.constraints, k.optimizers, k.losses, k.metrics)
    return any(hasattr(namespace, class_name) for namespace in namespaces)


def refuse_unknown(path: Path, unknown: list[Unknown]) -> ModelError:
    """The error for a model file whose classes are not known here, with the recipe line that fixes it."""
    modules = sorted({u.module for u in unknown if u.module})
    listed = ", ".join(str(u) for u in unknown)
    example = f"[{', '.join(modules)}]" if modules else "[mylayers]"
    return ModelError(
        f"cannot load model {path}: it uses classes that are not part of Keras: {listed}",
        hint=f"name the module(s) that define them in the recipe: model.custom_objects: {example} "
        "(imported from the recipe's folder, like a module:function source)",
    )


def _register(objects: dict[str, Any]) -> list[str]:
    """Add to tf_keras' registry, or to Keras 3's for a Keras 3 class (a Keras 3 file's own layers)."""
    added = []
    for name, target in objects.items():
        registry = keras().saving.get_custom_objects()
        if _is_keras3_class(target):
            registry = sys.modules["keras"].saving.get_custom_objects()
        if registry.get(name) is not target:
            registry[name] = target
            added.append(name)
    return added


def _is_keras3_class(target: Any) -> bool:
    keras3 = sys.modules.get("keras")
    return inspect.isclass(target) and keras3 is not None and issubclass(target, keras3.layers.Layer)


def _keras_classes(module: Any) -> list[tuple[str, type]]:
    """The module's own classes that tf_keras deserializes by name (not the ones it merely imports)."""
    k = keras()
    bases: tuple[type, ...] = (
        k.layers.Layer,
        k.regularizers.Regularizer,
        k.constraints.Constraint,
        k.initializers.Initializer,
    )
    if "keras" in sys.modules:
        bases += (sys.modules["keras"].layers.Layer,)
    classes = []
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ == module.__name__ and issubclass(cls, bases):
            classes.append((_registered_name(cls), cls))
            classes.append((cls.__name__, cls))
    return classes


def _registered_name(cls: type) -> str:
    if _is_keras3_class(cls):
        return str(sys.modules["keras"].saving.get_registered_name(cls))
    return str(keras().saving.get_registered_name(cls))


def is_users_layer(layer: Any) -> bool:
    """A layer of a class of the user's (or another package's) own, not Keras', TensorFlow's, TF-MOT's or one
    edgepipe puts in a model: no stage knows what it computes."""
    module = type(layer).__module__
    return not _is_builtin(module) and module.split(".")[0] != "edgepipe"


def _is_builtin(module: str) -> bool:
    return module.split(".")[0] in _KNOWN_MODULES


def _saved_config(path: Path) -> dict[str, Any] | None:
    """The model config a .keras archive or an HDF5 file holds (None for a SavedModel or on any error)."""
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                return dict(json.loads(archive.read("config.json")))
        if path.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as archive:
                raw = archive.attrs.get("model_config")
            if raw is None:
                return None
            return dict(json.loads(raw.decode() if isinstance(raw, bytes) else raw))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return None


def _class_entries(node: Any) -> list[dict[str, Any]]:
    """Every serialized object in a config: a dict with ``class_name`` and ``config``, at any depth."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str) and "config" in node:
            found.append(node)
        for value in node.values():
            found += _class_entries(value)
    elif isinstance(node, list):
        for value in node:
            found += _class_entries(value)
    return found
