"""The board's content-addressed cache: a file is sent once, under a temporary name, checked, then renamed.

Layout under the target's ``workdir``::

    blobs/<sha256>.<ext>                    models, evaluation data, reference outputs
    agent/edgepipe_agent-<version>-<sha12>.py

A file at a final path is complete and has the sha256 in its name: the board's own Python checked it before
``os.replace`` moved it there (atomic on one file system). An upload cut short leaves only
``<final>.partial-<random>``, which a later upload removes once it is an hour old.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from edgepipe.errors import TransferError
from edgepipe.progress import Progress
from edgepipe.provenance import sha256_file
from edgepipe.transport.base import Transport

STALE_PARTIAL_S = 3600
COMMAND_TIMEOUT_S = 120.0

# Runs on the board with its own Python (stdlib only): check the hash, then rename, or delete and say why.
VERIFY_AND_PLACE = """
import hashlib, json, os, sys, time
STALE = STALE_SECONDS
tmp, expected, final = sys.argv[1:4]
digest = hashlib.sha256()
with open(tmp, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
folder = os.path.dirname(final) or "."
for name in os.listdir(folder):
    stale = os.path.join(folder, name)
    if ".partial-" in name and stale != tmp and time.time() - os.path.getmtime(stale) > STALE:
        os.remove(stale)
if digest.hexdigest() != expected:
    os.remove(tmp)
    print(json.dumps({"ok": False, "got": digest.hexdigest()}))
    sys.exit(3)
os.replace(tmp, final)
print(json.dumps({"ok": True}))
""".replace("STALE_SECONDS", str(STALE_PARTIAL_S))


class RemoteCache:
    def __init__(self, transport: Transport, workdir: str, python: str, progress: Progress | None = None) -> None:
        self.transport = transport
        self.workdir = workdir.rstrip("/")
        self.python = python
        self.progress = progress or Progress()
        self.sent: list[str] = []
        self.reused: list[str] = []
        self._made: set[str] = set()

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
        folder = remote.rsplit("/", 1)[0]
        if folder not in self._made:
            self.transport.run_check(["mkdir", "-p", folder], timeout=COMMAND_TIMEOUT_S)
            self._made.add(folder)
        temporary = f"{remote}.partial-{secrets.token_hex(6)}"
        self.progress.upload_started(label, size)
        self.transport.put(local, temporary, progress=self.progress.upload_advanced)
        check = self.transport.run(
            [self.python, "-c", VERIFY_AND_PLACE, temporary, sha256, remote], timeout=COMMAND_TIMEOUT_S
        )
        if check.returncode != 0:
            try:
                got = json.loads(check.stdout)["got"]
            except (ValueError, KeyError, TypeError):
                got = None
            raise TransferError(
                f"{label} arrived corrupted on {self.transport.describe()} (sha256 {got} instead of {sha256})"
                if got
                else f"checking {label} on {self.transport.describe()} failed: {(check.stderr or check.stdout)[-300:]}",
                hint="deploy again; if it repeats, check the board's disk and memory",
            )
        self.sent.append(label)
        return remote
