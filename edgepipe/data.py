"""Data sets: an ``.npz`` file or a Python entry point, checked once and handed on as a plain value.

The data-source contract (what ``data.source`` must give), for ``task``:

- ``classification`` (the default): ``x_train, y_train, x_test, y_test``; ``y`` holds one integer class label
  per sample (one-hot rows are accepted and turned into labels, with a note).
- ``regression``: the same four arrays; ``y`` holds float targets, shape ``(samples,)`` or ``(samples, k)``
  matching the model's output.
- a list, one task per output (``[classification, regression]``: a class head next to a value head): each
  output's ``y`` is checked as its task asks; given by name (dicts), once they are in the model's output order
  (``Dataset.for_tasks``).
- ``reconstruction`` (autoencoders): ``x_train, x_test`` only; each output is compared with the input it
  reconstructs, so ``y`` is not needed (and ignored if given).

``x`` is numeric (stored as float32) with the shape of one model input per sample; NaN and infinity are refused.
A model with several inputs takes ``x_train_0, x_train_1, ...`` (and ``x_test_0, ...``) in the order of the
model's inputs; several outputs take ``y_train_0, y_train_1, ...`` likewise. A ``module:function`` entry point
is called with no arguments and returns a ``Dataset`` or a mapping of those names to arrays, where
``x_train``/``y_train``/... may also be lists or tuples of arrays (one per input or output); or it returns
two ``tf.data`` pipelines, ``(train, test)`` or ``{"train": ..., "test": ...}``, read into arrays (``tf_data``).

Checks happen here, before any model is trained, so a wrong file fails in a second and names the array.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.errors import ConfigError
from edgepipe.labels import check_finite, check_targets, kinds_for
from edgepipe.sources import EntryPoint
from edgepipe.tasks import TaskKind, TaskSpec, per_output
from edgepipe.tf_data import arrays_from_pipelines, is_pipeline, pipelines_of

Arrays = tuple[np.ndarray, ...]


def _as_arrays(value: np.ndarray | Sequence[np.ndarray]) -> Arrays:
    if isinstance(value, np.ndarray):
        return (value,)
    return tuple(np.asarray(v) for v in value)


@dataclass(frozen=True)
class Dataset:
    """A train/test split: one array per model input (``x_*``) and one per model output (``y_*``, empty for
    reconstruction). A single array is accepted where a tuple is expected and stored as a 1-tuple."""

    name: str
    x_train: Arrays
    y_train: Arrays
    x_test: Arrays
    y_test: Arrays
    # What loading changed and the user should know (one-hot labels turned into class indices, say).
    notes: tuple[str, ...] = ()
    # The names of the x and y arrays when the data gave them as dicts (in the order they are held: sorted);
    # ``models.in_model_order`` puts them in the model's order when they are its input and output names.
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            object.__setattr__(self, key, _as_arrays(getattr(self, key)))

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(x.shape[1:]) for x in self.x_train]

    @property
    def train_samples(self) -> int:
        return len(self.x_train[0])

    @property
    def test_samples(self) -> int:
        return len(self.x_test[0])

    def keras_x(self, split: str) -> np.ndarray | list[np.ndarray]:
        """Inputs as Keras takes them: one array, or a list for a model with several inputs."""
        arrays = self.x_train if split == "train" else self.x_test
        return arrays[0] if len(arrays) == 1 else list(arrays)

    def targets(self, split: str) -> Arrays:
        """What each output is scored against: the labels, or the inputs for reconstruction (no labels)."""
        if split == "train":
            return self.y_train or self.x_train
        return self.y_test or self.x_test

    def keras_y(self, split: str) -> np.ndarray | list[np.ndarray]:
        arrays = self.targets(split)
        return arrays[0] if len(arrays) == 1 else list(arrays)

    def head(self, count: int) -> Arrays:
        """The first ``count`` test inputs (for checks that run the model on a few samples)."""
        return tuple(x[:count] for x in self.x_test)

    def sha256(self) -> str:
        """Content hash of every array, recorded in every result for provenance."""
        digest = hashlib.sha256()
        for array in (*self.x_train, *self.y_train, *self.x_test, *self.y_test):
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def representative(self, count: int, seed: int) -> Arrays:
        """``count`` training samples (of every input) for calibrating full-integer conversion, never test samples."""
        rng = np.random.default_rng(seed)
        count = min(count, self.train_samples)
        chosen = rng.choice(self.train_samples, size=count, replace=False)
        return tuple(x[chosen] for x in self.x_train)

    def classes(self) -> list[int | None]:
        """Classes per output with integer labels (largest label + 1); None for an output with float targets."""
        return [
            int(max(a.max(), b.max())) + 1 if a.dtype.kind in "iub" else None
            for a, b in zip(self.y_train, self.y_test, strict=True)
        ]

    def for_tasks(self, task: TaskSpec, file: str | None = None, field: str = "data.source") -> Dataset:
        """The targets checked for a task given per output, once they are in the model's output order: data
        given by name was read in sorted order, so ``from_arrays`` could only check that its targets are finite
        numbers. Converts integer labels (and one-hot rows) of the classifier outputs; a no-op for one task."""
        if isinstance(task, str) or not self.y_train:
            return self
        kinds = per_output(task, len(self.y_train))
        checked: dict[str, Any] = {}
        notes = list(self.notes)
        for key in ("y_train", "y_test"):
            arrays = []
            for index, (y, kind) in enumerate(zip(getattr(self, key), kinds, strict=False)):
                label = self.output_names[index] if index < len(self.output_names) else f"{key}_{index}"
                named = f"{key} {label!r}" if self.output_names else label
                y, note = check_targets(y, named, kind, self.name, file, field, several=True, mixed=True)
                arrays.append(y)
                notes.extend([note] if note and note not in notes else [])
            checked[key] = tuple(arrays)
        return replace(self, **checked, notes=tuple(notes))

    def summary(self, task: TaskSpec = "classification") -> dict[str, Any]:
        kinds = per_output(task, len(self.y_test))
        counts = self.classes()
        classes = [count if kind == "classification" else None for count, kind in zip(counts, kinds, strict=True)]
        return {
            "name": self.name,
            "task": task,
            "train_samples": self.train_samples,
            "test_samples": self.test_samples,
            "input_shape": list(self.input_shapes[0]),
            "input_shapes": [list(shape) for shape in self.input_shapes],
            "target_shapes": [list(y.shape[1:]) for y in self.y_test],
            "classes": (classes[0] if len(classes) == 1 else classes) if "classification" in kinds else None,
            "sha256": self.sha256(),
            "notes": list(self.notes),
        }


def load_dataset(
    source: Path | EntryPoint,
    file: str | None = None,
    field: str = "data.source",
    task: TaskSpec = "classification",
) -> Dataset:
    """Load and check a data set for ``task``; every problem is a ConfigError naming ``file`` and ``field``."""
    if isinstance(source, EntryPoint):
        try:
            produced = source.load(file, field)()
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError.at(file, field, f"{source} failed: {type(exc).__name__}: {exc}") from None
        if isinstance(produced, Dataset):  # checked like any other source
            arrays = {key: getattr(produced, key) for key in ("x_train", "y_train", "x_test", "y_test")}
            checked = from_arrays(arrays, produced.name, file, field, task=task)
            return Dataset(
                produced.name,
                checked.x_train,
                checked.y_train,
                checked.x_test,
                checked.y_test,
                notes=produced.notes + checked.notes,
            )
        pipelines = pipelines_of(produced)
        if pipelines is not None:
            arrays, read = arrays_from_pipelines(*pipelines, str(source), file, field)
            checked = from_arrays(arrays, str(source), file, field, task=task)
            return replace(checked, notes=(*read, *checked.notes))
        if is_pipeline(produced) or (isinstance(produced, Mapping) and any(map(is_pipeline, produced.values()))):
            found = ", ".join(sorted(map(str, produced))) if isinstance(produced, Mapping) else "one pipeline"
            raise ConfigError.at(
                file,
                field,
                f"{source} returned tf.data pipelines edgepipe cannot tell apart ({found}): it needs a train and a "
                "test split",
                hint="return (train, test) or {'train': train, 'test': test}; image_dataset_from_directory("
                "..., validation_split=0.2, subset='both', seed=0) gives the pair",
            )
        if not isinstance(produced, Mapping):
            raise ConfigError.at(
                file,
                field,
                f"{source} returned {type(produced).__name__}, expected a Dataset "
                "or a mapping with x_train, y_train, x_test, y_test",
            )
        return from_arrays(produced, str(source), file, field, task=task)
    return _load_npz(source, file, field, task)


def _load_npz(path: Path, file: str | None, field: str, task: TaskSpec) -> Dataset:
    if path.is_dir() or path.suffix != ".npz":
        raise ConfigError.at(file, field, f"{path} is not an .npz file (expected an .npz or module:function)")
    try:
        # allow_pickle=False: an npz from elsewhere must not be able to run code when it is read.
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError.at(file, field, f"cannot read {path}: {exc}") from None
    return from_arrays(arrays, path.stem, file, field, origin=str(path), task=task)


def _collect(arrays: Mapping[str, Any], key: str) -> tuple[list[np.ndarray], list[str]] | None:
    """``key`` as one array, a list/tuple of arrays, or numbered arrays ``key_0, key_1, ...``; with their names."""
    if key in arrays:
        value = arrays[key]
        if isinstance(value, Mapping):  # by input or output name: in the order Keras flattens a dict (its keys sorted)
            names = sorted(value)
            return [np.asarray(value[name]) for name in names], [f"{key}[{name!r}]" for name in names]
        if isinstance(value, list | tuple):
            if not value:  # a Dataset without labels has y_train = (): no array at all
                return None
            names = [key] if len(value) == 1 else [f"{key}[{i}]" for i in range(len(value))]
            return [np.asarray(v) for v in value], names
        return [np.asarray(value)], [key]
    numbered = []
    while f"{key}_{len(numbered)}" in arrays:
        numbered.append(f"{key}_{len(numbered)}")
    if not numbered:
        return None
    return [np.asarray(arrays[name]) for name in numbered], numbered


def from_arrays(
    arrays: Mapping[str, Any],
    name: str,
    file: str | None,
    field: str,
    origin: str | None = None,
    task: TaskSpec = "classification",
) -> Dataset:
    """Check the arrays for presence, matching counts and shapes, finite numbers and targets fit for ``task`` (one
    task, or one per output)."""
    origin = origin or name
    required = ("x_train", "x_test") if task == "reconstruction" else ("x_train", "y_train", "x_test", "y_test")
    found = {key: _collect(arrays, key) for key in ("x_train", "y_train", "x_test", "y_test")}
    missing = [key for key in required if found[key] is None]
    if missing:
        given = sorted(key for key in arrays if key not in missing)  # a Dataset's empty y_train is not "found"
        listing = ", ".join(given) or "nothing"
        empty = [key for key in missing if key in arrays]
        raise ConfigError.at(
            file,
            field,
            f"{origin} gives no labels ({', '.join(empty)} empty)"
            if empty and empty == missing
            else f"{origin} has no array {', '.join(repr(m) for m in missing)} "
            f"(found: {listing}; expected {', '.join(required)}, or numbered ones such as x_train_0 for a "
            "model with several inputs)",
            hint=(
                "a model that reconstructs its input needs no labels: set task: reconstruction in the recipe"
                if all(key.startswith("y_") for key in missing)
                else None
            ),
        )
    checked: dict[str, list[np.ndarray]] = {}
    notes: list[str] = []
    if task == "reconstruction" and (found["y_train"] or found["y_test"]):
        notes.append("reconstruction: y arrays ignored (each output is compared with the input it reconstructs)")
    for split in ("train", "test"):
        xs, names = found[f"x_{split}"]  # type: ignore[misc]
        checked[f"x_{split}"] = [_check_x(x, label, origin, file, field) for x, label in zip(xs, names, strict=True)]
        checked[f"y_{split}"] = []
        if task != "reconstruction":
            ys, y_names = found[f"y_{split}"]  # type: ignore[misc]
            kinds = kinds_for(task, ys, y_names, arrays, origin, file, field)
            for y, label, kind in zip(ys, y_names, kinds, strict=True):
                y, note = check_targets(
                    y, label, kind, origin, file, field, several=len(ys) > 1, mixed=not isinstance(task, str)
                )
                checked[f"y_{split}"].append(y)
                notes.extend([note] if note else [])
            names = [*names, *y_names]
        counts = [len(a) for a in (*checked[f"x_{split}"], *checked[f"y_{split}"])]
        if len(set(counts)) > 1:
            listing = ", ".join(f"{label} has {count}" for label, count in zip(names, counts, strict=True))
            raise ConfigError.at(file, field, f"{origin}: the {split} arrays differ in samples: {listing}")
        if counts[0] == 0:
            raise ConfigError.at(file, field, f"{origin}: the {split} split is empty")
    for kind in ("x", "y"):
        train, test = checked[f"{kind}_train"], checked[f"{kind}_test"]
        if len(train) != len(test):
            raise ConfigError.at(file, field, f"{origin}: {len(train)} {kind}_train arrays but {len(test)} {kind}_test")
        for index, (a, b) in enumerate(zip(train, test, strict=True)):
            if a.shape[1:] != b.shape[1:]:
                which = f"{kind}_train" + (f"_{index}" if len(train) > 1 else "")
                raise ConfigError.at(
                    file,
                    field,
                    f"{origin}: {which} samples have shape {a.shape[1:]} but the test samples {b.shape[1:]}",
                )
    names: dict[str, tuple[str, ...]] = {"x": (), "y": ()}
    for kind in ("x",) if task == "reconstruction" else ("x", "y"):
        train, test = arrays.get(f"{kind}_train"), arrays.get(f"{kind}_test")
        if not (isinstance(train, Mapping) or isinstance(test, Mapping)):
            continue
        if not (isinstance(train, Mapping) and isinstance(test, Mapping) and sorted(train) == sorted(test)):
            raise ConfigError.at(file, field, f"{origin}: {kind}_train and {kind}_test must be dicts of the same names")
        names[kind] = tuple(sorted(train))
    return Dataset(
        name,
        *(tuple(checked[key]) for key in ("x_train", "y_train", "x_test", "y_test")),
        notes=tuple(notes),
        input_names=names["x"],
        output_names=names["y"],
    )


def _check_x(x: np.ndarray, label: str, origin: str, file: str | None, field: str) -> np.ndarray:
    if not np.issubdtype(x.dtype, np.number):
        raise ConfigError.at(
            file,
            field,
            f"{origin}: {label} must be a numeric array of shape (samples, ...), got dtype {x.dtype} shape {x.shape}",
        )
    if x.ndim < 2:  # what a CSV column gives
        raise ConfigError.at(
            file,
            field,
            f"{origin}: {label} has one value per sample (shape {x.shape}); a model input needs a feature axis",
            hint=f"return {label} as x[:, None] (shape ({len(x) if x.ndim else 'samples'}, 1)) for a model Input((1,))",
        )
    check_finite(x, label, origin, file, field)
    return x.astype(np.float32)


EVAL_DATA = "eval.npz"


def write_checked(path: Path, data: Dataset) -> None:
    """``data`` as checked, for the optimizing child process: it reads this instead of calling the data function
    again (an image folder was decoded twice). Uncompressed and without pickles; the name and notes as text."""
    arrays = {
        f"{key}_{index}": array
        for key in ("x_train", "y_train", "x_test", "y_test")
        for index, array in enumerate(getattr(data, key))
    }
    text = {
        "name": np.array(data.name),
        "notes": np.array(data.notes, dtype=str),
        "input_names": np.array(data.input_names, dtype=str),
        "output_names": np.array(data.output_names, dtype=str),
    }
    np.savez(path, **text, **arrays)  # type: ignore[arg-type]


def read_checked(path: Path) -> Dataset:
    """The Dataset ``write_checked`` wrote."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    found = {key: _collect(arrays, key) for key in ("x_train", "y_train", "x_test", "y_test")}  # key_0, key_1, ...
    return Dataset(
        str(arrays["name"]),
        *(tuple(found[key][0]) if found[key] else () for key in ("x_train", "y_train", "x_test", "y_test")),
        notes=tuple(str(note) for note in arrays["notes"]),
        input_names=tuple(str(name) for name in arrays["input_names"]),
        output_names=tuple(str(name) for name in arrays["output_names"]),
    )


