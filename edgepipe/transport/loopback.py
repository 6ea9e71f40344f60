"""A throwaway OpenSSH server on 127.0.0.1: the "board" of the test suite, the benchmarks and a board-less try-out.

It is the real ``sshd`` (Debian ``openssh-server``) with freshly generated host and user keys in one directory,
listening on a free port on the loopback address only, with password login off. ``known_hosts`` in that
directory holds its host key, so clients verify it like any other host.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edgepipe.errors import EdgepipeError

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
SFTP_SERVER_CANDIDATES = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/lib/ssh/sftp-server",
)


@dataclass(frozen=True)
class LoopbackHost:
    """Where a running loopback sshd listens and the files a client needs to reach it."""

    port: int
    address: str
    user: str
    key: Path
    known_hosts: Path
    host_public_key: str
    directory: Path
    pid: int


def find_sshd() -> str | None:
    return next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), shutil.which("sshd"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _host_pattern(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgepipe-loopback", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


class LoopbackSshd:
    """``with LoopbackSshd(directory) as host:`` starts sshd and stops it (and its sessions) on exit.

    ``address`` and ``launcher`` put it elsewhere: the link-fault tests run it inside a network namespace
    (``launcher=["ip", "netns", "exec", NAME]``) on the far end of a virtual cable they can unplug.
    """

    def __init__(self, directory: Path, address: str = "127.0.0.1", launcher: Sequence[str] = ()) -> None:
        self.directory = directory
        self.address = address
        self.launcher = list(launcher)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LoopbackHost:
        sshd = find_sshd()
        if sshd is None or shutil.which("ssh-keygen") is None:
            raise EdgepipeError(
                "OpenSSH's sshd is not installed", hint="sudo apt-get install openssh-server (it brings ssh-keygen)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "host_key.pub", "user_key", "user_key.pub"):
            (self.directory / name).unlink(missing_ok=True)
        host_public = _keygen(self.directory / "host_key")
        user_public = _keygen(self.directory / "user_key")
        (self.directory / "authorized_keys").write_text(user_public + "\n")
        port = _free_port()
        known_hosts = self.directory / "known_hosts"
        key_type, key_data = host_public.split()[:2]
        known_hosts.write_text(f"{_host_pattern(self.address, port)} {key_type} {key_data}\n")
        config = self.directory / "sshd_config"
        sftp_server = next((p for p in SFTP_SERVER_CANDIDATES if os.access(p, os.X_OK)), "internal-sftp")
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    f"ListenAddress {self.address}",
                    f"HostKey {self.directory / 'host_key'}",
                    f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
                    f"PidFile {self.directory / 'sshd.pid'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "LogLevel ERROR",
                    f"Subsystem sftp {sftp_server}",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        log = (self.directory / "sshd.log").open("ab")
        self.process = subprocess.Popen([*self.launcher, sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
        _wait_for_port(self.address, port, self.process, self.directory / "sshd.log")
        return LoopbackHost(
            port=port,
            address=self.address,
            user=_user(),
            key=self.directory / "user_key",
            known_hosts=known_hosts,
            host_public_key=host_public,
            directory=self.directory,
            pid=self.process.pid,
        )

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _wait_for_port(address: str, port: int, process: subprocess.Popen[bytes], log: Path, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EdgepipeError(f"sshd exited at start-up (status {process.returncode}): {log.read_text()[-500:]}")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise EdgepipeError(f"sshd did not listen on {address}:{port} within {seconds:.0f} s")


def main() -> None:
    """``python -m edgepipe.transport.loopback [DIR]``: a board stand-in to try ``--target loopback`` by hand.

    Ctrl-C, SIGTERM and SIGHUP all stop sshd: the ``with`` block unwinds instead of the process dying around it.
    """
    import signal
    import sys
    import tempfile

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)

    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="edgepipe-sshd-"))
    with LoopbackSshd(directory) as host:
        print(f"sshd listens on 127.0.0.1:{host.port} (pid {host.pid}); in another shell:\n")
        print(f"export EDGEPIPE_LOOPBACK_PORT={host.port} EDGEPIPE_LOOPBACK_USER={host.user}")
        print(f"export EDGEPIPE_LOOPBACK_KEY={host.key} EDGEPIPE_LOOPBACK_KNOWN_HOSTS={host.known_hosts}")
        print(f"export EDGEPIPE_LOOPBACK_PYTHON={sys.executable}")
        print("edgepipe targets check loopback && edgepipe deploy --target loopback runs/digits\n")
        print("Ctrl-C (or SIGTERM) stops it.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
