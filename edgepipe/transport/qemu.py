"""The ``qemu`` transport: the "board" is an emulated image on this machine, run with QEMU user-mode emulation.

Files are this machine's files (it is the local transport underneath); only the board's Python differs: the
target's interpreter path is replaced by ``qemu-aarch64-static -L IMAGE IMAGE/usr/bin/python3.11``, so no
binfmt service and no root are needed. The agent learns that it is emulated (``EDGEPIPE_EMULATED``) and how to
start its sandboxed child under the same emulator (``EDGEPIPE_AGENT_LAUNCHER``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from edgepipe.config.target import Target
from edgepipe.emulator.image import EmulatorMissing, image_for
from edgepipe.transport.base import CommandResult, LineCallback, ProgressCallback, Stdin
from edgepipe.transport.local import LocalTransport


class QemuTransport(LocalTransport):
    def __init__(self, target: Target) -> None:
        self.target = target
        self.image = image_for(target)
        if not self.image.built:
            raise EmulatorMissing(
                f"the emulator image {self.image.spec.image!r} is not built (or its recipe changed)",
                hint=f"edgepipe emulator build {self.image.spec.image}",
            )
        env = {
            **os.environ,
            "EDGEPIPE_AGENT_LAUNCHER": json.dumps(self.image.launcher()),
            "EDGEPIPE_EMULATED": "1",
        }
        super().__init__(env=env)
        self.python = target.agent_python(sys.executable)

    def describe(self) -> str:
        return f"QEMU {self.image.spec.wheel_arch} image {self.image.spec.image}"

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: Stdin = None,
        on_stderr_line: LineCallback | None = None,
        on_stdin_progress: ProgressCallback | None = None,
    ) -> CommandResult:
        if argv and argv[0] == self.python:
            argv = [*self.image.python_command(), *argv[1:]]
        return super().run(
            argv, timeout=timeout, stdin=stdin, on_stderr_line=on_stderr_line, on_stdin_progress=on_stdin_progress
        )
