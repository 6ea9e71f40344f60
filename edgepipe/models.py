"""Keras models: loading a model source, checking TF-MOT can wrap it, copying, compiling and training.

Everything here works on tf_keras (Keras 2) models; a Keras 3 model is converted on load where that is
faithful (see ``keras3_import``) and refused otherwise.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.config.recipe import TrainSettings
from edgepipe.custom_objects import refuse_unknown, register_model_classes, register_modules, unknown_classes
from edgepipe.data import Dataset
from edgepipe.errors import ConfigError, ModelError
from edgepipe.keras3_import import convert_keras3, is_keras3_model
from edgepipe.keras_compat import flat_io, keras, tf
from edgepipe.precision import float32_model, float_inputs
from edgepipe.progress import Progress
from edgepipe.sources import EntryPoint
from edgepipe.tasks import Score, Task, answer_width, ends_with_softmax, output_layers


def load_source(
    source: Path | EntryPoint,
    data: Dataset,
    file: str | None = None,
    field: str = "model.source",
    notes: list[str] | None = None,
    custom_objects: list[str] | None = None,
    search_dir: Path | None = None,
) -> Any:
    """The float tf_keras model named by a recipe, checked for what TF-MOT needs; what loading changed in the
    model's form (a Keras 3 rebuild) is appended to ``notes``.

    ``custom_objects``: the recipe's modules defining a saved model's own classes, imported from ``search_dir``
    (see ``edgepipe.custom_objects``); a factory's own classes are registered from its model.
    """
    if custom_objects:
        registered = register_modules(custom_objects, search_dir, file)
        if notes is not None and registered:
            notes.append(f"model.custom_objects: registered {', '.join(registered)}")
    if isinstance(source, EntryPoint):
        factory = source.load(file, field)
        try:
            model = factory()
        except Exception as exc:
            raise ModelError(f"{file}: {field}: {source} failed: {type(exc).__name__}: {exc}") from None
        _allow_own_lambdas(model)
        register_model_classes(model)
    else:
        model = load_file(source)
    head = data.head(64)
    sample = head[0] if len(head) == 1 else list(head)
    if is_keras3_model(model):
        model, rebuilt = convert_keras3(model, sample)
        if notes is not None:
            notes.extend(rebuilt)
    k = keras()
    if not isinstance(model, k.Model):
        raise ModelError(f"{file}: {field}: {source} gave a {type(model).__name__}, not a Keras model")
    check_wrappable(model)
    check_rebuildable(model)
    model, flattened = flat_io(model, k.Model)
    if notes is not None:
        notes.extend(flattened)
    if not model.built and len(data.input_shapes) == 1:
        model.build((None, *data.input_shapes[0]))
    model, rebuilt = float32_model(model, sample)  # half-precision layers, integer image inputs: see precision
    model, declared = float_inputs(model)
    if notes is not None:
        notes.extend(rebuilt + declared)
    check_fits(model, in_model_order(model, data), file)
    return model


def in_model_order(model: Any, data: Dataset) -> Dataset:
    """``data`` with arrays given by name (dicts, held in sorted order) in the order of the model's inputs and
    outputs, when the names are exactly the model's input and output names (``model.fit({"meta": ...,
    "img": ...})`` for a model whose inputs are [img, meta] in another order). Other names keep the sorted
    order, which is a dict-built model's own (``keras_compat.flat_io``)."""
    changed: dict[str, Any] = {}
    for field, given, wanted, keys in (
        ("input_names", data.input_names, list(model.input_names), ("x_train", "x_test")),
        ("output_names", data.output_names, list(model.output_names), ("y_train", "y_test")),
    ):
        if not given or sorted(given) != sorted(wanted) or list(given) == wanted:
            continue
        order = [given.index(name) for name in wanted]
        for key in keys:
            changed[key] = tuple(getattr(data, key)[i] for i in order)
        changed[field] = tuple(wanted)
    return replace(data, **changed) if changed else data


