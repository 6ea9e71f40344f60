"""The transport seam on both implementations: files, streamed stdin, stderr lines, deadlines, lost sessions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgepipe.errors import CommandError, ConnectError, DeadlineExceeded, InfrastructureError
from edgepipe.targets import load_target
from edgepipe.transport import Transport, open_transport
from edgepipe.transport.local import LocalTransport

pytestmark = pytest.mark.slow


@pytest.fixture(params=["local", "ssh"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Transport]:
    if request.param == "local":
        yield LocalTransport()
        return
    request.getfixturevalue("loopback_env")
    with open_transport(load_target("loopback")) as connected:
        yield connected


def test_put_get_exists_round_trip(transport: Transport, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * 2**20 + 17))
    remote = str(tmp_path / "remote" / "copy.bin")
    assert transport.exists(remote) is None
    (tmp_path / "remote").mkdir()
    seen: list[int] = []
    transport.put(source, remote, progress=lambda done, total: seen.append(done))
    assert transport.exists(remote) == source.stat().st_size and seen[-1] == source.stat().st_size
    transport.get(remote, tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()


def test_streamed_stdin_and_stderr_lines_arrive_together(transport: Transport, tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(5 * 2**20))
    # The command writes 2 MB to stderr while it reads stdin: neither stream may block the other.
    script = (
        "import sys, hashlib; sys.stderr.write('line\\n' * 400000); sys.stderr.flush();"
        "print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
    )
    lines: list[str] = []
    sent: list[int] = []
    with payload.open("rb") as stream:
        result = transport.run(
            [sys.executable, "-c", script],
            timeout=60,
            stdin=stream,
            on_stderr_line=lines.append,
            on_stdin_progress=lambda done, total: sent.append(done),
        )
    import hashlib

    assert result.ok and result.stdout.strip() == hashlib.sha256(payload.read_bytes()).hexdigest()
    assert len(lines) == 400000 and sent[-1] == payload.stat().st_size


def test_arguments_are_quoted_not_interpreted_by_a_shell(transport: Transport, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    tricky = f"; touch {marker} $(touch {marker}) 'quote\" and space"
    result = transport.run_check([sys.executable, "-c", "import sys; print(sys.argv[1])", tricky], timeout=30)
    assert result.stdout.rstrip("\n") == tricky and not marker.exists()


def test_failing_command_raises_with_its_output(transport: Transport) -> None:
    script = "import sys; sys.stderr.write('went wrong\\n'); sys.exit(3)"
    with pytest.raises(CommandError, match=r"exit 3.*went wrong") as failed:
        transport.run_check([sys.executable, "-c", script], timeout=30)
    assert failed.value.returncode == 3 and failed.value.stderr == "went wrong\n"


def test_deadline_kills_the_command_and_its_children(transport: Transport, tmp_path: Path) -> None:
    tag = f"edgepipe-deadline-{os.getpid()}-{time.monotonic_ns()}"
    script = (
        "import subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', sys.argv[1]]); time.sleep(300)"
    )
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        transport.run([sys.executable, "-c", script, tag], timeout=2)
    assert time.monotonic() - started < 30
    for _ in range(50):
        left = subprocess.run(["pgrep", "-f", tag], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(0.2)
    assert left == []


def test_a_session_that_dies_without_exit_status_is_an_infrastructure_error(loopback_env: dict, sshd: Any) -> None:
    with open_transport(load_target("loopback")) as transport:

        def kill_sessions() -> None:
            time.sleep(1.0)
            for pid in subprocess.run(["pgrep", "-P", str(sshd.pid)], capture_output=True, text=True).stdout.split():
                os.kill(int(pid), signal.SIGKILL)

        threading.Thread(target=kill_sessions, daemon=True).start()
        with pytest.raises((CommandError, ConnectError)) as lost:
            transport.run(["sleep", "30"], timeout=60)
        assert isinstance(lost.value, InfrastructureError)
        # sshd's session died: either the channel closed without a status, or the whole connection went
        assert "exit status" in lost.value.message or "dropped while sleep ran" in lost.value.message


def test_the_loopback_board_stops_its_sshd_on_sigterm(tmp_path: Path) -> None:
    """``python -m edgepipe.transport.loopback`` is stopped by CI with SIGTERM: its sshd must go with it."""
    helper = subprocess.Popen(
        [sys.executable, "-m", "edgepipe.transport.loopback", str(tmp_path / "board")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert helper.stdout is not None
        first = helper.stdout.readline()
        assert "sshd listens on 127.0.0.1:" in first, first + helper.stderr.read() if helper.stderr else first
        sshd_pid = int(first.split("(pid ")[1].split(")")[0])
        helper.send_signal(signal.SIGTERM)
        helper.wait(timeout=20)
    finally:
        helper.kill()
    for _ in range(100):
        if not Path(f"/proc/{sshd_pid}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{sshd_pid}").exists(), "sshd outlived the loopback helper"


def test_output_that_arrives_after_the_exit_status_is_kept(loopback_env: dict) -> None:
    """OpenSSH's sshd sends the exit status as soon as it reaps the command, while up to a pipe's worth of the
    command's output may still wait to be read (session.c says so): a reader that stops at the exit status
    loses it. Seen in a farm run as an agent result that never arrived; here 4 parallel sessions x 60 commands
    with 60 kB of output each: the old reader lost output in 1-2 % of the commands."""
    short: list[tuple[int, int]] = []

    def session(worker: int) -> None:
        with open_transport(load_target("loopback")) as connected:
            for _ in range(60):
                result = connected.run(["sh", "-c", "head -c 60000 /dev/zero | tr '\\\\0' x"], timeout=60)
                if len(result.stdout) != 60000 or result.returncode != 0:
                    short.append((worker, len(result.stdout)))

    threads = [threading.Thread(target=session, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert short == []
