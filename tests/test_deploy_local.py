"""``edgepipe deploy --target local``: the embedded default, through the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def local_env(tmp_path: Path) -> dict[str, str]:
    return {"EDGEPIPE_LOCAL_WORKDIR": str(tmp_path / "board")}


def test_deploy_local_writes_a_result_matching_the_host(
    optimized_run: tuple[Path, dict], local_env: dict, tmp_path: Path
) -> None:
    directory, optimize = optimized_run
    run_copy = tmp_path / "run"
    shutil.copytree(directory, run_copy)
    done = run_cli("deploy", "--target", "local", str(run_copy), "--runs", "300", env=local_env)
    assert done.returncode == 0, done.stderr
    result = json.loads((run_copy / "deploy-local.json").read_text())
    assert result["schema"] == "edgepipe.deploy/1" and result["status"] == "passed"
    latency = result["device"]["timing"]["latency_ms"]
    assert latency["count"] >= 300 and latency["p50"] <= latency["p99"]
    assert result["device"]["memory"]["vmhwm_kb"]["after_load"] > 0
    assert result["checks"]["device_accuracy"] == pytest.approx(optimize["final"]["accuracy"], abs=1e-6)
    assert result["checks"]["host_accuracy"] == result["checks"]["device_accuracy"]
    assert result["model"]["recipe"] == "tiny-chain" and result["provenance"]["agent"]["version"]
    for line in ("latency p50 / p90 / p99", "peak RSS (VmHWM)", "accuracy", "wrote"):
        assert line in done.stdout
    for step in ("connecting to local", "sent model", "agent: warming up", "agent: measuring"):
        assert step in done.stderr


def test_any_tflite_file_without_data_measures_latency_only(
    optimized_run: tuple[Path, dict], local_env: dict, tmp_path: Path
) -> None:
    directory, _ = optimized_run
    model = tmp_path / "m.tflite"
    shutil.copyfile(directory / "model.tflite", model)
    done = run_cli("deploy", "--model", str(model), env=local_env)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "m.deploy-local.json").read_text())
    assert result["device"]["timing"]["latency_ms"]["count"] > 0 and "accuracy" not in result["device"]


def test_nothing_to_deploy_and_missing_files_are_config_errors(
    optimized_run: tuple[Path, dict], tmp_path: Path
) -> None:
    directory, _ = optimized_run
    assert run_cli("deploy").returncode == 2
    missing = run_cli("deploy", "--model", str(tmp_path / "nope.tflite"))
    assert missing.returncode == 2 and "file not found" in missing.stderr
    not_a_run = run_cli("deploy", str(tmp_path))
    assert not_a_run.returncode == 2 and "not a run directory" in not_a_run.stderr
    both = run_cli("deploy", str(directory), "--model", str(directory / "model.tflite"))
    assert both.returncode == 2 and "not both" in both.stderr
    zero = run_cli("deploy", "--runs", "0", "--model", str(directory / "model.tflite"))
    assert zero.returncode == 2 and "runs: Input should be greater than or equal to 1" in zero.stderr
    unknown = run_cli("deploy", "--target", "rpi5", "--model", str(directory / "model.tflite"))
    assert unknown.returncode == 2 and "unknown target 'rpi5'" in unknown.stderr


def test_model_failure_exit_code_and_failed_record_keep_the_good_result(
    optimized_run: tuple[Path, dict], local_env: dict, tmp_path: Path
) -> None:
    directory, _ = optimized_run
    model = tmp_path / "m.tflite"
    shutil.copyfile(directory / "model.tflite", model)
    assert run_cli("deploy", "--model", str(model), env=local_env).returncode == 0
    good = (tmp_path / "m.deploy-local.json").read_text()
    model.write_bytes(model.read_bytes()[:100])  # the same path, now truncated
    done = run_cli("deploy", "--model", str(model), env=local_env)
    assert done.returncode == 21 and "InvalidModel" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "m.deploy-local.json").read_text() == good
    failed = json.loads((tmp_path / "m.deploy-local.failed.json").read_text())
    assert failed["status"] == "failed" and failed["error"]["class"] == "InvalidModel"


def _with_nan_input_scale(model: Path, out: Path) -> Path:
    """The same model with its input tensor's quantization scale overwritten by NaN in the flatbuffer."""
    import struct

    import numpy as np

    from edgepipe.tflite_model import TfliteModel

    content = model.read_bytes()
    parsed = TfliteModel.read(content)
    scale = struct.pack("<f", float(parsed.tensors[parsed.inputs[0]].scale[0]))
    assert content.count(scale) >= 1  # the input's and, sharing it, the reshape's
    out.write_bytes(content.replace(scale, struct.pack("<f", float("nan"))))
    assert np.isnan(TfliteModel.read(out).tensors[parsed.inputs[0]].scale[0])
    assert np.isnan(TfliteModel.read(str(out)).tensors[parsed.inputs[0]].scale[0])  # a path as a string: the file
    return out


def test_a_nan_quantization_scale_is_refused_before_anything_is_sent(
    optimized_run: tuple[Path, dict], local_env: dict, tmp_path: Path
) -> None:
    directory, _ = optimized_run
    broken = _with_nan_input_scale(directory / "model.tflite", tmp_path / "nan.tflite")
    done = run_cli("deploy", "--model", str(broken), "--data", str(directory / "eval.npz"), env=local_env)
    assert done.returncode == 5, done.stderr
    assert "unusable quantization scale" in done.stderr and "nan" in done.stderr
    assert not (tmp_path / "board").exists(), "something was sent to the board"


