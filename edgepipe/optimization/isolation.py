"""Run the training and conversion of a recipe in a child process, so that a native crash is an error, not a death.

The parent keeps the run directory, relays the child's progress, and turns the child's end into one of:

- the result (``optimize.json``'s content);
- the EdgepipeError the child raised, re-raised here with the same class, message and hint;
- a crash: a signal (SIGSEGV in TF-MOT, SIGABRT in the converter, SIGKILL from the kernel's OOM killer) becomes
  ``ModelError`` (exit 3) when it happened while training, ``ConversionError`` (exit 4) while converting,
  naming the phase, the signal and the last lines the child wrote. The caller's ``RunDirectory`` then removes
  the partial directory, as for any other failure.

Every wait is bounded: the child is asked to stop (SIGTERM), then killed, when the parent is interrupted.

The child's temporary files live in a directory of the parent's (``TMPDIR``), removed however the child ended:
TensorFlow's autograph writes a ``__autograph_generated_file*.py`` per traced function into the temporary
directory and deletes it at exit, which a crashed, terminated or killed child never reaches (18 files per
interrupted pruning run were left in /tmp before).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from edgepipe import errors
from edgepipe.errors import ConversionError, EdgepipeError, ModelError
from edgepipe.progress import Progress
from edgepipe.rundir import temporary_directory
from edgepipe.signals import sigterm_as_interrupt

STOP_GRACE_S = 10.0
EXIT_WAIT_S = 60.0
TAIL_LINES = 60


class WorkerBug(RuntimeError):
    """The child failed with an unexpected exception: a bug in edgepipe; the message is its traceback."""


def run_isolated(
    recipe: Path, work: Path, progress: Progress, base_dir: Path | None = None, data: Path | None = None
) -> dict[str, Any]:
    """Optimize ``recipe`` into ``work`` in a child process; returns the result or raises a classified error.
    ``data``: the checked data set (``data.write_checked``), which the child reads instead of loading it."""
    with temporary_directory("edgepipe-worker-") as scratch:
        return _run_child(recipe, work, progress, base_dir, data, Path(scratch))


def _run_child(
    recipe: Path, work: Path, progress: Progress, base_dir: Path | None, data: Path | None, scratch: Path
) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TMPDIR": str(scratch)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgepipe.optimization.worker",
                str(recipe),
                str(work),
                str(write_fd),
                str(base_dir or recipe.resolve().parent),
                *([str(data)] if data is not None else []),
            ],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
    finally:
        os.close(write_fd)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=_keep_tail, args=(child.stdout, tail), daemon=True)
    reader.start()
    phase = "starting"
    outcome: dict[str, Any] | None = None
    try:
        with sigterm_as_interrupt(), open(read_fd, encoding="utf-8") as events:
            for line in events:
                event = _parse(line)
                if event is None:
                    continue
                if event["event"] == "progress":
                    if event["method"] == "phase":
                        phase = event["args"][0]
                    getattr(progress, event["method"])(*event["args"])
                else:
                    outcome = event
            returncode = child.wait(timeout=EXIT_WAIT_S)
    finally:
        _stop(child)
        reader.join(timeout=5)
    if outcome is not None and outcome["event"] == "done":
        return dict(outcome["result"])
    if outcome is not None and outcome["event"] == "error":
        raise _rebuild(outcome)
    if outcome is not None and outcome["event"] == "bug":
        raise WorkerBug(f"the optimize worker failed:\n{outcome['traceback']}")
    raise _crash(returncode, phase, list(tail))


def _keep_tail(stream: IO[bytes] | None, tail: collections.deque[str]) -> None:
    if stream is None:
        return
    for raw in stream:
        tail.append(raw.decode(errors="replace").rstrip())


def _parse(line: str) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _rebuild(event: dict[str, Any]) -> EdgepipeError:
    """The child's EdgepipeError as the same class here (exit codes follow the class)."""
    cls = getattr(errors, str(event.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, EdgepipeError)):
        cls = EdgepipeError
    return cls(str(event.get("message")), hint=event.get("hint"))


def _crash(returncode: int, phase: str, tail: list[str]) -> EdgepipeError:
    """A child that ended without a word: name the signal (or status) and the phase it was in."""
    converting = "convert" in phase.lower()
    cls = ConversionError if converting else ModelError
    if returncode < 0:
        number = -returncode
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        how = f"was killed by {name} ({signal.strsignal(number) or 'unknown signal'})"
        if number == signal.SIGKILL:
            how += "; nobody else killed it, so most likely the kernel's out-of-memory killer"
    else:
        how = f"ended with exit status {returncode} without a result"
    quoted = _useful_lines(tail)
    where = "the TFLite converter" if converting else "TensorFlow / TF-MOT"
    return cls(
        f"optimize crashed during '{phase}': the training and conversion process {how}",
        hint=f"a crash inside {where} usually comes from a layer it cannot handle; leave the layer out of the "
        "stage (layers.exclude) or try another stage kind. The partial run was removed."
        + (f" Its last lines: {' | '.join(quoted)}" if quoted else ""),
    )


def _useful_lines(tail: list[str]) -> list[str]:
    """faulthandler's header and innermost frames, or the last lines the child printed."""
    for index, line in enumerate(tail):
        if line.startswith("Fatal Python error"):
            frames = [text.strip() for text in tail[index + 1 :] if text.strip().startswith("File ")]
            return [line.strip(), *frames[:3]]
    return [line.strip() for line in tail[-3:] if line.strip()]


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Ask the child to stop, then kill it: nothing the parent started outlives it."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(timeout=STOP_GRACE_S)
