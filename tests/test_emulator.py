"""Emulated boards on real parts: arm64 Debian packages from the mirror, aarch64 wheels from the registry,
QEMU user-mode emulation (Debian qemu-user-static), and the same agent and job as a real board.

The image is built once per session into a temporary emulator directory (about 20 s with warm caches).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from edgepipe.config.target import ParitySettings
from edgepipe.deployment import deploy
from edgepipe.emulator.image import build, emulator_dir, image_for
from edgepipe.errors import AccuracyMismatch
from edgepipe.targets import load_target

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulators")


@pytest.fixture
def emulator_env(emulators: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"EDGEPIPE_EMULATOR_DIR": str(emulators)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="session")
def built_image(emulators: Path) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEPIPE_EMULATOR_DIR", str(emulators))
        image, cached = build(load_target("rpi4-emu").emulator)  # type: ignore[arg-type]
    assert not cached
    return image


def test_build_makes_a_checked_aarch64_image_and_a_second_build_reuses_it(built_image: Any, emulator_env: dict) -> None:
    manifest = built_image.manifest
    assert manifest["check"]["machine"] == "aarch64" and manifest["check"]["python"].startswith("3.11")
    assert {"numpy", "tflite_runtime"} <= set(manifest["check"]["packages"])
    assert any(name.startswith("libc6_") and name.endswith("_arm64.deb") for name in manifest["debian_packages"])
    assert not list(emulator_dir().glob(".*partial*"))
    done = run_cli("emulator", "build", "rpi4", env=emulator_env)
    assert done.returncode == 0 and "already built" in done.stdout
    assert image_for(load_target("rpi4-emu")).manifest["created"] == manifest["created"]  # not rebuilt
    listing = run_cli("emulator", "list", env=emulator_env)
    assert "rpi4-emu" in listing.stdout and "yes" in listing.stdout


def test_deploy_to_the_emulated_board_matches_the_host(
    built_image: Any, emulator_env: dict, optimized_run: tuple[Path, dict], tmp_path: Path
) -> None:
    directory, optimize = optimized_run
    run_copy = tmp_path / "run"
    shutil.copytree(directory, run_copy)
    done = run_cli("deploy", "--target", "rpi4-emu", str(run_copy), env=emulator_env)
    assert done.returncode == 0, done.stderr
    assert (
        "EMULATED" in done.stdout and "not the board's speed" in done.stdout and "parity with the host" in done.stdout
    )
    result = json.loads((run_copy / "deploy-rpi4-emu.json").read_text())
    device = result["device"]
    assert device["board"]["machine"] == "aarch64" and device["board"]["emulated"] is True
    assert result["target"]["emulated"] is True
    assert device["runtime"] == {
        "name": "tflite_runtime",
        "version": built_image.manifest["check"]["packages"]["tflite_runtime"],
        "threads": 1,
        "xnnpack": True,
    }
    assert device["accuracy"]["accuracy"] == pytest.approx(optimize["final"]["accuracy"], abs=1e-6)
    parity = result["checks"]["parity"]
    assert parity["passed"] is True and parity["host"]["machine"] != parity["device"]["machine"]
    assert parity["host"]["accuracy"] == parity["device"]["accuracy"]
    assert parity["max_abs_diff"] <= 1 and parity["top1_agreement"] >= 0.99
    # every changed answer (if any) is a near-tie: within 1 step per value, the host's margin is at most 2 steps
    changed = round((1 - parity["top1_agreement"]) * device["accuracy"]["samples"])
    assert parity["top1_near_ties"] == changed and parity["top1_agreement_beyond_near_ties"] == 1.0
    assert all(0 <= m <= 2 for m in device["accuracy"]["agreement"]["top1_changed_margins"][0])


def test_parity_beyond_tolerance_fails_the_deploy(
    built_image: Any,
    emulator_env: dict,
    optimized_run: tuple[Path, dict],
    task_runs: dict[str, tuple[Path, dict]],
    tmp_path: Path,
) -> None:
    """Demand more agreement than the emulated board gave: the same deploy must then fail, naming the figures.

    The digits classifier differs by a step somewhere (aarch64 tflite_runtime 2.14 against x86 LiteRT 2.3); should
    a runtime ever compute it exactly alike, the autoencoder's error, hundreds of outputs per sample, still moves.
    """
    target = load_target("rpi4-emu")
    directory, _ = optimized_run
    measured = deploy(target, run_dir=directory, out=tmp_path / "first.json").result["checks"]["parity"]
    if measured["max_abs_diff"] > 0:
        stricter = ParitySettings(max_abs_diff=measured["max_abs_diff"] - 1, min_top1_agreement=1.0)
    else:
        directory = task_runs["autoencoder"][0]
        measured = deploy(target, run_dir=directory, out=tmp_path / "first.json").result["checks"]["parity"]
        assert measured["error_delta"] != 0, "the emulated board computed both models exactly like the host"
        stricter = ParitySettings(max_error_delta=abs(measured["error_delta"]) / 2)
    with pytest.raises(AccuracyMismatch, match="parity tolerance") as failed:
        deploy(target.model_copy(update={"parity": stricter}), run_dir=directory, out=tmp_path / "strict.json")
    assert failed.value.exit_code == 26
    record = json.loads((tmp_path / "strict.failed.json").read_text())
    assert record["checks"]["parity"]["passed"] is False and not (tmp_path / "strict.json").exists()


def test_targets_check_of_the_emulated_board_reports_the_images_python(
    built_image: Any, emulator_env: dict, tmp_path: Path
) -> None:
    done = run_cli("targets", "check", "rpi4-emu", env={**emulator_env, "EDGEPIPE_LOCAL_WORKDIR": str(tmp_path)})
    python = next(line for line in done.stdout.splitlines() if line.strip().startswith("python "))
    assert "/usr/bin/python3.11 3.11." in python and "(in the emulated image)" in python, done.stdout
    assert sys.executable not in python, "the host's Python was reported as the board's"


def test_missing_qemu_and_unbuilt_image_are_clear_errors(emulator_env: dict, tmp_path: Path) -> None:
    env = {**emulator_env, "EDGEPIPE_QEMU": "/nonexistent/qemu-aarch64-static"}
    done = run_cli("emulator", "build", "rpi4", env=env)
    assert done.returncode == 10 and "is not installed" in done.stderr and "qemu-user-static" in done.stderr
    empty = {"EDGEPIPE_EMULATOR_DIR": str(tmp_path / "none")}
    model = tmp_path / "m.tflite"
    model.write_bytes(b"")
    unbuilt = run_cli("deploy", "--target", "rpi4-emu", "--model", str(model), env=empty)
    assert unbuilt.returncode == 10 and "edgepipe emulator build rpi4" in unbuilt.stderr
    check = run_cli("targets", "check", "rpi4-emu", env=empty)
    assert check.returncode == 10 and "hint: edgepipe emulator build rpi4" in check.stderr, check.stderr
    assert "agent install" not in check.stderr


def test_unreachable_mirror_fails_the_build_and_leaves_no_image(tmp_path: Path) -> None:
    env = {"EDGEPIPE_EMULATOR_DIR": str(tmp_path), "EDGEPIPE_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"}
    done = run_cli("emulator", "build", "rpi4", env=env)
    assert done.returncode == 10 and "apt-get update" in done.stderr and "hint:" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_report_labels_emulated_latency_and_shows_parity(
    built_image: Any, emulator_env: dict, optimized_run: tuple[Path, dict], tmp_path: Path
) -> None:
    directory, _ = optimized_run
    run_copy = tmp_path / "run"
    shutil.copytree(directory, run_copy)
    assert run_cli("deploy", "--target", "rpi4-emu", str(run_copy), env=emulator_env).returncode == 0
    html, md, data = tmp_path / "r.html", tmp_path / "r.md", tmp_path / "r.json"
    done = run_cli("report", str(run_copy), "--html", str(html), "--md", str(md), "--json", str(data))
    assert done.returncode == 0, done.stderr
    document = json.loads(data.read_text())
    (target,) = document["targets"]
    assert target["name"] == "rpi4-emu" and target["emulated"] is True and target["machine"] == "aarch64"
    (deployment,) = next(s for s in document["stages"] if s["final"])["deployments"]
    assert deployment["emulated"] is True and deployment["parity"]["passed"] is True
    page = html.read_text()
    assert 'id="emulation-note"' in page and "not the board's" in page
    assert 'id="parity-table"' in page and "tflite_runtime" in page and "(EMULATED" in page  # the latency plot
    assert "rpi4-emu †" in md.read_text() and "Parity rpi4-emu: pass" in md.read_text()
    assert "EMULATED" in done.stdout and "not the board's" in done.stdout


@pytest.mark.parametrize("name", ["autoencoder", "two_heads"])
def test_models_beyond_single_output_classifiers_deploy_to_the_emulated_board(
    built_image: Any, emulator_env: dict, task_runs: dict, name: str, tmp_path: Path
) -> None:
    """The aarch64 tflite_runtime board scores a reconstruction model and a two-input, two-output model as the
    host does (the agent reads the interpreter's input and output order on both)."""
    directory, optimize = task_runs[name]
    run_copy = tmp_path / "run"
    shutil.copytree(directory, run_copy)
    done = run_cli("deploy", "--target", "rpi4-emu", str(run_copy), "--repeats", "1", env=emulator_env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((run_copy / "deploy-rpi4-emu.json").read_text())
    block, parity = result["device"]["accuracy"], result["checks"]["parity"]
    assert result["device"]["board"]["machine"] == "aarch64"
    host, board = parity["host"]["value"], parity["device"]["value"]
    assert host == pytest.approx(optimize["final"]["metric"]["value"], abs=1e-6)
    assert parity["passed"] is True
    if name == "autoencoder":  # judged by its error: the runtimes round a few values differently
        assert parity["top1_agreement"] is None and parity["error_delta"] == pytest.approx(
            (board - host) / host, abs=1e-6
        )
        assert abs(parity["error_delta"]) <= parity["tolerance"]["max_error_delta"]
    else:  # a classifier: the same answers on both, output by output
        assert parity["top1_agreement"] == 1.0 and board == pytest.approx(host)
        assert len(block["per_output"]) == 2
    report = run_cli("report", str(run_copy))
    assert report.returncode == 0, report.stderr
    assert "rpi4-emu" in report.stdout and "EMULATED" in report.stdout


def test_a_profile_on_the_emulated_board_is_labelled_emulated(
    built_image: Any, emulator_env: dict, optimized_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """The agent's windows run under QEMU with tflite_runtime too; the figures are marked as not the board's."""
    from edgepipe.tflite_model import TfliteModel

    directory, _ = optimized_run
    out = tmp_path / "profile.json"
    quick = ("--repeats", "1", "--min-seconds", "0.2", "--runs", "50", "--no-history", "-o", str(out))
    done = run_cli("deploy", "--target", "rpi4-emu", str(directory), "--profile", *quick, env=emulator_env)
    assert done.returncode == 0, done.stderr
    profile = json.loads(out.read_text())["profile"]
    assert profile["emulated"] is True and "error" not in profile
    ops = TfliteModel.read(directory / "model.tflite").ops
    assert [row["op"] for row in profile["ops"]] == [op.name for op in ops]
    assert "slowest operators" in done.stdout and "emulated: not the board's speed" in done.stdout


def test_a_mirror_that_stops_answering_ends_the_build_in_time(tmp_path: Path) -> None:
    """apt's timeouts are per connection: a mirror that accepts and then says nothing holds apt-get update for
    minutes. The build step is stopped after --step-timeout, with every process it started (apt's http method
    closes its connections), and nothing is left behind."""
    mirror = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with mirror:
            mirror.settimeout(60)
            while len(accepted) < 8:
                try:
                    accepted.append(mirror.accept()[0])  # and never answer
                except OSError:
                    return

    threading.Thread(target=accept, daemon=True).start()
    env = {"EDGEPIPE_EMULATOR_DIR": str(tmp_path / "emulators"),
           "EDGEPIPE_DEBIAN_MIRROR": f"http://127.0.0.1:{mirror.getsockname()[1]}/debian"}  # fmt: skip
    started = time.monotonic()
    done = run_cli("emulator", "build", "rpi4", "--step-timeout", "3", env=env)
    assert time.monotonic() - started < 60
    assert done.returncode == 10, done.stderr
    assert "apt-get update" in done.stderr and "did not finish within 3 s and was stopped" in done.stderr
    assert "--step-timeout" in done.stderr and not list((tmp_path / "emulators").iterdir())
    assert accepted, "apt never reached the mirror"
    for connection in accepted:  # closed by apt's http method, which went down with apt-get
        connection.settimeout(10)  # a connection still open raises TimeoutError here
        while connection.recv(65536):
            pass
    leftover = subprocess.run(["pgrep", "-f", f"apt-get.*{tmp_path}"], capture_output=True, text=True).stdout
    assert leftover == ""


def test_the_emulators_crash_on_a_dense_over_a_sequence_is_named_as_the_emulators(
    built_image: Any, emulator_env: dict, tmp_path: Path
) -> None:
    """QEMU 7.2 user mode crashes inside ruy's int8 matrix multiply on a FULLY_CONNECTED over several rows (a
    Dense on a sequence, as every attention block has), a model the host runs: the hint says it is the
    emulator's limit, not "rebuild the model"."""
    import numpy as np

    from edgepipe.convert.tflite import to_int8_tflite
    from edgepipe.keras_compat import keras

    k = keras()
    steps = k.layers.Input((16, 32))
    model = k.Model(steps, k.layers.Dense(10)(k.layers.Flatten()(k.layers.Dense(32)(steps))))
    (tmp_path / "sequence.tflite").write_bytes(to_int8_tflite(model, np.random.default_rng(0).random((32, 16, 32))))
    done = run_cli("deploy", "--target", "rpi4-emu", "--model", str(tmp_path / "sequence.tflite"), "--repeats", "1",
                   "--no-history", env=emulator_env)  # fmt: skip
    assert done.returncode == 23, done.stderr[-3000:]
    said = " ".join(done.stderr.split())
    assert "SIGSEGV" in said and "QEMU user mode" in said and "measure this model on the board" in said