def test_board_settings_the_runtime_cannot_take_are_configuration_errors(
    optimized_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """Not exit 16 'the agent is broken': a memory limit too small for numpy and the runtime themselves, and a
    thread count no runtime takes, are the target's settings (exit 2, naming the setting)."""
    directory, _ = optimized_run
    low = tmp_path / "low.yaml"
    low.write_text(
        f"name: low\ntransport: local\nworkdir: {tmp_path / 'board'}\n"
        "measure: {memory_limit_mb: 64, runs: 5, min_seconds: 0, repeats: 1}\n"
    )
    done = run_cli("deploy", "--target", str(low), "--model", str(directory / "model.tflite"), "--no-history")
    assert done.returncode == 2, done.stderr
    assert "MemoryLimitTooLow" in done.stderr and "memory_limit_mb" in done.stderr
    many = tmp_path / "many.yaml"
    many.write_text(f"name: many\ntransport: local\nworkdir: {tmp_path / 'board'}\nthreads: 100000000000\n")
    refused = run_cli("deploy", "--target", str(many), "--model", str(directory / "model.tflite"), "--no-history")
    assert refused.returncode == 2 and "threads" in refused.stderr and "1024" in refused.stderr, refused.stderr


def test_the_board_keeps_what_was_used_last_within_the_targets_cache_limit(
    optimized_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """A farm deploying every commit's model fills a board's disk unless the cache is bounded: after each job
    the files used longest ago go, never what the job used (found files are touched) nor what was used in the
    last hour; ``agent clean`` trims on demand, ``--all`` empties it."""
    directory, _ = optimized_run
    board = tmp_path / "board"
    target = tmp_path / "small.yaml"
    target.write_text(
        f"name: small\ntransport: local\nworkdir: {board}\ncache_limit_mb: 0.01\n"
        "measure: {runs: 5, min_seconds: 0, repeats: 1}\n"
    )
    models = []
    for stage in ("stages/1-prune/model.tflite", "model.tflite"):
        models.append(tmp_path / stage.replace("/", "-"))
        shutil.copyfile(directory / stage, models[-1])

    def deploy(model: Path) -> dict:
        done = run_cli("deploy", "--target", str(target), "--model", str(model), "--data",
                       str(directory / "eval.npz"), "--no-history")  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(model.with_name(f"{model.stem}.deploy-small.json").read_text())

    def sizes() -> dict[Path, int]:
        return {path: path.stat().st_size for path in board.rglob("*") if path.is_file()}

    def age_all() -> None:
        for path in sizes():
            os.utime(path, (time.time() - 7200,) * 2)

    first = deploy(models[0])
    before = sizes()
    assert len(before) == 4 and first["transfer"]["board_cache"]["removed_files"] == 0  # all four in use
    age_all()
    second = deploy(models[1])
    after = sizes()
    shared = {Path(second["transfer"]["agent_path"]), board / "blobs" / f"{second['data']['sha256']}.npz"}
    assert set(before) & set(after) == shared  # found by the second deploy, so touched: kept though old
    gone = set(before) - set(after)
    assert Path(first["transfer"]["model_path"]) in gone and len(gone) == 2  # the first model and its outputs
    trimmed = second["transfer"]["board_cache"]
    assert trimmed == {"files": 4, "bytes": sum(after.values()), "removed_files": 2,
                       "removed_bytes": sum(before[path] for path in gone), "limit_bytes": 10485}  # fmt: skip

    # Used in the last hour: kept over the limit (another deploy may be about to read it), and said so.
    third = deploy(models[0])
    assert set(sizes()) > set(after) and third["transfer"]["board_cache"]["removed_files"] == 0
    check = run_cli("targets", "check", str(target))
    assert check.returncode == 0, check.stderr
    said = " ".join(check.stdout.split())  # the table wraps long cells
    assert "6 files in" in said and "over its 0.01 MB limit" in said, check.stdout

    kept = run_cli("agent", "clean", "--target", str(target))
    assert kept.returncode == 0 and "removed 0 files" in kept.stdout, kept.stdout + kept.stderr
    age_all()
    last_used = min(sizes(), key=sizes().__getitem__)  # the smallest file, used last: it alone fits the limit
    os.utime(last_used, (time.time() - 3700,) * 2)
    limit_mb = (sizes()[last_used] + 0.5) / 2**20  # exactly its size (the files' sizes follow the model's)
    target.write_text(target.read_text().replace("cache_limit_mb: 0.01", f"cache_limit_mb: {limit_mb!r}"))
    trim = run_cli("agent", "clean", "--target", str(target))
    assert trim.returncode == 0 and "removed 5 files" in trim.stdout, trim.stdout + trim.stderr
    assert set(sizes()) == {last_used}
    deploy(models[1])  # the four files it uses (the one left over is one of them, or used over an hour ago)
    emptied = run_cli("agent", "clean", "--target", str(target), "--all")
    assert emptied.returncode == 0 and "removed 4 files" in emptied.stdout, emptied.stdout + emptied.stderr
    assert sizes() == {}
