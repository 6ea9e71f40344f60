"""Resolving a config ``source`` string: a file path (relative to the config file) or a ``module:function``."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe.config.recipe import ENTRY_POINT_PATTERN
from edgepipe.errors import ConfigError
from edgepipe.keras_compat import select_keras2

_ENTRY_POINT = re.compile(ENTRY_POINT_PATTERN)


@dataclass(frozen=True)
class EntryPoint:
    """A Python callable named as ``module:function``; imported only when called for.

    ``search_dir`` is the directory of the config file that names it: a module lying next to the recipe is
    found there first, as a script finds the modules beside it, with no PYTHONPATH to set.
    """

    module: str
    function: str
    search_dir: Path | None = None

    def __str__(self) -> str:
        return f"{self.module}:{self.function}"

    def load(self, file: str | None, field: str) -> Callable[..., Any]:
        # User code often starts with ``import tf_keras`` or ``import tensorflow``: Keras 2 must be selected
        # before it runs, or TF-MOT later finds Keras 3 (this only sets the environment; TF is not imported).
        select_keras2()
        if self.search_dir is not None and str(self.search_dir) not in sys.path:
            sys.path.insert(0, str(self.search_dir))
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            raise ConfigError.at(file, field, f"cannot import module {self.module!r}: {exc}") from None
        target = getattr(module, self.function, None)
        if not callable(target):
            raise ConfigError.at(file, field, f"module {self.module!r} has no function {self.function!r}")
        return target

    def check(self, file: str | None, field: str) -> None:
        """Fail now on a module that does not exist or lacks the function, without running its code."""
        check_importable(self.module, self.function, self.search_dir, file, field)


def check_importable(
    module: str, name: str | None, search_dir: Path | None, file: str | None, field: str, kind: str = "function"
) -> None:
    """Fail now on a module that does not exist, or lacks ``name``, without running its code.

    The model factory's module usually imports TensorFlow, which only the training process should load;
    a module Python cannot read as source (a compiled extension) is taken on trust until it is imported.
    """
    if search_dir is not None and str(search_dir) not in sys.path:
        sys.path.insert(0, str(search_dir))
    missing = f"module {module!r} has no {kind} {name!r}"
    if module in sys.modules:  # imported already: look, it costs nothing
        if name is not None and getattr(sys.modules[module], name, None) is None:
            raise ConfigError.at(file, field, missing)
        return
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise ConfigError.at(file, field, f"cannot import module {module!r}: {exc}") from None
    if spec is None:
        raise ConfigError.at(
            file, field, f"cannot import module {module!r}: no such module next to the recipe or on the Python path"
        )
    origin = Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    if origin is None or name is None:
        return
    try:
        names = _top_level_names(ast.parse(origin.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return  # importing it later reports the problem with Python's own words
    if name not in names and "*" not in names:
        raise ConfigError.at(file, field, missing)


def _top_level_names(tree: ast.Module) -> set[str]:
    """Every name the module defines or imports anywhere (generous on purpose: only a name that appears nowhere
    is refused; a star import, recorded as ``*``, accepts everything)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def resolve(source: str, base_dir: Path, file: str | None, field: str, expected: str) -> Path | EntryPoint:
    """A path that exists (relative paths from ``base_dir``) or an entry point; anything else is a ConfigError.

    ``expected`` describes what the field accepts, for the error message.
    """
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if path.exists():
        return path.resolve()
    if _ENTRY_POINT.match(source):
        module, function = source.split(":")
        return EntryPoint(module, function, base_dir.resolve())
    raise ConfigError.at(file, field, f"file not found: {path} (expected {expected})")
