"""The board's content-addressed cache: a file is sent once, under a temporary name, checked, then renamed.

Layout under the target's ``workdir``::

    blobs/<sha256>.<ext>                    models, evaluation data, reference outputs
    agent/edgepipe_agent-<version>-<sha12>.pyz

A file is streamed to a small receiver run by the board's own Python (stdlib only). It writes
``<final>.partial-<pid>`` while hashing what arrives, and renames it into place (``os.replace``, atomic on one
file system) only when the byte count and the sha256 match; otherwise it deletes it. So a file at a final path
is always complete, and its name is its hash. An upload cut short leaves nothing: the receiver sees the end of
its input early, or nothing arriving for ``idle_s`` (a link that went silent, which sshd may not notice for
hours), or a SIGTERM/SIGHUP, and removes its partial file; only if the receiver itself is killed (SIGKILL) does
a partial file stay, and a later upload to that folder removes it once it is an hour old. Hashing while
receiving costs no second pass over the file, and the whole upload is one command: one round trip.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgepipe.errors import CommandError, ConnectError, TransferError
from edgepipe.progress import Progress
from edgepipe.provenance import sha256_file
from edgepipe.transport.base import Transport

STALE_PARTIAL_S = 3600
SLOWEST_LINK_BYTES_PER_S = 250_000  # the upload deadline allows a link this slow

RECEIVE = """
import errno, hashlib, json, os, select, signal, sys, time
final, expected, size, idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
folder = os.path.dirname(final) or "."
os.makedirs(folder, exist_ok=True)
tmp = "%s.partial-%d" % (final, os.getpid())
for name in os.listdir(folder):
    stale = os.path.join(folder, name)
    try:
        if ".partial-" in name and time.time() - os.path.getmtime(stale) > STALE_SECONDS:
            os.remove(stale)
    except OSError:
        pass
def give_up(code, answer):
    try:
        os.remove(tmp)
    except OSError:
        pass
    print(json.dumps(answer))
    sys.exit(code)
def stopped(signum, frame):
    give_up(128 + signum, {"ok": False, "error": "stopped by signal %d" % signum})
signal.signal(signal.SIGTERM, stopped)
signal.signal(signal.SIGHUP, stopped)
digest, received = hashlib.sha256(), 0
try:
    with open(tmp, "wb") as out:
        while True:
            if not select.select([0], [], [], idle)[0]:
                give_up(5, {"ok": False, "error": "nothing arrived for %g s" % idle, "received": received})
            block = os.read(0, 1 << 20)
            if not block:
                break
            out.write(block)
            digest.update(block)
            received += len(block)
except OSError as exc:
    give_up(4, {"ok": False, "error": str(exc), "full": exc.errno == errno.ENOSPC})
if received != size or digest.hexdigest() != expected:
    give_up(3, {"ok": False, "received": received, "got": digest.hexdigest()})
os.replace(tmp, final)
print(json.dumps({"ok": True}))
""".replace("STALE_SECONDS", str(STALE_PARTIAL_S))


class RemoteCache:
    def __init__(
        self,
        transport: Transport,
        workdir: str,
        python: str,
        progress: Progress | None = None,
        idle_s: float = 40.0,
    ) -> None:
        self.transport = transport
        self.idle_s = idle_s  # the receiver on the board gives up when nothing arrives for this long
        self.workdir = workdir.rstrip("/")
        self.python = python
        self.progress = progress or Progress()
        self.sent: list[str] = []
        self.reused: list[str] = []
        self.uploaded_bytes = 0  # payload bytes streamed to the board, including attempts that failed
        self._streamed = 0

    def blob_path(self, sha256: str, suffix: str) -> str:
        return f"{self.workdir}/blobs/{sha256}{suffix}"

    def ensure(self, local: Path, remote: str, sha256: str | None = None, label: str | None = None) -> str:
        """Make ``remote`` hold exactly ``local``; send nothing when it already does. Returns ``remote``."""
        sha256 = sha256 or sha256_file(local)
        size = local.stat().st_size
        label = label or local.name
        if self.transport.exists(remote) == size:
            self.reused.append(label)
            self.progress.upload_skipped(label, size)
            return remote
        self.progress.upload_started(label, size)
        self._streamed = 0
        try:
            with local.open("rb") as source:
                done = self.transport.run(
                    [self.python, "-c", RECEIVE, remote, sha256, str(size), f"{self.idle_s:g}"],
                    timeout=120 + size / SLOWEST_LINK_BYTES_PER_S,
                    stdin=source,
                    on_stdin_progress=self._count,
                )
        except (CommandError, ConnectError) as exc:
            raise TransferError(
                f"the upload of {label} to {self.transport.describe()} was cut off: {exc.message}",
                hint="deploy again: nothing incomplete was left in place, and what arrived whole is not re-sent",
            ) from None
        answer = _answer(done.stdout)
        if not done.ok:
            if answer.get("full"):
                raise TransferError(
                    f"the board's disk is full: {label} could not be stored ({answer.get('error')})",
                    hint="free space on the board, or point the target's workdir at a larger file system",
                )
            if "got" in answer:
                raise TransferError(
                    f"{label} arrived incomplete or corrupted on {self.transport.describe()}: "
                    f"{answer['received']:,} of {size:,} bytes, sha256 {answer['got'][:16]}... "
                    f"instead of {sha256[:16]}...",
                    hint="deploy again; if it repeats, check the link and the board's memory",
                )
            raise TransferError(
                f"storing {label} on {self.transport.describe()} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-300:]}",
                hint=f"check that {self.python} runs on the board and the target's workdir is writable",
            )
        self.sent.append(label)
        return remote

    def _count(self, done: int, total: int) -> None:
        self.uploaded_bytes += done - self._streamed
        self._streamed = done
        self.progress.upload_advanced(done, total)


def _answer(stdout: str) -> dict[str, object]:
    try:
        answer = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}
    return answer if isinstance(answer, dict) else {}
