"""Resolving a config ``source`` string: a file path (relative to the config file) or a ``module:function``."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe.config.recipe import ENTRY_POINT_PATTERN
from edgepipe.errors import ConfigError

_ENTRY_POINT = re.compile(ENTRY_POINT_PATTERN)


@dataclass(frozen=True)
class EntryPoint:
    """A Python callable named as ``module:function``; imported only when called for."""

    module: str
    function: str

    def __str__(self) -> str:
        return f"{self.module}:{self.function}"

    def load(self, file: str | None, field: str) -> Callable[..., Any]:
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            raise ConfigError.at(file, field, f"cannot import module {self.module!r}: {exc}") from None
        target = getattr(module, self.function, None)
        if not callable(target):
            raise ConfigError.at(file, field, f"module {self.module!r} has no function {self.function!r}")
        return target


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
        return EntryPoint(module, function)
    raise ConfigError.at(file, field, f"file not found: {path} (expected {expected})")
