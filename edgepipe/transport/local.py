"""The ``local`` transport: the board is this machine; commands are subprocesses, files are copies.

It is the embedded default (no board needed) and behaves like the SSH transport in every way a caller can see:
paths are relative to the home directory, a command that passes its deadline is killed with its whole process
group, and ``put`` writes the bytes it is given (so the content-addressed cache above it is exercised too).
When edgepipe goes, so does the command, as a board's sshd hangs up a command whose connection dropped: an
interrupted wait kills the process group, and a SIGKILLed edgepipe makes the kernel send the command SIGHUP.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from edgepipe.errors import DeadlineExceeded, TransferError
from edgepipe.signals import die_with_parent
from edgepipe.transport.base import (
    CHUNK,
    KILL_GRACE_S,
    CommandResult,
    LineCallback,
    ProgressCallback,
    Stdin,
    Transport,
    feed,
)


class LocalTransport(Transport):
    def __init__(self, home: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.home = home or Path.home()
        self.env = env  # None: inherit this process's environment

    def describe(self) -> str:
        return "local"

    def path(self, remote: str) -> Path:
        return self.home / Path(remote).expanduser()

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: Stdin = None,
        on_stderr_line: LineCallback | None = None,
        on_stdin_progress: ProgressCallback | None = None,
    ) -> CommandResult:
        started = time.monotonic()
        process = subprocess.Popen(
            list(argv),
            cwd=self.home,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so a deadline kills everything it started
            preexec_fn=die_with_parent(signal.SIGHUP),
            env=self.env,
        )
        out: list[bytes] = []
        err: list[bytes] = []
        readers = [
            threading.Thread(target=_drain, args=(process.stdout, out, None), daemon=True),
            threading.Thread(target=_drain, args=(process.stderr, err, on_stderr_line), daemon=True),
        ]
        if stdin is not None:
            readers.append(threading.Thread(target=_write, args=(process, stdin, on_stdin_progress), daemon=True))
        for reader in readers:
            reader.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise DeadlineExceeded(
                f"{argv[0]} did not finish within its {timeout:.0f} s deadline on {self.describe()}; it was killed",
                hint="raise the target's deadline_s or --deadline, or lower the measured runs",
            ) from None
        except BaseException:  # Ctrl-C, SIGTERM: nothing we started outlives us
            _kill_group(process)
            raise
        finally:
            for reader in readers:
                reader.join(5)
        return CommandResult(
            tuple(argv),
            process.returncode,
            b"".join(out).decode("utf-8", "replace"),
            b"".join(err).decode("utf-8", "replace"),
            time.monotonic() - started,
        )

    def put(self, local: Path, remote: str, *, progress: ProgressCallback | None = None) -> None:
        target = self.path(remote)
        total = local.stat().st_size
        done = 0
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with local.open("rb") as source, target.open("wb") as sink:
                while chunk := source.read(CHUNK):
                    sink.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except OSError as exc:
            raise TransferError(f"copying {local} to {target} failed: {exc}", hint=_disk_hint(exc)) from None

    def get(self, remote: str, local: Path) -> None:
        try:
            shutil.copyfile(self.path(remote), local)
        except OSError as exc:
            raise TransferError(f"copying {remote} from the board failed: {exc}") from None

    def exists(self, remote: str) -> int | None:
        try:
            return self.path(remote).stat().st_size
        except FileNotFoundError:
            return None

    def touch(self, remote: str) -> None:
        try:
            os.utime(self.path(remote))
        except OSError as exc:
            raise TransferError(f"cannot touch {remote}: {exc}") from None

    def close(self) -> None:
        pass


def _write(process: subprocess.Popen[bytes], stdin: Stdin, progress: ProgressCallback | None) -> None:
    assert process.stdin is not None
    try:
        feed(stdin, process.stdin.write, progress)
        process.stdin.close()
    except (BrokenPipeError, ValueError):
        pass  # the command exited without reading everything: its exit status tells why


def _drain(stream: IO[bytes] | None, sink: list[bytes], on_line: LineCallback | None) -> None:
    assert stream is not None
    pending = b""
    for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
        sink.append(chunk)
        if on_line is not None:
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                on_line(line.decode("utf-8", "replace"))


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group (the agent stops its sandboxed child), then SIGKILL to whatever of it is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(KILL_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10.0)


def _disk_hint(exc: OSError) -> str | None:
    import errno

    return (
        "the board's disk is full: free space or point the target's workdir elsewhere"
        if exc.errno == errno.ENOSPC
        else None
    )