def unmatched_names(model: Any, data: Dataset) -> list[str]:
    """A note for targets given by name (a dict) that are not the model's output names, when there are several:
    they are taken in sorted order, which the shape and label checks cannot always tell wrong (two heads of one
    shape). A dict-built model's outputs carry their keys' names (``keras_compat.flat_io``)."""
    given, wanted = data.output_names, list(model.output_names)
    if len(given) < 2 or sorted(given) == sorted(wanted):
        return []
    pairs = ", ".join(f"{a} to {b}" for a, b in zip(given, wanted, strict=False))
    return [
        f"the data's targets are named {', '.join(given)}, the model's outputs {', '.join(wanted)}: taken in "
        f"sorted order ({pairs}); name them as the model's outputs to have them matched by name"
    ]


def _allow_own_lambdas(model: Any) -> None:
    """Let tf_keras copy the Lambda layers of a model that the recipe's own code built in this process.

    Every stage works on a copy made from the layers' configs, and tf_keras refuses to rebuild a Lambda's Python
    function from a config unless unsafe deserialization is on: a model with a Lambda failed its first stage
    with an internal error. That guard is for files from elsewhere (``load_file`` keeps it: a .keras file with
    a Lambda is refused); the code here is the user's own module, already running.
    """
    if any(type(layer).__name__ == "Lambda" for layer in getattr(model, "layers", [])):
        from tf_keras.src.saving import serialization_lib

        serialization_lib.enable_unsafe_deserialization()


def _check_labels_fit(
    shape: tuple[Any, ...], labels: np.ndarray, test: np.ndarray, head: Any, which: str, file: str | None
) -> None:
    """Integer labels must fit a classifier output (``tasks.answer_width``): one per sample or per position,
    each below the output's class count, or a 0/1 label per value of a multi-label head (not a softmax)."""
    width, largest = answer_width(shape, labels.shape[1:]), int(max(labels.max(), test.max()))
    if width is None:
        raise ConfigError.at(
            file,
            "data.source",
            f"the labels have shape {tuple(labels.shape[1:])} per sample but the model's output{which} has shape "
            f"{tuple(shape)}: give one label per sample, one per position ({tuple(shape[:-1])}) when the last axis "
            f"holds each position's classes (segmentation), or one 0/1 label per value {tuple(shape)} (multi-label)",
        )
    per_value = width == 1 and tuple(labels.shape[1:]) == tuple(shape) and len(shape) > 0 and shape[-1] != 1
    if per_value and ends_with_softmax(head):
        raise ConfigError.at(
            file,
            "data.source",
            f"the labels are multi-hot ({shape[-1]} yes/no labels per sample) but the model's output{which} is a "
            "softmax, which answers one class per sample",
            hint="end the head in a sigmoid (or logits) per label for multi-label, or give one class per sample",
        )
    if width == 1 and largest > 1:
        kind = "gives one yes/no answer per value" if per_value else "has one unit (a binary classifier)"
        raise ConfigError.at(
            file,
            "data.source",
            f"the model's output{which} {kind} but the labels go up to {largest}",
            hint=f"give the head {largest + 1} units, or labels 0 and 1",
        )
    if width > 1 and largest >= width:
        raise ConfigError.at(
            file,
            "data.source",
            f"the labels go up to {largest} but the model's output{which} has {width} units, one per class",
            hint=f"give the head {largest + 1} units",
        )


def check_fits(model: Any, data: Dataset, file: str | None) -> None:
    """The data must have one array per model input of the input's shape, and one target per output."""
    expected = [tuple(shape[1:]) for shape in _shapes(model.input_shape)]
    if len(expected) != len(data.input_shapes):
        raise ConfigError.at(
            file,
            "data.source",
            f"the model has {len(expected)} inputs but the data {len(data.input_shapes)} input arrays",
            hint="give x_train_0, x_train_1, ... (one per input, in the order of the model's inputs)",
        )
    for index, (want, got) in enumerate(zip(expected, data.input_shapes, strict=True)):
        if len(want) != len(got) or any(e is not None and e != d for e, d in zip(want, got, strict=True)):
            which = "" if len(expected) == 1 else f" (input {index}, {model.input_names[index]!r})"
            raise ConfigError.at(file, "data.source", f"samples have shape {got} but the model expects {want}{which}")
    outputs = len(_shapes(model.output_shape))
    if data.y_train and len(data.y_train) != outputs:
        raise ConfigError.at(
            file,
            "data.source",
            f"the model has {outputs} outputs but the data {len(data.y_train)} target arrays",
            hint="give y_train_0, y_train_1, ... (one per output, in the order of the model's outputs)",
        )
    heads = output_layers(model)
    for index, (shape, labels) in enumerate(zip(_shapes(model.output_shape), data.y_train, strict=False)):
        if labels.dtype.kind not in "iub" or shape[-1] is None:
            continue  # regression targets, or an output of unknown width
        _check_labels_fit(
            shape[1:], labels, data.y_test[index], heads[index], "" if outputs == 1 else f" (output {index})", file
        )
    if not data.y_train and (outputs, len(expected)) != (1, 1):
        raise ConfigError.at(
            file,
            "task",
            f"reconstruction compares the model's output with its input; this model has {len(expected)} inputs "
            f"and {outputs} outputs",
            hint="reconstruction needs a model with one input and one output of the same size",
        )


