"""An output directory that appears only when the run is complete.

Work happens in a hidden sibling (``.<name>.partial-<pid>``). ``commit()`` swaps it into place with renames on
the same file system, so ``--out`` either holds a previous complete run or the new complete run, never half of
one. On failure the partial directory is removed, or moved to ``<out>.failed`` when the run finished but a
gate failed (so the user can inspect why). A directory that is not an edgepipe run is never overwritten.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from edgepipe.errors import ConfigError

MARKER = "optimize.json"


class RunDirectory:
    def __init__(self, out: Path) -> None:
        self.out = out.resolve()
        self.partial = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        self._done = False

    def check_target(self) -> None:
        """Refuse to replace a directory edgepipe did not write (checked before any work starts)."""
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out}: exists and is not a directory")
        if self.out.is_dir() and any(self.out.iterdir()) and not (self.out / MARKER).exists():
            raise ConfigError(
                f"--out {self.out}: directory exists and is not an edgepipe run; not overwriting it",
                hint="choose another --out, or empty the directory",
            )

    def __enter__(self) -> Path:
        self.check_target()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(self.out)
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir()
        return self.partial

    def commit(self, suffix: str = "") -> Path:
        """Move the finished run into place (``suffix=".failed"`` for a run whose gates failed)."""
        final = self.out.with_name(self.out.name + suffix)
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        self.partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        self._done = True
        return final

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not self._done:
            shutil.rmtree(self.partial, ignore_errors=True)


def remove_abandoned(out: Path) -> list[Path]:
    """Remove the partial (and half-swapped ``.old``) siblings of ``out`` whose process is gone.

    A run killed with SIGKILL (or a power cut) cannot clean up after itself; the next run for the same ``--out``
    does it. A sibling whose process still runs is another run in progress and is left alone.
    """
    removed = []
    for kind in ("partial", "old"):
        for sibling in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = sibling.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(sibling, ignore_errors=True)
                removed.append(sibling)
    return removed


def temporary_directory(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A ``TemporaryDirectory`` named ``<prefix><pid>-...``, after removing those of ``prefix`` whose process is
    gone: a SIGKILLed edgepipe cannot remove its own, so the next one does."""
    for stale in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
        pid = stale.name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
