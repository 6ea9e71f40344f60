"""The ``ssh`` transport (paramiko): verified host keys, explicit keys, timeouts everywhere, quoted commands.

- Host keys are checked against the target's ``known_hosts``. An unknown host is refused unless the target says
  ``trust_on_first_use: true`` (then its key is recorded); a changed key is always refused.
- Only the key file named by the target, and the SSH agent only when ``use_agent: true``, are tried.
- Connect, banner, auth and channel timeouts are set; a failed TCP connect is retried (safe: nothing ran yet).
- A command runs under coreutils ``timeout`` on the board, so it dies with its deadline even when this side
  loses the connection; this side stops waiting a little later and says so.
- A link that goes silent is noticed within the target's ``link_timeout_s``: the kernel drops a connection
  whose data stays unacknowledged that long (``TCP_USER_TIMEOUT``), TCP and SSH keepalives make an idle
  connection carry something to acknowledge, and a writer that cannot hand over a byte for that long is
  declared stuck. Giving up closes the whole SSH transport, never just the channel: ``Channel.close`` waits
  for paramiko's write lock, which a writer blocked on a full socket holds forever.
- paramiko's exceptions are translated to edgepipe's here and nowhere else.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import select
import shlex
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paramiko

from edgepipe.config.target import Target
from edgepipe.errors import CommandError, ConfigError, ConnectError, DeadlineExceeded, HostKeyError, TransferError
from edgepipe.transport.base import (
    KILL_GRACE_S,
    CommandResult,
    LineCallback,
    ProgressCallback,
    Stdin,
    Transport,
    feed,
)

# paramiko logs a dropped socket to stderr by itself ("Socket exception: ..."); the error edgepipe raises says it.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

PIECE = 32 * 1024  # stdin is handed to paramiko in pieces this big
TIMEOUT_EXIT = 124  # coreutils timeout: the command timed out
KILLED_EXIT = 137  # ... and had to be killed with SIGKILL
OUTPUT_AFTER_EXIT_S = 10.0  # how long output may still arrive after the exit status


class CountingSocket:
    """A socket that counts the bytes crossing it, so tests can see exactly what a deploy sent."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sent = 0
        self.received = 0

    def send(self, data: bytes) -> int:
        count = self._sock.send(data)
        self.sent += count
        return count

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)
        self.sent += len(data)

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self.received += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def fingerprint(key: paramiko.PKey) -> str:
    return key.fingerprint  # "SHA256:..." like OpenSSH prints it


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyError(
            f"host {hostname} is not in {self.known_hosts} (it offered {key.get_name()} key {fingerprint(key)})",
            hint=f"check that fingerprint on the board ('ssh-keygen -lf /etc/ssh/ssh_host_{_short(key)}_key.pub'), "
            f"then add it with 'ssh-keyscan -p PORT HOST >> {self.known_hosts}', "
            "or set trust_on_first_use: true in the target",
        )


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts
        self.recorded: str | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with self.known_hosts.open("a", encoding="utf-8") as handle:
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        self.recorded = f"{hostname} {key.get_name()} {fingerprint(key)}"


PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _prefer_gcm(sock: Any, **options: Any) -> paramiko.Transport:
    """AES-GCM first when the server offers it (every OpenSSH since 6.2): one authenticated pass per packet
    instead of CTR plus HMAC, which measurably speeds up uploads; paramiko's own order follows as fallback."""
    transport = paramiko.Transport(sock, **options)
    security = transport.get_security_options()
    available = tuple(security.ciphers)
    security.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in available) + tuple(
        c for c in available if c not in PREFERRED_CIPHERS
    )
    return transport


def _short(key: paramiko.PKey) -> str:
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(key.get_name(), "ecdsa")


def bound_silence(sock: socket.socket, seconds: float) -> None:
    """Make the kernel give up on a connection whose data stays unacknowledged for ``seconds`` (Linux
    ``TCP_USER_TIMEOUT``), and probe an idle one with TCP keepalives. Elsewhere the options that exist are set;
    the writer's stall check and SSH keepalives still bound the wait."""
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), max(1, int(seconds / 3))),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), max(1, int(seconds / 6))),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(seconds * 1000)),
    ]
    for level, option, value in options:
        if option is not None:
            with contextlib.suppress(OSError):  # not supported here: the other bounds remain
                sock.setsockopt(level, option, value)