def _shapes(shape: Any) -> list[tuple[Any, ...]]:
    """Keras gives one shape tuple for a single input/output and a list of them for several."""
    return list(shape) if isinstance(shape, list) else [shape]


def load_file(path: Path) -> Any:
    """A Keras model from a .keras (tf_keras or Keras 3) or .h5 file or a SavedModel directory, uncompiled."""
    k = keras()
    if path.is_dir():
        if not (path / "keras_metadata.pb").exists():
            raise ModelError(
                f"{path} is a SavedModel without Keras metadata (exported for inference only); TF-MOT needs a "
                "trainable Keras model",
                hint="save the model with model.save('model.keras') from tf_keras, or give a module:function factory",
            )
        return _guarded_load(lambda: k.models.load_model(path, compile=False), path)
    if path.suffix == ".keras":
        if _keras_file_version(path).startswith("3."):
            import keras as keras3  # the Keras 3 package that TensorFlow installs

            return _guarded_load(
                lambda: keras3.saving.load_model(path, compile=False),
                path,
                hint="Keras 3 cannot read back every model it writes to HDF5 (operations such as x * 0.5 are lost): "
                "save it as model.keras",
            )
        return _guarded_load(lambda: k.models.load_model(path, compile=False), path)
    if path.suffix in (".h5", ".hdf5"):
        if _h5_keras_version(path).startswith("3."):  # Keras 3 writes its own layer configs into HDF5 too
            import keras as keras3

            return _guarded_load(
                lambda: keras3.saving.load_model(path, compile=False),
                path,
                hint="Keras 3 cannot read back every model it writes to HDF5 (operations such as x * 0.5 are lost): "
                "save it as model.keras",
            )
        return _guarded_load(lambda: k.models.load_model(path, compile=False), path)
    raise ModelError(
        f"{path}: unknown model format {path.suffix!r}",
        hint="give a .keras or .h5 file, a Keras SavedModel directory, or module:function",
    )


