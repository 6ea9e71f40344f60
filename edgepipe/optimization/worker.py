"""The child process that trains and converts:
``python -m edgepipe.optimization.worker RECIPE WORKDIR EVENTS_FD BASE_DIR [CHECKED_DATA]``.

TF-MOT training and the TFLite converter are native code; a layer they mishandle can kill the process with a
signal (SIGSEGV, SIGABRT) that no ``try`` catches. The parent (``isolation.py``) owns the run directory and
never imports TensorFlow; this child does the work inside the parent's partial directory and reports on the
inherited file descriptor ``EVENTS_FD``, one JSON object per line:

    {"event": "progress", "method": "phase" | "training_started" | ..., "args": [...]}
    {"event": "done", "result": {...optimize.json...}}
    {"event": "error", "type": "ModelError", "message": "...", "hint": "..."}   an EdgepipeError
    {"event": "bug", "traceback": "..."}                                           anything else

A native crash ends the child before it can say anything: the parent sees the signal in the exit status and
knows the phase from the last progress event. ``faulthandler`` writes the Python stack of such a crash to
stderr, which the parent keeps for its message.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from edgepipe.data import read_checked
from edgepipe.errors import EdgepipeError
from edgepipe.progress import Progress
from edgepipe.signals import set_parent_death_signal


class EventProgress(Progress):
    """Forwards every progress call to the parent as an event line."""

    def __init__(self, channel: IO[str]) -> None:
        self._channel = channel

    def send(self, event: Mapping[str, Any]) -> None:
        self._channel.write(json.dumps(event) + "\n")
        self._channel.flush()

    def _forward(self, method: str, *args: Any) -> None:
        self.send({"event": "progress", "method": method, "args": list(args)})

    def phase(self, text: str) -> None:
        self._forward("phase", text)

    def training_started(self, label: str, epochs: int) -> None:
        self._forward("training_started", label, epochs)

    def epoch_done(self, epoch: int, logs: Mapping[str, float]) -> None:
        self._forward("epoch_done", epoch, {key: float(value) for key, value in logs.items()})

    def training_done(self) -> None:
        self._forward("training_done")

    def note(self, text: str) -> None:
        self._forward("note", text)


def main(argv: list[str]) -> int:
    recipe, work, fd, base_dir = Path(argv[0]), Path(argv[1]), int(argv[2]), Path(argv[3])
    checked = Path(argv[4]) if len(argv) > 4 else None  # the data as the parent checked it
    set_parent_death_signal(signal.SIGKILL)  # no training may outlive ``edgepipe optimize``
    faulthandler.enable()
    with open(fd, "w", encoding="utf-8", closefd=True) as channel:
        progress = EventProgress(channel)
        try:
            from edgepipe.optimization import pipeline

            data = read_checked(checked) if checked is not None else None
            result = pipeline.optimize_into(pipeline.prepare(recipe, base_dir, data), work, progress)
        except EdgepipeError as exc:
            progress.send({"event": "error", "type": type(exc).__name__, "message": exc.message, "hint": exc.hint})
            return 1
        except Exception:
            progress.send({"event": "bug", "traceback": traceback.format_exc()})
            return 1
        progress.send({"event": "done", "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
