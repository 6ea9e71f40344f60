"""Capturing what TensorFlow's and LiteRT's C++ code writes straight to file descriptor 2.

Python's ``logging`` cannot silence it (absl start-up notices, oneDNN banners, "Created XNNPACK delegate"),
and it would bury edgepipe's own progress. The captured lines are handed back so that errors can quote them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 into a buffer for the duration; yields the list the lines are put in."""
    lines: list[str] = []
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())