def _keras_file_version(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            return str(json.loads(archive.read("metadata.json")).get("keras_version", ""))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as exc:
        raise ModelError(f"{path} is not a valid .keras file: {exc}") from None


def _h5_keras_version(path: Path) -> str:
    """The Keras version an HDF5 model file was written by ("" when it does not say)."""
    import h5py

    try:
        with h5py.File(path, "r") as archive:
            version = archive.attrs.get("keras_version", "")
    except OSError as exc:
        raise ModelError(f"{path} is not a valid HDF5 model file: {exc}") from None
    return version.decode() if isinstance(version, bytes) else str(version)


def _guarded_load(load: Any, path: Path, hint: str | None = None) -> Any:
    try:
        return load()
    except Exception as exc:
        unknown = unknown_classes(path)
        if unknown:
            raise refuse_unknown(path, unknown) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Lambda layer" in first:
            raise ModelError(
                f"cannot load model {path}: it has a Lambda layer, whose Python code Keras does not run from a "
                "file (a saved model could then run anything)",
                hint="give the model as module:function (your code builds it, Lambda included), or replace the "
                "Lambda with Keras layers and save it again",
            ) from None
        raise ModelError(f"cannot load model {path}: {first}", hint=hint) from None


def check_wrappable(model: Any) -> None:
    """TF-MOT wraps only Sequential and Functional models; say so before any training starts."""
    k = keras()
    if not isinstance(model, k.Sequential) and not getattr(model, "_is_graph_network", False):
        raise ModelError(
            f"model {model.name!r} is a subclassed Keras model ({type(model).__name__}); TF-MOT can wrap only "
            "Sequential and Functional models",
            hint="rebuild it with keras.Sequential or the functional API (keras.Model(inputs, outputs))",
        )


# Layers Keras records for TensorFlow functions and tensor methods: they keep their constant arguments in a form
# Keras rebuilds (``x * np.arange(8)``).
TENSORFLOW_CALLS = ("TFOpLambda", "SlicingOpLambda", "InstanceMethod", "InstanceProperty", "ClassMethod")


def check_rebuildable(model: Any) -> None:
    """Refuse, before any training, a layer of the model's own called on a constant tensor beside the model's
    tensors (``Add()([x, positions])`` with ``positions`` computed outside the model): Keras records the constant
    in the model's config and cannot rebuild the model from it, which every stage does (``copy_model``)."""
    t = tf()
    found = []
    for layer in model.layers:
        if type(layer).__name__ in TENSORFLOW_CALLS:
            continue
        for node in layer.inbound_nodes:
            inputs = t.nest.flatten(node.call_args[0] if node.call_args else [])
            if any((t.is_tensor(a) or isinstance(a, np.ndarray)) and not hasattr(a, "_keras_history") for a in inputs):
                found.append(f"{layer.name} ({type(layer).__name__})")
    if found:
        raise ModelError(
            f"model {model.name!r}: {', '.join(found)} takes a constant tensor beside the model's own: a tensor "
            "computed outside the model (a NumPy array, or a layer called on one) is recorded as a fixed value, "
            "never trained, and Keras cannot rebuild the model from its config, which every stage does",
            hint="compute it inside the model: a layer of your own that holds it as a weight (as Keras' ViT "
            "example's PatchEncoder does for position embeddings), or a model Input fed with the data",
        )


def copy_model(model: Any) -> Any:
    """An independent copy with the same weights.

    TF-MOT's wrappers share layer objects with the model they wrap, so every stage works on a copy: without it
    the float baseline would silently turn into the pruned model.
    """
    k = keras()
    try:
        twin = k.models.clone_model(model)
    except Exception as exc:  # Keras cannot rebuild it from its config: say so, not "a bug in edgepipe"
        raise ModelError(
            f"Keras cannot copy model {model.name!r} (clone_model, which rebuilds it from its config): "
            f"{type(exc).__name__}: {exc}",
            hint="every stage works on a copy; a layer whose get_config() misses an argument of its __init__, or "
            "a constant tensor passed to a layer, are the usual causes",
        ) from None
    twin.build(model.input_shape)
    twin.set_weights(model.get_weights())
    return twin


def learning_rate_for(settings: TrainSettings, samples: int) -> Any:
    """Adam's learning rate for ``settings``: the number, or a cosine decay to zero over every step of the fit."""
    if settings.learning_rate_schedule == "constant":
        return settings.learning_rate
    steps = settings.epochs * math.ceil(samples / settings.batch_size)
    return keras().optimizers.schedules.CosineDecay(settings.learning_rate, decay_steps=max(1, steps))


def compile_for(model: Any, task: Task, learning_rate: Any) -> None:
    """Adam (``learning_rate``: a number or a Keras schedule) + the task's loss per output + its metric."""
    k = keras()
    losses = task.losses()
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate),
        loss=losses[0] if len(losses) == 1 else losses,
        metrics=[[m] for m in task.keras_metrics()] if len(losses) > 1 else task.keras_metrics()[:1],
    )


