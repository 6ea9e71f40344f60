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

The cache is bounded (the target's ``cache_limit_mb``): a device farm that deploys every commit's model would
otherwise fill a board's SD card in weeks. Every file a deploy sends or finds is touched, so a file's modification
time is when it was last used; after the job, one command removes the files used longest ago until the rest fit.
It never removes what this deploy used, nor anything used in the last hour, which a deploy running at the same
time (another CI job on the same board) may be about to read; so the limit can be exceeded for up to an hour.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgepipe.config.target import Target
from edgepipe.errors import CommandError, ConnectError, TransferError
from edgepipe.progress import Progress
from edgepipe.provenance import sha256_file
from edgepipe.transport.base import CommandResult, Transport

STALE_PARTIAL_S = 3600
SLOWEST_LINK_BYTES_PER_S = 250_000  # the upload deadline allows a link this slow
RECENTLY_USED_S = 3600  # a trim keeps every file used this recently
TRIM_TIMEOUT_S = 120.0
CACHED = ("blobs", "agent")  # the folders of the workdir that the cache owns (not the venv)

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


TRIM = """
import json, os, sys, time
root, limit, recent = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
used = set(os.path.abspath(path) for path in sys.argv[4:])
files = []
for folder in FOLDERS:
    folder = os.path.join(root, folder)
    try:
        names = os.listdir(folder)
    except OSError:
        continue
    for name in names:
        path = os.path.join(folder, name)
        try:
            if ".partial-" not in name and os.path.isfile(path):
                files.append((os.path.getmtime(path), os.path.getsize(path), path))
        except OSError:
            pass
total, removed, freed, now = sum(size for _, size, _ in files), 0, 0, time.time()
for mtime, size, path in sorted(files):
    if limit < 0 or total <= limit:
        break
    if now - mtime < recent or os.path.abspath(path) in used:
        continue
    try:
        os.remove(path)
    except OSError:
        continue
    total, removed, freed = total - size, removed + 1, freed + size
print(json.dumps({"files": len(files) - removed, "bytes": total, "removed_files": removed, "removed_bytes": freed}))
""".replace("FOLDERS", repr(CACHED))


@dataclass(frozen=True)
class CacheUsage:
    """What edgepipe keeps on a board, after a trim."""

    files: int
    bytes: int
    removed_files: int
    removed_bytes: int
    limit_bytes: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def helper_python(target: Target) -> str:
    """The Python that runs edgepipe's small helper scripts on the board (it needs only the stdlib)."""
    if target.transport == "local":
        return target.python or sys.executable
    if target.transport == "qemu":
        return sys.executable  # the image's files are this machine's files
    return target.agent_install.python


def limit_bytes(target: Target) -> int | None:
    return None if target.cache_limit_mb is None else int(target.cache_limit_mb * 2**20)


class RemoteCache:
    @classmethod
    def for_target(cls, transport: Transport, target: Target, progress: Progress | None = None) -> RemoteCache:
        """The cache under the target's workdir; its receiver gives up a little after the link would."""
        return cls(transport, target.workdir, helper_python(target), progress, target.link_timeout_s + 10, target.name)

    def __init__(
        self,
        transport: Transport,
        workdir: str,
        python: str,
        progress: Progress | None = None,
        idle_s: float = 40.0,
        target_name: str | None = None,
    ) -> None:
        self.transport = transport
        self.target_name = target_name  # for the hints
        self.idle_s = idle_s  # the receiver on the board gives up when nothing arrives for this long
        self.workdir = workdir.rstrip("/")
        self.python = python
        self.progress = progress or Progress()
        self.sent: list[str] = []
        self.reused: list[str] = []
        self.used: list[str] = []  # every path on the board this cache sent or found: a trim keeps them
        self.uploaded_bytes = 0  # payload bytes streamed to the board, including attempts that failed
        self.made_room: list[CacheUsage] = []  # trims because the board's disk was full
        self._streamed = 0

    def blob_path(self, sha256: str, suffix: str) -> str:
        return f"{self.workdir}/blobs/{sha256}{suffix}"

    def ensure(self, local: Path, remote: str, sha256: str | None = None, label: str | None = None) -> str:
        """Make ``remote`` hold exactly ``local``; send nothing when it already does. Returns ``remote``."""
        sha256 = sha256 or sha256_file(local)
        size = local.stat().st_size
        label = label or local.name
        if self.transport.exists(remote) == size:
            self._use(remote, label)
            self.progress.upload_skipped(label, size)
            return remote
        self.progress.upload_started(label, size)
        done, answer = self._send(local, remote, sha256, size, label)
        if not done.ok and answer.get("full") and self._make_room(label):
            self.progress.upload_started(label, size)
            done, answer = self._send(local, remote, sha256, size, label)
        if not done.ok:
            if answer.get("full"):
                raise TransferError(
                    f"the board's disk is full: {label} could not be stored ({answer.get('error')})",
                    hint=f"{self._clean_hint()}, or point the target's workdir at a larger file system",
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
        self.used.append(remote)
        return remote

    def _send(self, local: Path, remote: str, sha256: str, size: int, label: str) -> tuple[CommandResult, dict]:
        """Stream ``local`` to the receiver on the board; its exit status and its answer."""
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
            self.progress.upload_finished(label, size, stored=False)
            raise TransferError(
                f"the upload of {label} to {self.transport.describe()} was cut off: {exc.message}",
                hint="deploy again: nothing incomplete was left in place, and what arrived whole is not re-sent",
            ) from None
        self.progress.upload_finished(label, size, stored=done.ok)
        return done, _answer(done.stdout)

    def _make_room(self, label: str) -> bool:
        """The disk filled up while ``label`` arrived: remove edgepipe's files that nothing used in the last hour
        (nor this deploy). Whether that removed anything, so that sending again may fit."""
        try:
            usage = self.trim(0)
        except TransferError:
            return False
        if not usage.removed_files:
            return False
        self.made_room.append(usage)
        self.progress.note(
            f"the board's disk was full: removed {usage.removed_files} of edgepipe's files not used in the last hour "
            f"({usage.removed_bytes / 2**20:,.1f} MB) and sending {label} again"
        )
        return True

    def find(self, remote: str, label: str) -> bool:
        """Whether ``remote`` is on the board already (e.g. a baseline model sent by an earlier deploy); marks it
        used when it is."""
        if self.transport.exists(remote) is None:
            return False
        self._use(remote, label)
        return True

    def _use(self, remote: str, label: str) -> None:
        self.transport.touch(remote)  # now it is the file used last, which a trim removes last
        self.reused.append(label)
        self.used.append(remote)

    def trim(self, limit: int | None, recent_s: float = RECENTLY_USED_S) -> CacheUsage:
        """Remove the files used longest ago until the rest take at most ``limit`` bytes (None: only count them).
        What this cache sent or found, and anything used in the last ``recent_s`` seconds, stays."""
        done = self.transport.run(
            [self.python, "-c", TRIM, self.workdir, str(-1 if limit is None else limit), f"{recent_s:g}", *self.used],
            timeout=TRIM_TIMEOUT_S,
        )
        answer = _answer(done.stdout)
        if not done.ok or "bytes" not in answer:
            raise TransferError(
                f"cleaning edgepipe's cache on {self.transport.describe()} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-300:]}",
                hint=f"check that the target's workdir ({self.workdir}) is writable",
            )
        return CacheUsage(
            int(answer["files"]), int(answer["bytes"]), int(answer["removed_files"]), int(answer["removed_bytes"]),
            limit,
        )  # fmt: skip

    def _clean_hint(self) -> str:
        clean = f" (edgepipe agent clean --target {self.target_name} --all removes edgepipe's files)"
        return "free space on the board" + (clean if self.target_name else "")

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
