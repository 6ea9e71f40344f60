"""Deploying over real SSH: OpenSSH's sshd on 127.0.0.1, paramiko, the real agent and LiteRT on the "board".

The board's directory is a temporary directory of this machine, so the tests can look at what a deploy left
there (and what it did not), and at which processes are still running.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from malformed import malformed_models

from edgepipe.deployment import deploy
from edgepipe.errors import DeadlineExceeded, DeviceModelError, HostKeyError, InfrastructureError
from edgepipe.progress import Progress
from edgepipe.targets import load_target

pytestmark = pytest.mark.slow


def board_blob(env: dict[str, str], sha256: str, suffix: str = ".tflite") -> Path:
    return Path(env["EDGEPIPE_LOOPBACK_WORKDIR"]) / "blobs" / f"{sha256}{suffix}"


def test_full_deploy_matches_the_host(optimized_run: tuple[Path, dict], loopback_env: dict, tmp_path: Path) -> None:
    directory, optimize = optimized_run
    outcome = deploy(load_target("loopback"), run_dir=directory, out=tmp_path / "deploy.json")
    result = outcome.result
    assert result["status"] == "passed" and result["error"] is None
    device = result["device"]
    assert device["accuracy"]["accuracy"] == pytest.approx(optimize["final"]["accuracy"], abs=1e-6)
    assert result["checks"]["accuracy_matches_host"] is True and result["checks"]["accuracy_delta_points"] == 0
    assert device["accuracy"]["agreement"]["top1"] == 1.0 and device["accuracy"]["agreement"]["max_abs_diff"] == 0
    assert {"p50", "p90", "p99", "mean", "std"} <= set(device["timing"]["latency_ms"])
    assert device["memory"]["vmhwm_kb"]["after_runs"] > 0
    assert json.loads((tmp_path / "deploy.json").read_text()) == result
    model_sha = hashlib.sha256((directory / "model.tflite").read_bytes()).hexdigest()
    assert result["model"]["sha256"] == model_sha
    assert hashlib.sha256(board_blob(loopback_env, model_sha).read_bytes()).hexdigest() == model_sha
    assert not list(board_blob(loopback_env, model_sha).parent.glob("*.partial-*"))


def test_redeploy_of_an_unchanged_model_sends_no_model_bytes(
    optimized_run: tuple[Path, dict], loopback_env: dict, tmp_path: Path
) -> None:
    directory, _ = optimized_run
    target = load_target("loopback")
    first = deploy(target, run_dir=directory, out=tmp_path / "first.json").result["transfer"]
    on_board = [path for path in Path(loopback_env["EDGEPIPE_LOOPBACK_WORKDIR"]).rglob("*") if path.is_file()]
    long_ago = time.time() - 7200
    for path in on_board:
        os.utime(path, (long_ago, long_ago))
    second = deploy(target, run_dir=directory, out=tmp_path / "second.json").result["transfer"]
    assert "model" in first["sent"] and first["uploaded_bytes"] > 0
    assert second["sent"] == [] and second["uploaded_bytes"] == 0
    assert set(second["already_on_board"]) == {"agent", "model", "eval data", "reference outputs"}
    # Each file found was touched over SFTP: used now, so the board's cache would remove it last.
    assert len(on_board) == 4 and all(path.stat().st_mtime > long_ago + 3600 for path in on_board)
    assert second["board_cache"]["files"] == 4 and second["board_cache"]["removed_files"] == 0
    # Bytes on the wire (encrypted, counted at the socket): the second deploy saves at least the model's size.
    model_bytes = (directory / "model.tflite").stat().st_size
    assert second["wire_bytes_sent"] < first["wire_bytes_sent"] - model_bytes


def test_changed_host_key_is_refused(optimized_run: tuple[Path, dict], loopback_env: dict, tmp_path: Path) -> None:
    directory, _ = optimized_run
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    key_type, key_data = (tmp_path / "other.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{loopback_env['EDGEPIPE_LOOPBACK_PORT']} {key_type} {key_data}\n")
    env = {**loopback_env, "EDGEPIPE_LOOPBACK_KNOWN_HOSTS": str(known_hosts)}
    done = run_cli("deploy", "--target", "loopback", "--model", str(directory / "model.tflite"), env=env)
    assert done.returncode == HostKeyError.exit_code, done.stderr
    assert "has CHANGED" in done.stderr and "Traceback" not in done.stderr
    assert not (directory / "model.deploy-loopback.json").exists()
    # Trust on first use never extends to a changed key.
    target = load_target("loopback").model_copy(update={"known_hosts": known_hosts, "trust_on_first_use": True})
    with pytest.raises(HostKeyError, match="CHANGED"):
        deploy(target, model=directory / "model.tflite", out=tmp_path / "r.json")
    assert known_hosts.read_text().count("\n") == 1


def test_unknown_host_needs_trust_on_first_use(
    optimized_run: tuple[Path, dict], loopback_env: dict, sshd: Any, tmp_path: Path
) -> None:
    directory, _ = optimized_run
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    target = load_target("loopback").model_copy(update={"known_hosts": known_hosts})
    with pytest.raises(HostKeyError, match="not in") as refused:
        deploy(target, model=directory / "model.tflite", out=tmp_path / "r.json")
    assert refused.value.exit_code == 12 and "SHA256:" in refused.value.message
    assert known_hosts.read_text() == ""
    trusting = target.model_copy(update={"trust_on_first_use": True})
    assert deploy(trusting, model=directory / "model.tflite", out=tmp_path / "r.json").result["status"] == "passed"
    recorded = known_hosts.read_text().split()
    assert recorded[0] == f"[127.0.0.1]:{sshd.port}" and recorded[1:3] == sshd.host_public_key.split()[:2]


class CutTheConnection(Progress):
    """Kills sshd's session processes (the server side of our connection) when an upload is under way."""

    def __init__(self, sshd_pid: int, label: str) -> None:
        self.sshd_pid, self.label, self.current, self.cut = sshd_pid, label, "", False

    def upload_started(self, name: str, total: int) -> None:
        self.current = name

    def upload_advanced(self, done: int, total: int) -> None:
        if self.current == self.label and not self.cut and done < total:
            children = subprocess.run(["pgrep", "-P", str(self.sshd_pid)], capture_output=True, text=True).stdout
            for pid in children.split():
                os.kill(int(pid), signal.SIGKILL)
            self.cut = True


