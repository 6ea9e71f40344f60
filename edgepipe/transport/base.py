"""The one seam between edgepipe and a board: run a command, put a file, get a file, close.

Transports hold behaviour; what to run and in which order lives in ``edgepipe.deployment``. Commands are argument
lists, never shell strings: a transport that must go through a shell (SSH) quotes them itself. Paths on the
board are either absolute or relative to the login user's home directory, for every transport.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from edgepipe.errors import CommandError

LineCallback = Callable[[str], None]
ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total)

Stdin = bytes | BinaryIO | None  # a small payload, or an open file streamed in chunks

KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL when a deadline passes
CHUNK = 1 << 20


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

    @abc.abstractmethod
    def describe(self) -> str:
        """``user@host:port`` or ``local``: for messages."""

    @abc.abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: Stdin = None,
        on_stderr_line: LineCallback | None = None,
        on_stdin_progress: ProgressCallback | None = None,
    ) -> CommandResult:
        """Run ``argv`` on the board; it is killed when ``timeout`` seconds pass (DeadlineExceeded).

        ``stdin`` is written from its own thread while stdout and stderr are read at the same time, so no
        stream can block another; complete stderr lines go to ``on_stderr_line`` as they arrive, and the
        bytes of stdin sent so far to ``on_stdin_progress``.
        """

    def run_check(self, argv: Sequence[str], *, timeout: float, stdin: Stdin = None) -> CommandResult:
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
    def touch(self, remote: str) -> None:
        """Set the modification time of ``remote`` to now: the board's cache keeps what was used last."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def feed(source: Stdin, write: Callable[[bytes], None], progress: ProgressCallback | None = None) -> int:
    """Write ``source`` in chunks through ``write``, reporting progress; returns the bytes written."""
    if source is None:
        return 0
    if isinstance(source, bytes):
        write(source)
        if progress:
            progress(len(source), len(source))
        return len(source)
    total = os.fstat(source.fileno()).st_size
    sent = 0
    while chunk := source.read(CHUNK):
        write(chunk)
        sent += len(chunk)
        if progress:
            progress(sent, total)
    return sent
