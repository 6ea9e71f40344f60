"""A board at the far end of a virtual cable the test can unplug: a network namespace joined to this one by a veth
pair, with the real sshd running inside it (``ip netns``, ``tc``; needs root, as in CI's container).

Unplugging sets the board's end of the cable down: packets are dropped without a word, which is what a pulled
cable, a crashed Wi-Fi link or a board that lost power looks like from here. ``limit`` shapes this end's
sending rate (``tc tbf``) so an upload takes long enough to be cut in the middle.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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
    remove_leftovers()
    tag = str(os.getpid())
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


@dataclass
class LabBoard:
    name: str
    host: LoopbackHost
    cable: Cable


@contextmanager
def lab(directory: Path, count: int) -> Iterator[list[LabBoard]]:
    """``count`` boards, each the real sshd in its own namespace with its own address, on one bridge (a lab
    switch) that this machine joins at ``.1``: a device farm on one machine. Everything is removed on exit."""
    remove_leftovers()
    tag = str(os.getpid())  # names carry the creator's pid (at most 13 characters: Linux allows 15)
    bridge = f"epbr{tag}"
    subnet = f"10.{150 + os.getpid() % 50}.{os.getpid() % 250}"
    made: list[tuple[str, str]] = []
    _ip("ip", "link", "add", bridge, "type", "bridge")
    try:
        _ip("ip", "addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("ip", "link", "set", bridge, "up")
        boards: list[LabBoard] = []
        with ExitStack() as stack:
            for index in range(count):
                namespace, host_end, board_end = f"ep{tag}b{index}", f"eph{tag}b{index}", f"epb{tag}b{index}"
                _ip("ip", "netns", "add", namespace)
                made.append((namespace, host_end))
                _ip("ip", "link", "add", host_end, "type", "veth", "peer", "name", board_end)
                _ip("ip", "link", "set", board_end, "netns", namespace)
                _ip("ip", "link", "set", host_end, "master", bridge)
                _ip("ip", "link", "set", host_end, "up")
                _ip("ip", "addr", "add", f"{subnet}.{10 + index}/24", "dev", board_end, namespace=namespace)
                _ip("ip", "link", "set", board_end, "up", namespace=namespace)
                _ip("ip", "link", "set", "lo", "up", namespace=namespace)
                sshd = LoopbackSshd(
                    directory / f"board{index}", address=f"{subnet}.{10 + index}",
                    launcher=["ip", "netns", "exec", namespace],
                )  # fmt: skip
                host = stack.enter_context(sshd)
                boards.append(LabBoard(f"board{index}", host, Cable(namespace, host_end, board_end)))
            yield boards
    finally:
        for namespace, host_end in made:
            _remove_namespace(namespace, host_end)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)


def _remove_namespace(namespace: str, host_end: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30)
    for pid in pids.stdout.split():
        subprocess.run(["kill", "-9", pid], capture_output=True, timeout=30)
    subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30)
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


def remove_leftovers() -> list[str]:
    """Remove the namespaces, cables and bridges of earlier runs whose process is gone (a test run killed with
    SIGKILL never reaches its clean-up); returns their names. Names carry their creator's pid."""
    removed: list[str] = []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        found = re.fullmatch(r"ep(\d+)(b\d+)?", name)
        if found and not Path(f"/proc/{found.group(1)}").exists():
            _remove_namespace(name, "eph" + name[2:])
            removed.append(name)
    bridges = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True,
                             timeout=30).stdout  # fmt: skip
    for found in re.finditer(r"^\d+: (epbr(\d+))[:@]", bridges, re.MULTILINE):
        if not Path(f"/proc/{found.group(2)}").exists():
            subprocess.run(["ip", "link", "del", found.group(1)], capture_output=True, timeout=30)
            removed.append(found.group(1))
    return removed