@pytest.fixture(scope="module")
def megabyte_model(tmp_path_factory: pytest.TempPathFactory, digits: Any) -> Path:
    """A real int8 model of about 1 MB (so an upload spans many SFTP writes)."""
    from edgepipe.convert.tflite import to_int8_tflite
    from edgepipe.keras_compat import keras

    k = keras()
    model = k.Sequential(
        [
            k.Input((8, 8, 1)),
            k.layers.Flatten(),
            k.layers.Dense(1024, "relu"),
            k.layers.Dense(960, "relu"),
            k.layers.Dense(10),
        ]
    )
    path = tmp_path_factory.mktemp("big") / "big.tflite"
    path.write_bytes(
        to_int8_tflite(model, digits["x_train"][:32] if isinstance(digits, dict) else digits.x_train[:32], "int8")
    )
    return path


def test_connection_cut_during_upload_leaves_nothing_and_the_next_deploy_works(
    megabyte_model: Path, optimized_run: tuple[Path, dict], loopback_env: dict, sshd: Any, tmp_path: Path
) -> None:
    directory, _ = optimized_run
    sha = hashlib.sha256(megabyte_model.read_bytes()).hexdigest()
    target = load_target("loopback")
    cut = CutTheConnection(sshd.pid, "model")
    with pytest.raises(InfrastructureError) as failed:
        deploy(target, model=megabyte_model, data=directory / "eval.npz", out=tmp_path / "r.json", progress=cut)
    assert cut.cut and failed.value.exit_code == 13 and "cut off" in failed.value.message
    assert not board_blob(loopback_env, sha).exists()
    for _ in range(50):  # the receiver on the board sees its input end early and removes its partial file
        partial = list(board_blob(loopback_env, sha).parent.glob("*.partial-*"))
        if not partial:
            break
        time.sleep(0.1)
    assert partial == []
    assert not (tmp_path / "r.json").exists()
    record = json.loads((tmp_path / "r.failed.json").read_text())
    assert record["error"]["kind"] == "infrastructure"
    again = deploy(target, model=megabyte_model, data=directory / "eval.npz", out=tmp_path / "r.json")
    assert again.result["status"] == "passed" and "model" in again.result["transfer"]["sent"]
    assert hashlib.sha256(board_blob(loopback_env, sha).read_bytes()).hexdigest() == sha
    assert not (tmp_path / "r.failed.json").exists()