class _Writer(threading.Thread):
    """Sends a command's stdin while the caller reads its output; a failure to send is kept, not raised here
    (the command's exit status, or the missing one, tells the caller what happened). ``last_progress`` is
    when it last handed bytes over, so the caller can tell a slow link from a dead one."""

    def __init__(self, channel: paramiko.Channel, stdin: Stdin, progress: ProgressCallback | None) -> None:
        super().__init__(daemon=True)
        self.channel, self.stdin, self.progress = channel, stdin, progress
        self.error: BaseException | None = None
        self.last_progress = time.monotonic()

    def _send(self, chunk: bytes) -> None:
        """In pieces of 32 KiB, noting each: a slow link (a 1 MiB chunk takes 40 s at 25 kB/s) keeps moving."""
        for offset in range(0, len(chunk), PIECE):
            piece = chunk[offset : offset + PIECE]
            while piece:
                sent = self.channel.send(piece)
                if sent == 0:
                    raise EOFError("the channel closed")
                piece = piece[sent:]
                self.last_progress = time.monotonic()

    def run(self) -> None:
        try:
            feed(self.stdin, self._send, self.progress)
            self.channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.error = exc
        self.last_progress = time.monotonic()

    def stalled_for(self) -> float:
        return time.monotonic() - self.last_progress if self.is_alive() else 0.0


