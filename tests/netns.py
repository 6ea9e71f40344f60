"""A board at the far end of a virtual cable the test can unplug: a network namespace joined to this one by a veth
pair, with the real sshd running inside it (``ip netns``, ``tc``; needs root, as in CI's container).

Unplugging sets the board's end of the cable down: packets are dropped without a word, which is what a pulled
cable, a crashed Wi-Fi link or a board that lost power looks like from here. ``limit`` shapes this end's
sending rate (``tc tbf``) so an upload takes long enough to be cut in the middle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgepipe.transport.loopback import LoopbackHost, LoopbackSshd


def _ip(*args: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=30)


def available() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    return None


@dataclass
class Cable:
    namespace: str
    host_end: str
    board_end: str

    def unplug(self) -> None:
        _ip("ip", "link", "set", self.board_end, "down", namespace=self.namespace)

    def plug(self) -> None:
        _ip("ip", "link", "set", self.board_end, "up", namespace=self.namespace)

    def limit(self, rate: str) -> None:
        _ip("tc", "qdisc", "replace", "dev", self.host_end, "root", "tbf", "rate", rate, "burst", "32kbit",
            "latency", "400ms")  # fmt: skip

    def unlimit(self) -> None:
        _ip("tc", "qdisc", "del", "dev", self.host_end, "root")


@contextmanager
def board_behind_cable(directory: Path) -> Iterator[tuple[LoopbackHost, Cable]]:
    tag = str(os.getpid() % 100000)
    namespace, host_end, board_end = f"ep{tag}", f"eph{tag}", f"epb{tag}"
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    _ip("ip", "netns", "add", namespace)
    try:
        _ip("ip", "link", "add", host_end, "type", "veth", "peer", "name", board_end)
        _ip("ip", "link", "set", board_end, "netns", namespace)
        _ip("ip", "addr", "add", f"{subnet}.1/30", "dev", host_end)
        _ip("ip", "link", "set", host_end, "up")
        _ip("ip", "addr", "add", f"{subnet}.2/30", "dev", board_end, namespace=namespace)
        _ip("ip", "link", "set", board_end, "up", namespace=namespace)
        _ip("ip", "link", "set", "lo", "up", namespace=namespace)
        with LoopbackSshd(directory, address=f"{subnet}.2", launcher=["ip", "netns", "exec", namespace]) as host:
            yield host, Cable(namespace, host_end, board_end)
    finally:  # whatever still runs on the "board" (sessions sshd started, an agent still measuring) goes too
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30)
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-9", pid], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
