"""The device agent on this machine, through the local transport: protocol, measurements, sandbox, errors.

Every model here is real (an optimized int8 model from TF-MOT, broken copies of it, a model too big for its
memory limit) and every run goes through the real agent file, its sandboxed child and the LiteRT runtime.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from malformed import malformed_models

from edgepipe.config.target import MeasureSettings, Target
from edgepipe.data import read_eval_data
from edgepipe.deployment.agent import AGENT_SOURCE, agent_info, build_archive
from edgepipe.deployment.job import build_job, run_job
from edgepipe.errors import AgentError
from edgepipe.provenance import sha256_file
from edgepipe.transport.local import LocalTransport

pytestmark = pytest.mark.slow

LOCAL = Target(name="local", transport="local")
QUICK = MeasureSettings(warmup_runs=2, runs=50, min_seconds=0, max_runs=200, time_limit_s=60)


def agent_job(model: Path, data: Path | None = None, **changes: Any) -> dict[str, Any]:
    measure = QUICK.model_copy(update={k: v for k, v in changes.items() if k in QUICK.model_fields})
    job = build_job(LOCAL, measure, str(model), str(data) if data else None)
    job.update({k: v for k, v in changes.items() if k not in QUICK.model_fields})
    return job


def run_agent(job: dict[str, Any], deadline: float = 120) -> dict[str, Any]:
    """Through the one file a board gets (the .pyz); the host's own reference runs use the source folder."""
    return run_job(LocalTransport(), sys.executable, str(agent_info().path), job, deadline)


