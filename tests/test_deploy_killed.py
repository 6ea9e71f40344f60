"""CI cancels jobs with SIGTERM and then SIGKILL: a killed ``edgepipe deploy`` leaves nothing running and nothing
that outlives it (the local agent and its sandboxed child, the staging directory), and SIGTERM still writes a
failed result. Through the real CLI, on the local target.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli

pytestmark = pytest.mark.slow


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in command:
            found.append(int(entry.name))
    return found


def _wait_for(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _start_measuring(run: Path, tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, str], list[str]]:
    """A deploy whose agent measures for minutes; returns once the agent (and its sandbox) is measuring."""
    env = {
        **os.environ,
        "EDGEPIPE_LOCAL_WORKDIR": str(tmp_path / "board"),
        "TMPDIR": str(tmp_path / "tmp"),
    }
    (tmp_path / "tmp").mkdir()
    deploy = subprocess.Popen(
        [sys.executable, "-m", "edgepipe", "deploy", str(run), "--target", "local", "--min-seconds", "300"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert deploy.stderr is not None
    for line in deploy.stderr:
        lines.append(line)
        if "agent: measuring" in line:
            break
    else:
        raise AssertionError("the agent never started measuring:\n" + "".join(lines))
    board = str(tmp_path / "board")
    assert len(_processes_mentioning(board)) >= 2, "expected the agent and its sandboxed child"
    assert list((tmp_path / "tmp").glob(f"edgepipe-deploy-{deploy.pid}-*")), "expected a staging directory"
    return deploy, env, lines


def test_sigterm_stops_the_agent_and_writes_a_failed_result(optimized_run: tuple[Path, dict], tmp_path: Path) -> None:
    run, _ = optimized_run
    deploy_started = time.time()
    deploy, _, lines = _start_measuring(run, tmp_path)
    try:
        deploy.send_signal(signal.SIGTERM)
        _, rest = deploy.communicate(timeout=30)
    finally:
        deploy.kill()
    assert deploy.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    assert _wait_for(lambda: not _processes_mentioning(str(tmp_path / "board")), 10), "the agent outlived the deploy"
    assert not list((tmp_path / "tmp").glob("edgepipe-deploy-*")), "the staging directory was left behind"
    failed = json.loads((run / "deploy-local.failed.json").read_text())
    (run / "deploy-local.failed.json").unlink()  # the run directory is shared with other tests
    assert failed["status"] == "failed"
    assert failed["error"]["class"] == "Interrupted" and failed["error"]["exit_code"] == 130
    assert "SIGTERM" in failed["error"]["message"]
    assert not (run / "deploy-local.json").exists() or (run / "deploy-local.json").stat().st_mtime < deploy_started


def test_sigkill_takes_the_agent_along_and_the_next_deploy_removes_the_staging_directory(
    optimized_run: tuple[Path, dict], tmp_path: Path
) -> None:
    run, _ = optimized_run
    deploy, env, _ = _start_measuring(run, tmp_path)
    deploy.kill()
    deploy.wait(10)
    assert _wait_for(lambda: not _processes_mentioning(str(tmp_path / "board")), 15), "the agent outlived the deploy"
    stale = list((tmp_path / "tmp").glob(f"edgepipe-deploy-{deploy.pid}-*"))
    assert stale, "SIGKILL cannot clean up: the staging directory is still there for the next run to remove"

    again = run_cli(
        "deploy", str(run), "--target", "local", "--runs", "5", "--min-seconds", "0", "--repeats", "1",
        "--out", str(tmp_path / "again.json"), "--no-history", env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert not any(path.exists() for path in stale), "the next deploy left the dead one's staging directory"
