"""Signals and child processes: what makes a cancelled or killed edgepipe leave nothing running behind it.

CI systems cancel a job with SIGTERM and, a little later, SIGKILL. SIGTERM unwinds like Ctrl-C (every ``finally``
runs: children are stopped, partial files removed, a failed result written); SIGKILL cannot be caught, so every
child edgepipe starts is told by the kernel to stop when edgepipe dies (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while the block runs (elsewhere: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def set_parent_death_signal(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies, even by SIGKILL (Linux only; elsewhere
    the parent's own clean-up is what ends it)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def die_with_parent(sig: int = signal.SIGHUP) -> Callable[[], None] | None:
    """A ``preexec_fn`` that sets the parent-death signal in a child before it starts.

    SIGHUP by default: what a board's sshd sends a command when the connection goes, so a child handles one
    way of losing its parent. None where the kernel has no such feature (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def apply() -> None:
        set_parent_death_signal(sig)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), sig)

    return apply