def train(
    model: Any,
    data: Dataset,
    settings: TrainSettings,
    progress: Progress,
    label: str,
    task: Task,
    callbacks: list[Any] | None = None,
    teacher: Any = None,
) -> dict[str, list[float]]:
    """Compile and fit on the training split, reporting each epoch; returns the per-epoch history.

    ``task`` was decided on the float model (``Task.of``): a wrapped model no longer shows its head's activation.
    With ``settings.distill``, the model is fine-tuned against ``teacher`` as well (``optimization.distill``).
    """
    k = keras()

    class _Report(k.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            progress.epoch_done(epoch + 1, {key: float(v) for key, v in (logs or {}).items()})

    targets = None
    if settings.distill is not None and teacher is not None:
        from edgepipe.optimization import distill

        packed = distill.packed_targets(teacher, data, task, Task.of(teacher, task.spec, data.y_train))
        targets = packed[0] if len(packed) == 1 else packed
        distill.compile_distilled(model, task, settings.distill, learning_rate_for(settings, data.train_samples))
    else:
        compile_for(model, task, learning_rate_for(settings, data.train_samples))
    progress.training_started(label, settings.epochs)
    try:
        history = _fit(model, data, settings, callbacks, _Report(), label, targets)
    finally:
        progress.training_done()
    return {key: [round(float(v), 6) for v in values] for key, values in history.history.items()}


def _fit(
    model: Any,
    data: Dataset,
    settings: TrainSettings,
    callbacks: list[Any] | None,
    report: Any,
    label: str,
    targets: np.ndarray | list[np.ndarray] | None = None,
) -> Any:
    """``model.fit``; an exception from the model's own code is a ModelError naming the training, not a bug."""
    try:
        return model.fit(
            data.keras_x("train"),
            data.keras_y("train") if targets is None else targets,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            shuffle=True,
            verbose=0,
            callbacks=[*(callbacks or []), report],
        )
    except Exception as exc:  # TensorFlow wraps the model's error; its last line says what went wrong
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        raise ModelError(
            f"{label}: training failed: {type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": "),
            hint="the error comes from the model's own layers or the data's shapes; "
            "check that the model trains with model.fit on this data",
        ) from None


def outputs(model: Any, x: np.ndarray | list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """The model's outputs for ``x``, one array per output."""
    produced = model.predict(x, batch_size=512, verbose=0)
    return tuple(np.asarray(o) for o in produced) if isinstance(produced, list | tuple) else (np.asarray(produced),)


def score(model: Any, data: Dataset, task: Task) -> Score:
    """The task's metric on the test split (accuracy, mean absolute error, reconstruction error)."""
    return task.score(outputs(model, data.keras_x("test")), data.targets("test"))


def accuracy(model: Any, data: Dataset) -> float:
    """Top-1 accuracy on the test split (of a classifier; the mean over its outputs)."""
    return score(model, data, Task(probabilities=(False,) * max(1, len(data.y_test)))).value


def steps_per_epoch(data: Dataset, batch_size: int) -> int:
    return -(-data.train_samples // batch_size)


# Training samples on which BatchNorm statistics are re-estimated after the float model trains and after each
# channel removal (``reestimate_batchnorm``).
BATCHNORM_SAMPLES = 2048


def reestimate_batchnorm(model: Any, x: np.ndarray | list[np.ndarray], limit: int, batch_size: int = 128) -> int:
    """Re-estimate every BatchNormalization layer's moving mean and variance on the first ``limit`` samples of
    ``x`` (one array, or one per input) (adaptive BN).

    Moving averages lag the weights they describe. After a short training (Keras' default momentum 0.99, or
    0.999 in Keras Applications) they still mix in early epochs: a MobileNetV2 trained 6 epochs on 1,347
    digits scores 0.10 with them and 0.72 once they are re-estimated ("precise BN", as pycls and Detectron2
    do after training). Removing channels changes what each BatchNorm sees while its statistics describe the
    old model: a 50 %-pruned ResNet example classifies the digits at 10 % with them and at 71 % once
    re-estimated (EagleEye, Li et al. 2020, uses the same step to rank candidates). Each batch is run in
    training mode with the momentum set so that the moving statistics end as the plain average over the
    batches; only BatchNorm state changes (no weights are trained). Returns the number of samples used.
    """
    k = keras()
    # submodules, not layers: a backbone nested as one layer (Sequential([MobileNetV2(...), Dense])) counts too
    norms = [module for module in model.submodules if isinstance(module, k.layers.BatchNormalization)]
    inputs = x if isinstance(x, list) else [x]
    samples = min(limit, len(inputs[0]))
    if not norms or not samples:
        return 0
    momenta = [layer.momentum for layer in norms]
    try:
        for index, start in enumerate(range(0, samples, batch_size)):
            for layer in norms:
                layer.momentum = index / (index + 1)
            end = min(start + batch_size, samples)
            batch = [array[start:end] for array in inputs]
            model(batch if isinstance(x, list) else batch[0], training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    return samples
