"""The one seam between edgepipe and a board: run a command, put a file, get a file, close.

Transports hold behaviour; what to run and in which order lives in ``edgepipe.deploy``. Commands are argument
lists, never shell strings: a transport that must go through a shell (SSH) quotes them itself. Paths on the
board are either absolute or relative to the login user's home directory, for every transport.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edgepipe.errors import CommandError

LineCallback = Callable[[str], None]
ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total)

KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL when a deadline passes


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Transport(abc.ABC):
    """A connection to one board. Use as a context manager so ``close`` always runs."""

    #: payload bytes this transport has uploaded with ``put`` (tests and benchmarks read it)
    bytes_uploaded: int = 0

    @abc.abstractmethod
    def describe(self) -> str:
        """``user@host:port`` or ``local``: for messages."""

    @abc.abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: bytes | None = None,
        on_stderr_line: LineCallback | None = None,
    ) -> CommandResult:
        """Run ``argv`` on the board; it is killed when ``timeout`` seconds pass (DeadlineExceeded).

        stdout and stderr are read at the same time, so a command filling one cannot block on the other;
        complete stderr lines are also handed to ``on_stderr_line`` as they arrive.
        """

    def run_check(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> CommandResult:
        """``run``, raising CommandError (with what the command printed) when it exits non-zero."""
        result = self.run(argv, timeout=timeout, stdin=stdin)
        if not result.ok:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise CommandError(
                f"{argv[0]} failed on {self.describe()} (exit {result.returncode})"
                + (f": {detail[-1]}" if detail else ""),
                returncode=result.returncode,
                stdout=result.stdout,
                stderr=result.stderr,
            )
        return result

    @abc.abstractmethod
    def put(self, local: Path, remote: str, *, progress: ProgressCallback | None = None) -> None:
        """Copy a local file to ``remote`` (written in place: callers upload to a temporary name)."""

    @abc.abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy ``remote`` to a local file."""

    @abc.abstractmethod
    def exists(self, remote: str) -> int | None:
        """Size of ``remote`` in bytes, or None when it does not exist."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