def eval_arrays(x: Arrays, y: Arrays) -> dict[str, np.ndarray]:
    """The evaluation split under the names a device agent reads: ``x``/``y`` for one input and one output,
    ``x_0, x_1, ...``/``y_0, ...`` for several (in the order of the interpreter's input and output details);
    no ``y`` for reconstruction."""
    named = {"x": x[0]} if len(x) == 1 else {f"x_{i}": a for i, a in enumerate(x)}
    named |= {"y": y[0]} if len(y) == 1 else {f"y_{i}": a for i, a in enumerate(y)}
    return {
        key: np.ascontiguousarray(a, dtype=np.float32 if key.startswith("x") or a.dtype.kind == "f" else np.int64)
        for key, a in named.items()
    }


def write_eval_data(path: Path, x: Arrays, y: Arrays) -> dict[str, Any]:
    """The evaluation split as a device agent reads it (``eval_arrays``), nothing pickled.

    Written with fixed zip timestamps (numpy's), so equal arrays give equal bytes and the same sha256: the
    board's content-addressed cache then never receives the same data twice.
    """
    np.savez_compressed(path, **eval_arrays(x, y))  # type: ignore[arg-type]
    return {"samples": len(x[0]), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}


def read_eval_data(path: Path) -> tuple[Arrays, Arrays]:
    """``x, y`` (tuples, one array per input and per output; ``y`` empty without labels) from an evaluation
    ``.npz``: ``x``/``y``, ``x_test``/``y_test``, or numbered ``x_0, x_1, ...``/``y_0, ...``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError.at(str(path), None, f"not a readable .npz file: {exc}") from None
    for x_key, y_key in (("x", "y"), ("x_test", "y_test")):
        xs = _collect(arrays, x_key)
        if xs is not None:
            ys = _collect(arrays, y_key)
            break
    else:
        raise ConfigError.at(
            str(path), None, f"needs arrays x and y (or x_test and y_test, or x_0, y_0, ...); has {sorted(arrays)}"
        )
    x, y = tuple(xs[0]), tuple(ys[0]) if ys else ()
    for label, array in [*(("x", a) for a in x), *(("y", a) for a in y)]:
        if array.ndim == 0:
            raise ConfigError.at(str(path), label, "holds a single number, not one value per sample")
    counts = {len(a) for a in (*x, *y)}
    if len(counts) != 1 or 0 in counts:
        raise ConfigError.at(str(path), None, f"the arrays have {sorted(counts)} samples; need one, non-zero count")
    for index, array in enumerate(x):
        if array.dtype.kind not in "fiub" or array.ndim < 2:
            label = "x" if len(x) == 1 else f"x_{index}"
            raise ConfigError.at(
                str(path), label, f"expected numeric samples of shape (samples, ...), got {array.dtype} {array.shape}"
            )
    for index, array in enumerate(y):
        if array.dtype.kind not in "fiub":
            raise ConfigError.at(
                str(path), "y" if len(y) == 1 else f"y_{index}", f"expected numbers, got {array.dtype}"
            )
    return tuple(a.astype(np.float32) for a in x), tuple(
        a.astype(np.int64) if a.dtype.kind in "iub" else a.astype(np.float32) for a in y
    )


def infer_task(y: Arrays, widths: Sequence[int | None] = ()) -> TaskSpec:
    """The task of an evaluation file given without a run: no ``y`` is reconstruction, integer ``y``
    classification, float ``y`` regression; outputs of both kinds give a list, one task per output. With the
    model's output widths (``widths``, last axis of each output), integers that cannot be that output's class
    indices (negative, or beyond its width; beyond 1 for a one-unit head) are values: a count, an age."""
    if not y:
        return "reconstruction"
    kinds: list[TaskKind] = []
    for index, target in enumerate(y):
        width = widths[index] if index < len(widths) else None
        labels = target.dtype.kind in "iub"
        if labels and width is not None and target.size:
            labels = int(target.min()) >= 0 and int(target.max()) < max(width, 2)
        kinds.append("classification" if labels else "regression")
    return kinds[0] if len(set(kinds)) == 1 else kinds  # type: ignore[return-value]
