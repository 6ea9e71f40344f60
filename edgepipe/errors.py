"""The one exception tree of edgepipe, and the exit code each branch ends the CLI with.

Infrastructure failures and model/regression failures get different exit codes so that a CI job can tell
"the set-up is wrong" from "the model got worse"::

    EdgepipeError                 1  anything else edgepipe raises on purpose
    ├── ConfigError               2  a recipe, target or data file is wrong (names file, field, expectation)
    ├── ModelError                3  the model cannot be loaded or TF-MOT cannot handle it (names layer, reason)
    ├── ConversionError           4  the TFLite converter refused the model
    ├── ConformanceError          5  the converted model is not integer-only (lists float ops / islands)
    ├── GateFailed                6  a measured gate of the recipe failed (accuracy drop, size, agreement)
    ├── RegressionFound           7  compare: the candidate is worse than the baseline (names the metric)
    ├── DeviceModelError         20  the model failed ON THE BOARD (the board itself is fine)
    │   ├── InvalidModel         21  the runtime refused the file: empty, truncated, wrong identifier, corrupt
    │   ├── UnsupportedOp        22  a valid model with an operator the board's runtime does not have
    │   ├── ModelCrash           23  the interpreter crashed or returned an error while running
    │   ├── ModelTimeout         24  the model exceeded the agent's time limit
    │   ├── ModelOutOfMemory     25  the model exceeded the agent's memory limit
    │   └── AccuracyMismatch     26  the board's accuracy differs from the host's beyond the tolerance
    └── InfrastructureError      10  the board or the way to it failed, not the model: retrying may help
        ├── ConnectError         11  unreachable host, refused connection, failed authentication
        ├── HostKeyError         12  the host key is unknown (and not trusted on first use) or has CHANGED
        ├── TransferError        13  an upload or download failed or arrived corrupted
        ├── DeadlineExceeded     14  the job's overall deadline passed; the remote command was killed
        ├── CommandError         15  a command on the board failed (or ended without an exit status)
        ├── AgentError           16  the agent is missing, broken, or speaks another protocol version
        └── Inconclusive         17  compare: the runs differ in board state, so their numbers are not compared

    (130: interrupted with Ctrl-C; 70: an internal error, i.e. a bug: please report the traceback.)

Exit codes 10-17 mean "fix or retry the set-up"; 20-26 mean "this model does not work on this board".

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
    """A gate of the recipe (largest accuracy drop, largest size, ...) failed on the measured model.

    ``outcome`` is the finished run (kept as ``<out>.failed``), so that its measurements can still be shown.
    """

    exit_code = 6
    outcome: object | None = None


INTERRUPTED_EXIT_CODE = 130
INTERNAL_ERROR_EXIT_CODE = 70


class RegressionFound(EdgepipeError):
    """``edgepipe compare`` found the candidate worse than the baseline."""

    exit_code = 7


class DeviceModelError(EdgepipeError):
    """The model failed on the board; the agent classified it (``error_class`` is the agent's name for it)."""

    exit_code = 20
    error_class = "ModelError"


class InvalidModel(DeviceModelError):
    exit_code = 21
    error_class = "InvalidModel"


class UnsupportedOp(DeviceModelError):
    exit_code = 22
    error_class = "UnsupportedOp"


class ModelCrash(DeviceModelError):
    exit_code = 23
    error_class = "ModelCrash"


class ModelTimeout(DeviceModelError):
    exit_code = 24
    error_class = "ModelTimeout"


class ModelOutOfMemory(DeviceModelError):
    exit_code = 25
    error_class = "ModelOutOfMemory"


class AccuracyMismatch(DeviceModelError):
    exit_code = 26
    error_class = "AccuracyMismatch"


class InfrastructureError(EdgepipeError):
    """The board, the network or the agent failed; the model may be fine. CI may retry these."""

    exit_code = 10


class ConnectError(InfrastructureError):
    exit_code = 11


class HostKeyError(InfrastructureError):
    exit_code = 12


class TransferError(InfrastructureError):
    exit_code = 13


class DeadlineExceeded(InfrastructureError):
    exit_code = 14


class CommandError(InfrastructureError):
    """A command on the board failed; carries what it printed so the message can show it."""

    exit_code = 15

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        returncode: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class AgentError(InfrastructureError):
    exit_code = 16


class Inconclusive(InfrastructureError):
    """``edgepipe compare`` cannot judge: the two runs differ in board state (throttling, governor, versions)."""

    exit_code = 17


def error_class_for(exit_code: int) -> type[EdgepipeError]:
    """The error class that ends the CLI with ``exit_code`` (a farm run ends with its jobs' most serious one)."""
    pending: list[type[EdgepipeError]] = [EdgepipeError]
    while pending:
        cls = pending.pop()
        if cls.exit_code == exit_code:
            return cls
        pending.extend(cls.__subclasses__())
    return EdgepipeError
