"""The one exception tree of edgepipe, and the exit code each branch ends the CLI with.

Infrastructure failures and model/regression failures get different exit codes so that a CI job can tell
"the set-up is wrong" from "the model got worse"::

    EdgepipeError                 1  anything else edgepipe raises on purpose
    ├── ConfigError               2  a recipe, target or data file is wrong (names file, field, expectation)
    ├── ModelError                3  the model cannot be loaded or TF-MOT cannot handle it (names layer, reason)
    ├── ConversionError           4  the TFLite converter refused the model
    ├── ConformanceError          5  the converted model is not integer-only (lists float ops / islands)
    └── GateFailed                6  a measured gate of the recipe failed (accuracy drop, size, agreement)

    (130: interrupted with Ctrl-C; 70: an internal error, i.e. a bug: please report the traceback.)

Every error carries ``hint``: what the user can do about it. The CLI prints ``error: <message>`` and, when
present, ``hint: <hint>`` — one line each, never a traceback.
"""

from __future__ import annotations


class EdgepipeError(Exception):
    """Root of every error edgepipe raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(EdgepipeError):
    """A recipe, project, target or data file is wrong; the message names the file and the field."""

    exit_code = 2

    @classmethod
    def at(cls, file: str | None, field: str | None, problem: str, *, hint: str | None = None) -> ConfigError:
        """Build the one-line ``file: field: problem`` message every config error uses."""
        parts = [p for p in (file, field) if p]
        return cls(": ".join([*parts, problem]), hint=hint)


class ModelError(EdgepipeError):
    """The model cannot be loaded, or a TF-MOT technique cannot be applied to it."""

    exit_code = 3


class ConversionError(EdgepipeError):
    """The TFLite converter failed."""

    exit_code = 4


class ConformanceError(EdgepipeError):
    """The converted model has float operators, (de)quantize islands, or non-integer inputs/outputs."""

    exit_code = 5


class GateFailed(EdgepipeError):
    """A gate of the recipe (largest accuracy drop, largest size, ...) failed on the measured model."""

    exit_code = 6


INTERRUPTED_EXIT_CODE = 130
INTERNAL_ERROR_EXIT_CODE = 70