def test_the_board_gets_one_self_contained_file_built_the_same_every_time(
    optimized_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """The .pyz alone, copied to an empty directory under another name, answers and measures (its sandboxed child
    starts from that copy); built again from the same source it has the same bytes, so the hash the board caches
    it under does not change from one host or run to the next."""
    info = agent_info()
    assert build_archive() == info.path.read_bytes() and sha256_file(info.path) == info.sha256
    alone = tmp_path / "empty" / "agent.pyz"
    alone.parent.mkdir()
    alone.write_bytes(info.path.read_bytes())
    done = subprocess.run([sys.executable, "-I", str(alone), "version"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["agent_version"] == info.version, done.stderr
    directory, _ = optimized_run
    result = run_job(LocalTransport(), sys.executable, str(alone), agent_job(directory / "model.tflite"), 120)
    assert result["status"] == "ok" and result["timing"]["latency_ms"]["count"] >= 50, result.get("error")


def test_result_has_latency_memory_accuracy_and_board(optimized_run: tuple[Path, dict]) -> None:
    directory, optimize = optimized_run
    result = run_agent(agent_job(directory / "model.tflite", directory / "eval.npz"))
    assert result["status"] == "ok" and result["error"] is None
    assert result["protocol"] == "edgepipe.result/1" and result["agent_version"] == agent_info().version
    latency, samples = result["timing"]["latency_ms"], result["timing"]["samples_ms"]
    assert latency["count"] == len(samples) >= 50
    assert latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert latency["p50"] == pytest.approx(float(np.percentile(samples, 50)))
    assert latency["std"] == pytest.approx(float(np.std(samples, ddof=1)))
    assert len(result["timing"]["warmup_ms"]) == 2 and result["timing"]["load_ms"] > 0
    hwm = result["memory"]["vmhwm_kb"]
    assert 0 < hwm["before_load"] <= hwm["after_load"] <= hwm["after_runs"]
    # The same test split, the same runtime: the agent's accuracy is the host-side TFLite accuracy of optimize.
    assert result["accuracy"]["accuracy"] == pytest.approx(optimize["final"]["accuracy"], abs=1e-6)
    assert result["accuracy"]["samples"] == optimize["eval_data"]["samples"]
    board = result["board"]
    assert board["machine"] == os.uname().machine and board["cores"] == os.cpu_count()
    assert board["python"] == sys.version.split()[0] and board["emulated"] is False
    assert result["runtime"]["name"] == "ai_edge_litert" and result["runtime"]["threads"] == 1
    assert result["model"]["inputs"][0]["dtype"] == "int8"


def test_agreement_with_reference_outputs_and_saved_outputs(optimized_run: tuple[Path, dict], tmp_path: Path) -> None:
    directory, _ = optimized_run
    outputs = tmp_path / "outputs.npz"
    first = run_agent(agent_job(directory / "model.tflite", directory / "eval.npz", outputs=str(outputs)))
    with np.load(outputs) as saved:
        assert saved.files == ["o_0"]
        raw = saved["o_0"]
    (x,), (y,) = read_eval_data(directory / "eval.npz")
    assert raw.dtype == np.int8 and raw.shape == (len(x), 10)
    assert first["accuracy"]["correct"] == int((raw.argmax(1) == y).sum())
    assert first["accuracy"]["task"] == "classification" and first["accuracy"]["metric"] == "accuracy"
    # Reference outputs with one sample's answer moved: agreement must see exactly that one.
    changed = raw.copy()
    changed[0] = np.roll(changed[0], 1)
    np.savez(tmp_path / "reference.npz", o_0=changed)
    second = run_agent(
        agent_job(directory / "model.tflite", directory / "eval.npz", reference=str(tmp_path / "reference.npz"))
    )
    agreement = second["accuracy"]["agreement"]
    assert agreement["top1"] == pytest.approx(1 - 1 / len(x))
    assert agreement["max_abs_diff"] == float(np.abs(changed.astype(int) - raw.astype(int)).max()) > 0


def test_threads_and_xnnpack_switch_are_honoured(optimized_run: tuple[Path, dict]) -> None:
    directory, _ = optimized_run
    result = run_agent(agent_job(directory / "model.tflite", threads=2, xnnpack=False))
    assert result["status"] == "ok"
    assert result["runtime"]["threads"] == 2 and result["runtime"]["xnnpack"] is False
    assert "XNNPACK" not in " ".join(result["sandbox"]["stderr_tail"])  # the delegate was not applied


def test_unknown_job_protocol_is_refused_with_a_clear_message(optimized_run: tuple[Path, dict]) -> None:
    directory, _ = optimized_run
    job = {**agent_job(directory / "model.tflite"), "protocol": "edgepipe.job/99"}
    with pytest.raises(AgentError, match=r"edgepipe.job/99.*not supported.*speaks edgepipe.job/1"):
        run_agent(job)
    done = subprocess.run(
        [sys.executable, str(AGENT_SOURCE), "run", "-"], input=json.dumps(job), capture_output=True, text=True
    )
    assert done.returncode == 2 and json.loads(done.stdout)["error"]["class"] == "BadJob"


@pytest.mark.parametrize(
    "name", ["empty", "truncated", "random-bytes", "wrong-identifier", "garbage-with-identifier", "unknown-op"]
)
def test_malformed_models_are_classified_and_the_next_job_passes(
    optimized_run: tuple[Path, dict], tmp_path: Path, name: str
) -> None:
    directory, _ = optimized_run
    content, expected = malformed_models((directory / "model.tflite").read_bytes())[name]
    broken = tmp_path / f"{name}.tflite"
    broken.write_bytes(content)
    started = time.monotonic()
    result = run_agent(agent_job(broken, directory / "eval.npz"))
    assert result["status"] == "error" and result["error"]["class"] == expected, result["error"]
    assert time.monotonic() - started < QUICK.time_limit_s
    assert run_agent(agent_job(directory / "model.tflite"))["status"] == "ok"


def test_time_limit_kills_the_sandboxed_child(optimized_run: tuple[Path, dict]) -> None:
    directory, _ = optimized_run
    started = time.monotonic()
    result = run_agent(agent_job(directory / "model.tflite", min_seconds=60, max_runs=10**9, time_limit_s=2))
    assert result["error"]["class"] == "ModelTimeout" and time.monotonic() - started < 30
    assert result["sandbox"]["signal"] == "SIGKILL"
    assert not Path(f"/proc/{result['sandbox']['pid']}").exists()


def test_a_crashing_interpreter_is_classified_and_the_agent_still_answers(optimized_run: tuple[Path, dict]) -> None:
    """The sandboxed child dies from SIGSEGV in the middle of its timed runs, as a crashing kernel would."""
    directory, _ = optimized_run
    job = agent_job(directory / "model.tflite", min_seconds=60, max_runs=10**9)
    agent = subprocess.Popen(
        [sys.executable, str(AGENT_SOURCE), "run", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert agent.stdin is not None and agent.stderr is not None
    agent.stdin.write(json.dumps(job))
    agent.stdin.close()
    for line in agent.stderr:  # wait until the child is measuring
        if '"phase": "measure"' in line:
            break
    child = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    assert len(child) == 1
    os.kill(int(child[0]), signal.SIGSEGV)
    assert agent.stdout is not None
    result = json.loads(agent.stdout.read())
    agent.wait(60)
    assert agent.returncode == 0 and result["status"] == "error"
    assert result["error"]["class"] == "ModelCrash" and "SIGSEGV" in result["error"]["message"]
    assert result["sandbox"]["signal"] == "SIGSEGV" and "board" in result


def test_memory_limit_is_enforced_and_classified(tmp_path: Path) -> None:
    from edgepipe.keras_compat import tf

    tensorflow = tf()

    @tensorflow.function(input_signature=[tensorflow.TensorSpec([1, 4096, 4096], tensorflow.float32)])
    def scale(x: Any) -> Any:
        return tensorflow.nn.relu(x * 2.0 + 1.0)

    converter = tensorflow.lite.TFLiteConverter.from_concrete_functions([scale.get_concrete_function()], scale)
    model = tmp_path / "big.tflite"
    model.write_bytes(converter.convert())  # 3 tensors of 64 MB each
    small = run_agent(agent_job(model, runs=2, memory_limit_mb=256))
    assert small["error"]["class"] == "ModelOutOfMemory", small["error"]
    roomy = run_agent(agent_job(model, runs=2, memory_limit_mb=4096))
    assert roomy["status"] == "ok" and roomy["memory"]["vmhwm_kb"]["after_runs"] > 192 * 1024


def test_probe_reports_runtimes_and_free_disk(tmp_path: Path) -> None:
    from importlib import metadata

    done = subprocess.run([sys.executable, str(AGENT_SOURCE), "probe", str(tmp_path)], capture_output=True, text=True)
    report = json.loads(done.stdout)
    assert report["runtimes"]["ai_edge_litert"] == metadata.version("ai-edge-litert")
    assert report["free_disk_bytes"] > 0 and report["board"]["machine"] == os.uname().machine


def test_the_agent_file_is_parsed_once_and_by_one_thread_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A farm's board workers ask for the agent's version together. ``ast.parse`` in two threads at once can fail
    on CPython before 3.11.8 (python/cpython#106905; a CI farm run lost an attempt to it), so the agent's source
    is parsed by one thread at a time, and once per process."""
    import ast
    import threading
    import time

    from edgepipe.deployment import agent as agent_module

    inside, most, calls = 0, 0, 0
    guard = threading.Lock()
    real = ast.parse

    def watched(*args: Any, **kwargs: Any) -> Any:
        nonlocal inside, most, calls
        with guard:
            inside, calls = inside + 1, calls + 1
            most = max(most, inside)
        time.sleep(0.05)  # long enough for every other thread to arrive
        try:
            return real(*args, **kwargs)
        finally:
            with guard:
                inside -= 1

    monkeypatch.setattr(ast, "parse", watched)
    agent_module._read_agent_info.cache_clear()
    found: list[Any] = []
    workers = [threading.Thread(target=lambda: found.append(agent_module.agent_info())) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert (most, calls) == (1, 1)
    assert len(found) == 4 and len({info.version for info in found}) == 1


def test_this_machine_keeps_the_agent_builds_used_last(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each agent source run leaves a .pyz in edgepipe's cache here; the eight used last stay, the rest go."""
    from edgepipe.deployment import agent as agent_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = tmp_path / "edgepipe" / "agent-build"
    folder.mkdir(parents=True)
    older = [folder / f"edgepipe_agent-1.{n}.0-{n:012d}.pyz" for n in range(10)]
    for age, build in enumerate(older):
        build.write_bytes(b"an earlier agent")
        os.utime(build, (time.time() - 3600 * (age + 1),) * 2)  # older[0] used last
    agent_module._read_agent_info.cache_clear()
    try:
        current = agent_module.agent_info().path
    finally:
        agent_module._read_agent_info.cache_clear()
    assert current.parent == folder and current.read_bytes() == build_archive()
    assert sorted(folder.iterdir()) == sorted([current, *older[:7]])


def test_changed_answers_are_told_apart_into_near_ties_and_real_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed top-1 answer where the host preferred its own by at most twice the step tolerance is a near-tie
    (rounding within the tolerance can flip it) and does not count against min_top1_agreement; a change beyond
    that does. The agent reports each changed answer's host margin; the host decides."""
    from edgepipe.config.target import ParitySettings
    from edgepipe.deployment.checks import answers_beyond_near_ties, parity_check, parity_gap

    monkeypatch.syspath_prepend(str(AGENT_SOURCE))
    from edgepipe_agent.evaluate import agreement

    host = np.array([[10, 3, 0], [10, 9, 0], [20, 5, 0], [0, 0, 7]], dtype=np.int8)
    board = np.array([[11, 3, 0], [9, 10, 0], [5, 20, 0], [0, 1, 7]], dtype=np.int8)  # 1: a near-tie; 2: not
    labels = np.array([0, 1, 0, 2])  # the host is right on 0, 2, 3; the board on 1, 3
    found = agreement(np, "classification", [host], [board], [labels])
    assert found == {
        "top1": 0.5,
        "top1_changed_margins": [[1.0, 15.0]],
        "top1_discordant": [[1, 1]],  # sample 2 turned wrong, sample 1 turned right
        "top1_discordant_samples": [1, 1],  # one answer per sample: the same counts
        "top1_answers": [4],  # one answer per sample (a segmentation output answers per position)
        "top1_changed": [2],
        "max_abs_diff": 15.0,
    }
    assert answers_beyond_near_ties(found, 4, steps=1) == (0.75, 1)  # the margin-15 change counts
    assert answers_beyond_near_ties(found, 4, steps=8) == (1.0, 2)  # within 2 x 8 steps: both are near-ties
    assert answers_beyond_near_ties({**found, "top1_changed_margins": None}, 4, steps=8) == (0.5, 0)  # old agent
    assert agreement(np, "regression", [host], [board], [board])["top1_discordant"] is None
    # the verdict: within 16 steps both changes are near-ties and pass; at 4 the margin-15 change counts
    inputs = SimpleNamespace(host_accuracy=0.5, host_score={"value": 0.5}, host={})
    device = {"accuracy": {"samples": 4, "accuracy": 0.5, "value": 0.5, "agreement": found}, "board": {}}
    lenient = Target(name="emu", transport="local", parity=ParitySettings(max_abs_diff=16, min_top1_agreement=0.99))
    verdict = parity_check(inputs, device, lenient)  # type: ignore[arg-type]
    assert verdict["passed"] and (verdict["top1_near_ties"], verdict["top1_agreement_beyond_near_ties"]) == (2, 1.0)
    strict = lenient.model_copy(update={"parity": ParitySettings(max_abs_diff=4, min_top1_agreement=0.99)})
    verdict = parity_check(inputs, device, strict)  # type: ignore[arg-type]
    assert not verdict["passed"] and verdict["top1_agreement_beyond_near_ties"] == 0.75
    assert "top-1 agreement 0.7500 beyond near-ties (at least 0.99)" in parity_gap(verdict)