def test_malformed_models_come_back_classified_over_ssh(
    optimized_run: tuple[Path, dict], loopback_env: dict, tmp_path: Path
) -> None:
    directory, _ = optimized_run
    target = load_target("loopback")
    for name, (content, expected) in malformed_models((directory / "model.tflite").read_bytes()).items():
        broken = tmp_path / f"{name}.tflite"
        broken.write_bytes(content)
        started = time.monotonic()
        with pytest.raises(DeviceModelError) as failed:
            deploy(target, model=broken, data=directory / "eval.npz", out=tmp_path / f"{name}.json")
        assert time.monotonic() - started < target.measure.time_limit_s
        assert type(failed.value).__name__ == expected and failed.value.exit_code in (21, 22)
        record = json.loads((tmp_path / f"{name}.failed.json").read_text())
        assert record["device"]["error"]["class"] == expected and record["error"]["kind"] == "model"
        assert not (tmp_path / f"{name}.json").exists()
    good = deploy(target, run_dir=directory, out=tmp_path / "good.json")
    assert good.result["status"] == "passed"


def test_deadline_kills_the_remote_job_and_leaves_no_process(
    optimized_run: tuple[Path, dict], loopback_env: dict, tmp_path: Path
) -> None:
    directory, _ = optimized_run
    target = load_target("loopback")
    endless = target.measure.model_copy(update={"min_seconds": 600, "max_runs": 10**9, "time_limit_s": 900})
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as failed:
        deploy(target, run_dir=directory, out=tmp_path / "r.json", measure=endless, deadline_s=4)
    assert failed.value.exit_code == 14 and time.monotonic() - started < 60
    workdir = loopback_env["EDGEPIPE_LOOPBACK_WORKDIR"]
    for _ in range(50):
        left = subprocess.run(["pgrep", "-f", workdir], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(0.2)
    assert left == [], f"processes left on the board: {left}"


def test_cli_targets_check_and_deploy_over_ssh(
    optimized_run: tuple[Path, dict], loopback_env: dict, tmp_path: Path
) -> None:
    directory, optimize = optimized_run
    check = run_cli("targets", "check", "loopback", env=loopback_env)
    assert check.returncode == 0, check.stderr
    results = dict(re.findall(r"^\s*(\w[\w ]*?)\s+(pass|fail|warn|n/a)\s", check.stdout, flags=re.MULTILINE))
    for row in ("reachable", "python", "agent", "runtime", "numpy", "architecture", "free disk"):
        assert results.get(row) == "pass", (row, check.stdout)
    run_copy = tmp_path / "run"
    shutil.copytree(directory, run_copy)
    done = run_cli("deploy", "--target", "loopback", str(run_copy), env=loopback_env)
    assert done.returncode == 0, done.stderr
    assert "latency p50 / p90 / p99" in done.stdout and "agent: measuring" in done.stderr
    result = json.loads((run_copy / "deploy-loopback.json").read_text())
    assert result["device"]["accuracy"]["accuracy"] == pytest.approx(optimize["final"]["accuracy"], abs=1e-6)


def test_unreachable_host_is_an_infrastructure_error(optimized_run: tuple[Path, dict], loopback_env: dict) -> None:
    directory, _ = optimized_run
    env = {**loopback_env, "EDGEPIPE_LOOPBACK_PORT": "1"}
    done = run_cli("deploy", "--target", "loopback", "--model", str(directory / "model.tflite"), env=env)
    assert done.returncode == 11 and "cannot reach 127.0.0.1:1" in done.stderr and "hint:" in done.stderr


def test_agent_install_prepares_a_fresh_board(
    optimized_run: tuple[Path, dict], loopback_env: dict, tmp_path: Path
) -> None:
    """A real venv on the "board" with numpy and ai-edge-litert from the package registry, then a deploy with it."""
    directory, optimize = optimized_run
    env = {**loopback_env, "EDGEPIPE_LOOPBACK_PYTHON": ""}  # the target falls back to the venv agent install makes
    before = run_cli("deploy", "--target", "loopback", "--model", str(directory / "model.tflite"), env=env)
    assert before.returncode == 16 and "agent install" in before.stderr  # no venv yet: the agent cannot run
    done = run_cli("agent", "install", "--target", "loopback", env=env)
    assert done.returncode == 0, done.stderr
    venv_python = Path(loopback_env["EDGEPIPE_LOOPBACK_WORKDIR"]) / "venv" / "bin" / "python"
    assert venv_python.exists() and "ai_edge_litert" in done.stdout
    deployed = run_cli(
        "deploy",
        "--target",
        "loopback",
        "--model",
        str(directory / "model.tflite"),
        "--data",
        str(directory / "eval.npz"),
        "--out",
        str(tmp_path / "r.json"),
        env=env,
    )
    assert deployed.returncode == 0, deployed.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["device"]["accuracy"]["accuracy"] == pytest.approx(optimize["final"]["accuracy"], abs=1e-6)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 512 KB tmpfs mounted where the board keeps its blobs (needs root; the test is skipped, visibly, without)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_full_disk_on_the_board_is_a_transfer_error_that_leaves_nothing(
    megabyte_model: Path, optimized_run: tuple[Path, dict], loopback_env: dict, tiny_disk: Path, tmp_path: Path
) -> None:
    directory, _ = optimized_run
    target = load_target("loopback").model_copy(update={"workdir": str(tiny_disk)})
    with pytest.raises(InfrastructureError) as failed:
        deploy(target, model=megabyte_model, data=directory / "eval.npz", out=tmp_path / "r.json")
    assert failed.value.exit_code == 13 and "disk is full" in failed.value.message
    assert "free space" in (failed.value.hint or "")
    assert sorted(p.name for p in (tiny_disk / "blobs").iterdir()) == []  # no partial, no final model
    assert not (tmp_path / "r.json").exists()


def test_a_disk_filled_by_old_deploys_makes_room_and_the_deploy_goes_on(
    optimized_run: tuple[Path, dict], loopback_env: dict, tiny_disk: Path, tmp_path: Path
) -> None:
    """The board's disk fills during an upload; edgepipe's own files that nothing used in the last hour go, and
    the upload is sent again. Under the cache limit (the default 1024 MB) they would have stayed."""
    directory, _ = optimized_run
    blobs = tiny_disk / "blobs"
    blobs.mkdir()
    old = [blobs / f"{n:064d}.tflite" for n in range(5)]
    for path in old:  # 500 KB of models from deploys two hours ago, on a 512 KB disk
        path.write_bytes(os.urandom(100_000))
        os.utime(path, (time.time() - 7200,) * 2)
    target = load_target("loopback").model_copy(update={"workdir": str(tiny_disk)})
    record = deploy(target, run_dir=directory, out=tmp_path / "r.json").result
    assert record["status"] == "passed" and not any(path.exists() for path in old)
    made_room = record["transfer"]["made_room"]
    assert len(made_room) == 1 and made_room[0]["removed_files"] == 5 and made_room[0]["removed_bytes"] == 500_000
    assert set(record["transfer"]["sent"]) == {"agent", "model", "eval data", "reference outputs"}
    assert record["transfer"]["board_cache"]["files"] == 4  # what this deploy used, and nothing else


def test_targets_check_without_the_hosts_key_says_how_to_record_it(loopback_env: dict, tmp_path: Path) -> None:
    env = {**loopback_env, "EDGEPIPE_LOOPBACK_KNOWN_HOSTS": str(tmp_path / "known_hosts")}
    done = run_cli("targets", "check", "loopback", env=env)
    assert done.returncode == 10, done.stdout + done.stderr
    hint = next(line for line in done.stderr.splitlines() if line.startswith("hint:"))
    assert "ssh-keyscan" in hint and "agent install" not in hint, hint


def test_an_ssh_target_without_a_user_logs_in_as_you(tmp_path: Path) -> None:
    """As ssh(1) does; the shipped rpi4 target relies on it (Raspberry Pi OS has no default 'pi' user)."""
    import getpass

    from edgepipe.config.target import Target
    from edgepipe.targets import load_target

    target = Target(name="b", transport="ssh", host="board.local", key=tmp_path / "k")
    assert target.user == getpass.getuser()
    assert load_target("rpi4").user == os.environ.get("EDGEPIPE_RPI4_USER", getpass.getuser())
