"""A link that goes silent, through the real CLI: the board is the real sshd in a network namespace whose cable
the test unplugs (tests/netns.py). Nothing may hang: the deploy gives up within 45 s with an infrastructure exit
code and a failed result, and nothing incomplete stays on the board.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import netns
import pytest
from conftest import REPO

GIVE_UP_BOUND_S = 45  # the bound; the target's default link_timeout_s is 30


@pytest.fixture(scope="module")
def cable_board(tmp_path_factory: pytest.TempPathFactory) -> Any:
    reason = netns.available()
    if reason:
        pytest.fail(f"the link-fault tests need network namespaces: {reason} (CI runs as root with iproute2)")
    with netns.board_behind_cable(tmp_path_factory.mktemp("cable-sshd")) as (host, cable):
        yield host, cable


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4.4 MB float model: at 2 Mbit/s its upload takes about 18 s, long enough to cut in the middle."""
    from edgepipe.keras_compat import keras, tf

    k = keras()
    inputs = k.Input((256,))
    model = k.Model(inputs, k.layers.Dense(10)(k.layers.Dense(4096)(inputs)))
    path = tmp_path_factory.mktemp("big") / "big.tflite"
    path.write_bytes(tf().lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def _target(folder: Path, host: Any) -> Path:
    path = folder / "cable.yaml"
    path.write_text(
        json.dumps(
            {
                "name": "cable",
                "transport": "ssh",
                "host": host.address,
                "port": host.port,
                "user": host.user,
                "key": str(host.key),
                "known_hosts": str(host.known_hosts),
                "python": sys.executable,
                "workdir": str(folder / "board"),
                "connect_timeout_s": 5,
                "connect_attempts": 1,
                # max_runs high: --min-seconds, not the run cap, must decide how long the agent measures
                "measure": {"runs": 20, "min_seconds": 0.1, "repeats": 1, "time_limit_s": 300, "max_runs": 3_000_000},
            }
        )
    )
    return path


def _deploy(target: Path, model: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgepipe", "deploy", "--target", str(target), "--model", str(model), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.1)


def _partials(board: Path) -> list[Path]:
    return list((board / "blobs").glob("*.partial-*")) if (board / "blobs").is_dir() else []


def test_a_link_that_goes_silent_during_an_upload_gives_up_in_time_and_leaves_nothing(
    cable_board: Any, big_model: Path, tmp_path: Path
) -> None:
    host, cable = cable_board
    target = _target(tmp_path, host)
    board = tmp_path / "board"
    cable.limit("2mbit")
    try:
        deploy = _deploy(target, big_model)
        try:
            _wait_for(
                lambda: any(p.stat().st_size > 300_000 for p in _partials(board) if p.exists()),
                60,
                "the model's upload reaching 300 kB",
            )
            cable.unplug()
            cut = time.monotonic()
            _, stderr = deploy.communicate(timeout=120)
        finally:
            deploy.kill()
        gave_up_after = time.monotonic() - cut
    finally:
        cable.plug()
        cable.unlimit()

    print(f"upload cut: gave up {gave_up_after:.1f} s after the cable was unplugged")  # shown with pytest -s
    assert gave_up_after < GIVE_UP_BOUND_S, f"gave up only after {gave_up_after:.0f} s"
    assert deploy.returncode in (13, 14), stderr
    assert "upload of model" in stderr and "cut off" in stderr, stderr
    failed = json.loads(big_model.with_name("big.deploy-cable.failed.json").read_text())
    assert failed["status"] == "failed"
    assert failed["error"]["class"] == "TransferError" and failed["error"]["kind"] == "infrastructure"
    assert not big_model.with_name("big.deploy-cable.json").exists()
    # The receiver on the board notices that nothing arrives (link_timeout_s + 10 s) and removes its partial file.
    _wait_for(lambda: not _partials(board), 60, "the board removing the partial upload")
    assert not list((board / "blobs").glob("*.tflite")), "an incomplete model was left under its final name"


def test_after_the_cable_is_back_the_same_deploy_succeeds(cable_board: Any, big_model: Path, tmp_path: Path) -> None:
    host, _ = cable_board
    deploy = _deploy(_target(tmp_path, host), big_model, "--no-history")
    _, stderr = deploy.communicate(timeout=300)
    assert deploy.returncode == 0, stderr
    assert json.loads(big_model.with_name("big.deploy-cable.json").read_text())["status"] == "passed"


def test_a_link_that_goes_silent_while_the_agent_measures_gives_up_in_time(
    cable_board: Any, big_model: Path, tmp_path: Path
) -> None:
    """No byte is due while the agent measures quietly: keepalives must find out that the board is gone."""
    host, cable = cable_board
    deploy = _deploy(_target(tmp_path, host), big_model, "--min-seconds", "200", "--no-history")
    lines: list[str] = []
    try:
        assert deploy.stderr is not None
        for line in deploy.stderr:
            lines.append(line)
            if "measuring" in line and "at least" in line:
                break
        else:
            raise AssertionError("the agent never started measuring:\n" + "".join(lines))
        time.sleep(2)
        cable.unplug()
        cut = time.monotonic()
        _, rest = deploy.communicate(timeout=120)
        gave_up_after = time.monotonic() - cut
    finally:
        deploy.kill()
        cable.plug()
    stderr = "".join(lines) + rest
    print(f"measuring: gave up {gave_up_after:.1f} s after the cable was unplugged")
    assert gave_up_after < GIVE_UP_BOUND_S, f"gave up only after {gave_up_after:.0f} s"
    assert deploy.returncode == 11, stderr
    assert "dropped while" in stderr and "Socket exception" not in stderr, stderr
    failed = json.loads(big_model.with_name("big.deploy-cable.failed.json").read_text())
    assert failed["error"]["class"] == "ConnectError"
