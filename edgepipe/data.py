"""Data sets: an ``.npz`` file or a Python entry point, checked once and handed on as a plain value.

A data set is a classification split: ``x_train, y_train, x_test, y_test`` with integer class labels. Checks
happen here, before any model is trained, so a wrong file fails in a second and names the missing array.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.errors import ConfigError
from edgepipe.sources import EntryPoint

REQUIRED_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Dataset:
    """A labelled train/test split. ``x_*`` are float32 with the model's input shape; ``y_*`` int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    # What loading changed and the user should know (one-hot labels turned into class indices, say).
    notes: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def sha256(self) -> str:
        """Content hash of the four arrays, recorded in every result for provenance."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def representative(self, count: int, seed: int) -> np.ndarray:
        """``count`` training samples for calibrating full-integer conversion (never test samples)."""
        rng = np.random.default_rng(seed)
        count = min(count, len(self.x_train))
        return self.x_train[rng.choice(len(self.x_train), size=count, replace=False)]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "train_samples": len(self.x_train),
            "test_samples": len(self.x_test),
            "input_shape": list(self.input_shape),
            "classes": self.num_classes,
            "sha256": self.sha256(),
            "notes": list(self.notes),
        }


def load_dataset(source: Path | EntryPoint, file: str | None = None, field: str = "data.source") -> Dataset:
    """Load and check a data set; every problem is a ConfigError naming ``file`` and ``field``."""
    if isinstance(source, EntryPoint):
        try:
            produced = source.load(file, field)()
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError.at(file, field, f"{source} failed: {type(exc).__name__}: {exc}") from None
        if isinstance(produced, Dataset):
            return produced
        if not isinstance(produced, Mapping):
            raise ConfigError.at(
                file,
                field,
                f"{source} returned {type(produced).__name__}, expected a Dataset "
                "or a mapping with x_train, y_train, x_test, y_test",
            )
        return from_arrays(produced, str(source), file, field)
    return _load_npz(source, file, field)


def _load_npz(path: Path, file: str | None, field: str) -> Dataset:
    if path.is_dir() or path.suffix != ".npz":
        raise ConfigError.at(file, field, f"{path} is not an .npz file (expected an .npz or module:function)")
    try:
        # allow_pickle=False: an npz from elsewhere must not be able to run code when it is read.
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError.at(file, field, f"cannot read {path}: {exc}") from None
    return from_arrays(arrays, path.stem, file, field, origin=str(path))


def from_arrays(
    arrays: Mapping[str, Any], name: str, file: str | None, field: str, origin: str | None = None
) -> Dataset:
    """Check the four arrays for presence, matching lengths, numeric features and integer labels."""
    origin = origin or name
    missing = [key for key in REQUIRED_ARRAYS if key not in arrays]
    if missing:
        found = ", ".join(sorted(arrays)) or "nothing"
        raise ConfigError.at(
            file,
            field,
            f"{origin} has no array {', '.join(repr(m) for m in missing)} "
            f"(found: {found}; expected {', '.join(REQUIRED_ARRAYS)})",
        )
    checked: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for split in ("train", "test"):
        x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
        if not np.issubdtype(x.dtype, np.number) or x.ndim < 2:
            raise ConfigError.at(
                file,
                field,
                f"{origin}: x_{split} must be a numeric array of shape "
                f"(samples, ...), got dtype {x.dtype} shape {x.shape}",
            )
        _check_finite(x, f"x_{split}", origin, file, field)
        if np.issubdtype(y.dtype, np.number):
            _check_finite(y, f"y_{split}", origin, file, field)
        if y.ndim == 2 and y.shape[1] > 1:
            if not (np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)):
                raise ConfigError.at(
                    file,
                    field,
                    f"{origin}: y_{split} has shape {y.shape} but is not one-hot (exactly one 1 per row)",
                    hint="give one integer class label per sample, or one-hot rows",
                )
            y = y.argmax(axis=1)
            notes.append(
                f"y_{split}: one-hot labels ({y.shape[0]} x {arrays[f'y_{split}'].shape[1]}) read as class indices"
            )
        y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
        if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)):
            raise ConfigError.at(
                file, field, f"{origin}: y_{split} must hold integer class labels, got dtype {y.dtype} shape {y.shape}"
            )
        if len(x) != len(y):
            raise ConfigError.at(file, field, f"{origin}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        if len(x) == 0:
            raise ConfigError.at(file, field, f"{origin}: the {split} split is empty")
        if y.min() < 0:
            raise ConfigError.at(file, field, f"{origin}: y_{split} has negative labels")
        checked[f"x_{split}"], checked[f"y_{split}"] = x.astype(np.float32), y.astype(np.int64)
    if checked["x_train"].shape[1:] != checked["x_test"].shape[1:]:
        raise ConfigError.at(
            file,
            field,
            f"{origin}: x_train samples have shape {checked['x_train'].shape[1:]} "
            f"but x_test samples {checked['x_test'].shape[1:]}",
        )
    return Dataset(name=name, **checked, notes=tuple(notes))


def _check_finite(array: np.ndarray, name: str, origin: str, file: str | None, field: str) -> None:
    """NaN or infinity trains to NaN weights and ends, much later, in a misleading conversion error."""
    finite = np.isfinite(array)
    if finite.all():
        return
    bad_samples = int((~finite.reshape(len(array), -1)).any(axis=1).sum())
    raise ConfigError.at(
        file,
        field,
        f"{origin}: {name} holds {int(np.isnan(array).sum())} NaN and {int(np.isinf(array).sum())} infinite "
        f"values (in {bad_samples} of {len(array)} samples)",
        hint="clean or drop those samples before training",
    )


EVAL_DATA = "eval.npz"


def write_eval_data(path: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The evaluation split as a device agent reads it: ``x`` float32, ``y`` int64, nothing pickled.

    Written with fixed zip timestamps (numpy's), so equal arrays give equal bytes and the same sha256: the
    board's content-addressed cache then never receives the same data twice.
    """
    np.savez_compressed(path, x=np.ascontiguousarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.int64))
    return {"samples": len(x), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}


def read_eval_data(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x, y`` from an evaluation ``.npz`` (keys ``x``/``y`` or ``x_test``/``y_test``), checked."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            pair = ("x", "y") if {"x", "y"} <= names else ("x_test", "y_test")
            if not set(pair) <= names:
                raise ConfigError.at(
                    str(path), None, f"needs arrays x and y (or x_test and y_test); has {sorted(names)}"
                )
            x, y = archive[pair[0]], archive[pair[1]]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError.at(str(path), None, f"not a readable .npz file: {exc}") from None
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError.at(str(path), None, f"x has {len(x)} samples and y {len(y)}; need equal, non-zero counts")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise ConfigError.at(str(path), "y", f"expected one integer class label per sample, got {y.dtype} {y.shape}")
    return x.astype(np.float32), y.astype(np.int64)