class SshTransport(Transport):
    def __init__(self, target: Target) -> None:
        self.target = target
        self.client = paramiko.SSHClient()
        self.socket: CountingSocket | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.first_use: str | None = None
        self._connect()

    def describe(self) -> str:
        return self.target.where()

    # ------------------------------------------------------------------------------------------- connect
    def _check_files(self) -> None:
        """The target's own files, before any connection: a wrong path is a set-up mistake (exit 2), not an
        unreachable board."""
        target = self.target
        if target.known_hosts.exists() and not target.known_hosts.is_file():
            raise ConfigError(
                f"target {target.name}: known_hosts {target.known_hosts} is not a file",
                hint="point the target's known_hosts at an OpenSSH known_hosts file",
            )
        if target.key is not None and not target.key.is_file():
            raise ConfigError(
                f"target {target.name}: key {target.key} does not exist or is not a file",
                hint="set the target's key to the private key file for the board (or use_agent: true)",
            )

    def _connect(self) -> None:
        target = self.target
        known_hosts = target.known_hosts
        self._check_files()
        if known_hosts.is_file():
            try:
                self.client.load_host_keys(str(known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise HostKeyError(f"cannot read known_hosts {known_hosts}: {exc}") from None
        elif not target.trust_on_first_use:
            raise HostKeyError(
                f"known_hosts file {known_hosts} does not exist, so {target.host} cannot be verified",
                hint="create it with ssh-keyscan after checking the fingerprint, or set trust_on_first_use: true",
            )
        policy = _TrustOnFirstUse(known_hosts) if target.trust_on_first_use else _RefuseUnknownHost(known_hosts)
        self.client.set_missing_host_key_policy(policy)
        sock = self._open_socket()
        try:
            self.client.connect(
                hostname=target.host or "",
                port=target.port,
                username=target.user,
                key_filename=str(target.key) if target.key else None,
                allow_agent=target.use_agent,
                look_for_keys=False,
                timeout=target.connect_timeout_s,
                banner_timeout=target.connect_timeout_s,
                auth_timeout=target.connect_timeout_s,
                channel_timeout=target.connect_timeout_s,
                sock=sock,  # type: ignore[arg-type]
                transport_factory=_prefer_gcm,
            )
        except HostKeyError:
            self.client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            self.client.close()
            raise HostKeyError(
                f"the host key of {target.host}:{target.port} has CHANGED: {known_hosts} expects "
                f"{fingerprint(exc.expected_key)}, the host offered {fingerprint(exc.key)}. This can be a "
                "re-installed board, or someone in the middle",
                hint=f"if the board was re-imaged, verify the new fingerprint and remove the old line from "
                f"{known_hosts} ('ssh-keygen -R \"[{target.host}]:{target.port}\" -f {known_hosts}')",
            ) from None
        except paramiko.AuthenticationException as exc:
            self.client.close()
            raise ConnectError(
                f"authentication as {target.user} on {target.host}:{target.port} failed: {exc}",
                hint=f"check that the public half of {target.key} is in ~{target.user}/.ssh/authorized_keys "
                "on the board (ssh-copy-id), or set use_agent",
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.client.close()
            raise ConnectError(
                f"SSH handshake with {target.host}:{target.port} failed: {exc or type(exc).__name__}",
                hint="is an SSH server (not another service) listening on that port?",
            ) from None
        self.socket = sock
        self.first_use = getattr(policy, "recorded", None)
        # SSH keepalives give an idle connection (the agent measuring quietly) something to acknowledge, so
        # TCP_USER_TIMEOUT notices a dead link then too.
        self.client.get_transport().set_keepalive(max(1, int(target.link_timeout_s / 5)))  # type: ignore[union-attr]

    def _open_socket(self) -> CountingSocket:
        """TCP connect with retries and back-off; only this step is retried (nothing has run yet)."""
        target = self.target
        problem: OSError | None = None
        for attempt in range(target.connect_attempts):
            if attempt:
                time.sleep(min(2.0**attempt, 8.0))
            try:
                sock = socket.create_connection((target.host, target.port), timeout=target.connect_timeout_s)
                bound_silence(sock, target.link_timeout_s)
                return CountingSocket(sock)
            except OSError as exc:
                problem = exc
                if isinstance(exc, socket.gaierror):
                    break  # a name that does not resolve will not resolve on retry
        raise ConnectError(
            f"cannot reach {target.host}:{target.port} after {target.connect_attempts} attempt(s): {problem}",
            hint="is the board on, on the network, and running sshd? check host and port in the target",
        )

    # ------------------------------------------------------------------------------------------- commands
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: Stdin = None,
        on_stderr_line: LineCallback | None = None,
        on_stdin_progress: ProgressCallback | None = None,
    ) -> CommandResult:
        started = time.monotonic()
        remote = ["timeout", f"--kill-after={KILL_GRACE_S:g}", f"{timeout:.3f}", *argv]
        command = shlex.join(remote)
        transport = self._live_transport(argv[0])
        try:
            channel = transport.open_session(timeout=self.target.connect_timeout_s)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"cannot start {argv[0]} on {self.describe()}: {exc or type(exc).__name__}") from None
        writer = _Writer(channel, stdin, on_stdin_progress)
        writer.start()
        out, err = bytearray(), bytearray()
        pending = b""
        exited: float | None = None
        give_up = started + timeout + KILL_GRACE_S + 5
        try:
            while True:
                if channel.recv_ready():
                    out += channel.recv(65536)
                    continue
                if channel.recv_stderr_ready():
                    chunk = channel.recv_stderr(65536)
                    err += chunk
                    if on_stderr_line is not None:
                        *lines, pending = (pending + chunk).split(b"\n")
                        for line in lines:
                            on_stderr_line(line.decode("utf-8", "replace"))
                    continue
                if channel.closed or not transport.is_active():
                    break
                if channel.exit_status_ready():
                    # sshd may send the exit status before the rest of the output it still reads from the
                    # command's pipe (seen: a 200 kB result lost under four parallel deploys): wait for the end
                    # of the output too, but not forever (a background child could hold the pipe open).
                    exited = exited or time.monotonic()
                    if channel.eof_received or time.monotonic() - exited > OUTPUT_AFTER_EXIT_S:
                        break
                if writer.stalled_for() > self.target.link_timeout_s:
                    self._abandon()
                    raise ConnectError(
                        f"the link to {self.describe()} went silent: nothing could be sent for "
                        f"{self.target.link_timeout_s:g} s while {argv[0]} ran",
                        hint="check the board's network and power, then deploy again",
                    )
                if time.monotonic() > give_up:
                    self._abandon()
                    raise DeadlineExceeded(
                        f"{argv[0]} did not answer within its {timeout:.0f} s deadline on {self.describe()}",
                        hint="raise the target's deadline_s or --deadline, or lower the measured runs",
                    )
                # The channel's fileno wakes select() on data, not on the exit status: poll briefly.
                select.select([channel], [], [], 0.005)
            while channel.recv_ready():  # data can arrive just before the exit status
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._abandon()
            raise ConnectError(f"the connection to {self.describe()} broke while {argv[0]} ran: {exc}") from None
        except BaseException:  # Ctrl-C, SIGTERM: the board's sshd hangs up the command (SIGHUP) when we go
            self._abandon()
            raise
        status = channel.recv_exit_status() if channel.exit_status_ready() else -1
        if status == -1 and not transport.is_active():
            self._abandon()
            raise self._dropped(transport, argv[0])
        writer.join(self.target.link_timeout_s)
        if writer.is_alive():  # the command ended, but our stdin is stuck in a full socket
            self._abandon()
        else:
            channel.close()
        stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        if status == -1:
            raise CommandError(
                f"{argv[0]} on {self.describe()} ended without an exit status (the connection or sshd dropped it)",
                hint="retry; if it repeats, check the board's sshd log and memory (dmesg)",
                stdout=stdout,
                stderr=stderr,
            )
        if status in (TIMEOUT_EXIT, KILLED_EXIT) and time.monotonic() - started >= timeout:
            raise DeadlineExceeded(
                f"{argv[0]} did not finish within its {timeout:.0f} s deadline on {self.describe()}; it was killed",
                hint="raise the target's deadline_s or --deadline, or lower the measured runs",
            )
        return CommandResult(tuple(argv), status, stdout, stderr, time.monotonic() - started)

    def _live_transport(self, what: str) -> paramiko.Transport:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectError(
                f"the connection to {self.describe()} is closed; cannot run {what}",
                hint="check the board's network and power, then deploy again",
            )
        return transport

    def _dropped(self, transport: paramiko.Transport, what: str) -> ConnectError:
        saved = getattr(transport, "saved_exception", None)
        cause = (str(saved) or type(saved).__name__) if saved is not None else None
        return ConnectError(
            f"the connection to {self.describe()} dropped while {what} ran"
            + (f" ({cause})" if cause else "")
            + f": the link was silent for {self.target.link_timeout_s:g} s, or the board closed it",
            hint="check the board's network and power, then deploy again",
        )

    def _abandon(self) -> None:
        """Close the whole connection without waiting on anything a stuck thread holds: the transport's
        ``close`` marks its packetizer closed (a writer looping on a full socket sees that within 0.1 s) and
        closes the socket; ``Channel.close`` would queue behind that writer instead."""
        self._sftp = None
        self.client.close()

    # ---------------------------------------------------------------------------------------------- files
    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise TransferError(f"cannot open SFTP on {self.describe()}: {exc}") from None
            self._sftp.get_channel().settimeout(self.target.connect_timeout_s * 3)  # type: ignore[union-attr]
        return self._sftp

    def put(self, local: Path, remote: str, *, progress: ProgressCallback | None = None) -> None:
        done = 0

        def count(sent: int, total: int) -> None:
            nonlocal done
            done = sent
            if progress:
                progress(sent, total)

        try:
            with local.open("rb") as source:
                self.sftp.putfo(source, remote, local.stat().st_size, callback=count, confirm=True)
        except TransferError:
            raise
        except (OSError, paramiko.SSHException, EOFError) as exc:
            full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
            raise TransferError(
                f"uploading {local.name} to {self.describe()}:{remote} failed after {done} bytes: "
                f"{exc or type(exc).__name__}",
                hint="the board's disk is full: free space or change the target's workdir"
                if full
                else "check the connection and free disk on the board, then deploy again (finished files are kept)",
            ) from None

    def get(self, remote: str, local: Path) -> None:
        try:
            self.sftp.get(remote, str(local))
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransferError(f"downloading {remote} from {self.describe()} failed: {exc}") from None

    def exists(self, remote: str) -> int | None:
        try:
            return self.sftp.stat(remote).st_size
        except FileNotFoundError:
            return None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransferError(f"cannot look at {remote} on {self.describe()}: {exc}") from None

    def touch(self, remote: str) -> None:
        try:
            self.sftp.utime(remote, None)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransferError(f"cannot touch {remote} on {self.describe()}: {exc}") from None

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()
