"""``edgepipe compare``: the verdict paths and exit codes, on real deploys to the local target.

The slowdown is real: the same model on a target whose XNNPACK delegate is switched off (about 13x slower for
the digits MLP of the presets here, far beyond this VM's 1.5x contended phases). The inconclusive run is real
too: the same model run by TensorFlow's tf.lite instead of ai-edge-litert.
"""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from statistics import median
from typing import Any

import pytest
from conftest import run_cli

from edgepipe.errors import ConfigError
from edgepipe.reporting.verdict import VerdictSettings, compare

pytestmark = pytest.mark.slow

LOCAL = """name: local
transport: local
workdir: {workdir}
xnnpack: {xnnpack}
runtime: {runtime}
measure: {{runs: 2000, min_seconds: 0, max_runs: 2000, repeats: {repeats}}}
"""


def local_target(folder: Path, workdir: Path, xnnpack: bool = True, runtime: str = "auto", repeats: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = LOCAL.format(workdir=workdir, xnnpack=str(xnnpack).lower(), runtime=runtime, repeats=repeats)
    (folder / "local.yaml").write_text(text)
    return folder


@pytest.fixture(scope="module")
def recorded(optimized_run: tuple[Path, dict], digits: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real deploys of one model, recorded with tags: baseline, slowed down, other runtime.

    The model is the digits MLP of the presets (256 hidden units; latency does not depend on the weights'
    values, so it is not trained): large enough that XNNPACK off is many times slower than this VM's noise.
    """
    from edgepipe.convert.tflite import to_int8_tflite
    from edgepipe.examples.digits import mlp

    directory, _ = optimized_run
    root = tmp_path_factory.mktemp("compare")
    recorded_output: dict[str, str] = {}
    x_train = digits["x_train"] if isinstance(digits, dict) else digits.x_train
    (root / "mlp.tflite").write_bytes(to_int8_tflite(mlp(hidden=256), x_train[:64], "int8"))
    env = {"EDGEPIPE_HISTORY": str(root / "h.sqlite")}
    model = ["--model", str(root / "mlp.tflite"), "--data", str(directory / "eval.npz")]
    tiny = ["--model", str(directory / "model.tflite"), "--data", str(directory / "eval.npz")]
    for tag, options, source, extra in (
        ("main", {}, model, []),
        ("slow", {"xnnpack": False}, model, []),
        ("tflite", {"runtime": "tensorflow", "repeats": 2}, model, []),
        ("paired-aa", {}, model, ["--baseline", "main"]),  # the same model, timed against itself
        ("tiny", {}, tiny, []),
        ("bigger", {}, model, ["--baseline", "tiny"]),  # 25x the MACs of the tiny model (about 2x the time)
    ):
        targets = local_target(root / tag, root / "board", **options)
        done = run_cli("deploy", *source, "--out", str(root / f"{tag}.json"), "--tag", tag, *extra,
                       env={**env, "EDGEPIPE_TARGETS_DIR": str(targets)})  # fmt: skip
        assert done.returncode == 0, done.stderr
        recorded_output[tag] = done.stdout
    return {"env": env, "root": root, "output": recorded_output}


def test_the_same_model_measured_paired_against_itself_passes(recorded: dict[str, Any]) -> None:
    """A/A, paired: the candidate deploy timed the baseline's model against itself in the same processes.
    (Two separate runs of one model are NOT asserted to pass: on this shared VM they raise a false alarm
    about one time in five; bench/regression_power.py measures both rates.)"""
    env, root = recorded["env"], recorded["root"]
    itself = run_cli("compare", "--baseline", "main", "--candidate", "paired-aa", "--junit",
                     str(root / "j.xml"), "--json", str(root / "aa.json"), env=env)  # fmt: skip
    assert itself.returncode == 0 and "verdict: pass" in itself.stdout, itself.stdout + itself.stderr
    latency = next(c for c in json.loads((root / "aa.json").read_text())["checks"] if c["name"] == "latency")
    assert latency["message"].startswith("the same model bytes on both sides, paired in one job")
    suite = ET.parse(root / "j.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    assert {case.get("name") for case in suite.iter("testcase")} >= {"latency", "accuracy", "board state"}


def test_a_slowdown_is_a_regression_naming_the_metric(recorded: dict[str, Any]) -> None:
    env, root = recorded["env"], recorded["root"]
    done = run_cli(
        "compare", "--baseline", "main", "--candidate", "slow", "--junit", str(root / "slow.xml"),
        "--json", str(root / "slow-verdict.json"), env=env,
    )  # fmt: skip
    assert done.returncode == 7 and "regression in latency" in done.stderr, done.stdout + done.stderr
    assert "target.xnnpack" in done.stdout  # what changed besides the numbers
    suite = ET.parse(root / "slow.xml").getroot().find("testsuite")
    failures = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]  # type: ignore[union-attr]
    assert failures == ["latency"]
    verdict = json.loads((root / "slow-verdict.json").read_text())
    assert verdict["status"] == "regression" and verdict["schema"] == "edgepipe.verdict/1"
    latency = next(c for c in verdict["checks"] if c["name"] == "latency")
    assert latency["change"] > 1.0  # more than twice as slow


def test_a_different_runtime_is_inconclusive_and_says_why(recorded: dict[str, Any]) -> None:
    env, root = recorded["env"], recorded["root"]
    done = run_cli("compare", "--baseline", "main", "--candidate", "tflite", "--junit", str(root / "i.xml"), env=env)
    assert done.returncode == 17 and "inconclusive" in done.stdout
    assert "runtime: 'ai_edge_litert' -> 'tensorflow'" in done.stderr
    suite = ET.parse(root / "i.xml").getroot().find("testsuite")
    assert suite is not None and int(suite.get("skipped", "0")) >= 1


def test_a_paired_measurement_of_the_same_model_passes(recorded: dict[str, Any]) -> None:
    """The pairing itself (five processes, each starting with the other model) and the verdict on the same bytes.
    The paired test's A/A false alarms on different files are measured by bench/regression_power.py."""
    env, root = recorded["env"], recorded["root"]
    record = json.loads((root / "paired-aa.json").read_text())
    paired = record["device"]["timing"]["baseline"]
    assert paired["error"] is None and len(paired["processes"]) == 5
    assert [p["first"] for p in paired["processes"]] == ["model", "baseline", "model", "baseline", "model"]
    assert all(len(p["model_ms"]) == len(p["baseline_ms"]) >= 2000 for p in paired["processes"])
    assert record["baseline"]["model_sha256"] == record["model"]["sha256"]
    assert "against the baseline" in recorded["output"]["paired-aa"]
    done = run_cli(
        "compare", "--baseline", "main", "--candidate", "paired-aa", "--json", str(root / "aa.json"), env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    latency = next(c for c in json.loads((root / "aa.json").read_text())["checks"] if c["name"] == "latency")
    assert latency["status"] == "pass" and "paired in one job" in latency["message"]


def test_a_slower_model_measured_paired_is_a_latency_regression(recorded: dict[str, Any]) -> None:
    env, root = recorded["env"], recorded["root"]
    done = run_cli("compare", "--baseline", "tiny", "--candidate", "bigger", "--json", str(root / "b.json"), env=env)
    assert done.returncode == 7, done.stdout + done.stderr
    checks = {c["name"]: c for c in json.loads((root / "b.json").read_text())["checks"]}
    assert checks["latency"]["status"] == "fail" and "paired in one job" in checks["latency"]["message"]
    assert checks["latency"]["change"] > 0.5  # measured: about +95 %
    # Against a run of another model the candidate's paired measurement does not apply: unpaired, and said so.
    other = run_cli("compare", "--baseline", "main", "--candidate", "bigger", "--json", str(root / "o.json"), env=env)
    latency = next(c for c in json.loads((root / "o.json").read_text())["checks"] if c["name"] == "latency")
    assert "separate jobs" in latency["message"]
    # Two separate jobs of the same model: pass or (a slow spell) regression; either way the code is the verdict.
    verdict = json.loads((root / "o.json").read_text())["status"]
    assert other.returncode == {"pass": 0, "regression": 7}[verdict], other.stdout + other.stderr


def test_a_baseline_whose_model_is_nowhere_is_a_clear_error(
    recorded: dict[str, Any], optimized_run: tuple[Path, dict], tmp_path: Path
) -> None:
    env, root = recorded["env"], recorded["root"]
    gone = tmp_path / "gone.tflite"
    gone.write_bytes((optimized_run[0] / "model.tflite").read_bytes())  # not the candidate's bytes
    targets = local_target(tmp_path / "t", tmp_path / "board")
    deployed = run_cli("deploy", "--model", str(gone), "--tag", "vanished",
                       env={**env, "EDGEPIPE_TARGETS_DIR": str(targets)})  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    gone.unlink()  # the baseline's file is gone here, and the next board never had it
    fresh = local_target(tmp_path / "fresh", tmp_path / "empty-board")
    done = run_cli("deploy", "--model", str(root / "mlp.tflite"), "--baseline", "vanished",
                   env={**env, "EDGEPIPE_TARGETS_DIR": str(fresh)})  # fmt: skip
    assert done.returncode == 2 and "neither on this machine nor on" in done.stderr and "hint:" in done.stderr


def test_unknown_baseline_is_a_config_error(recorded: dict[str, Any]) -> None:
    done = run_cli("compare", "--baseline", "no-such-tag", "--candidate", "main", env=recorded["env"])
    assert done.returncode == 2 and "no-such-tag" in done.stderr and "hint:" in done.stderr


def synthetic(medians: list[float], seed: int, n: int = 2000) -> dict[str, Any]:
    """A complete deploy record whose processes have these medians and log-normal jitter (for the statistics)."""
    rng = random.Random(seed)
    repeats = [{"samples_ms": [m * rng.lognormvariate(0, 0.05) for _ in range(n)]} for m in medians]
    samples = [s for r in repeats for s in r["samples_ms"]]
    board = {
        "machine": "aarch64", "cpu_model": "Cortex-A72", "cores": 4, "governor": "performance", "mhz_max": 1800.0,
        "mhz_current": 1800.0, "temperature_c": 45.0, "throttling": None, "kernel": "6.6", "os": "Debian 12",
        "python": "3.11", "numpy": "1.26", "emulated": False,
    }  # fmt: skip
    return {
        "schema": "edgepipe.deploy/1",
        "status": "passed",
        "target": {"name": "board", "threads": 4, "xnnpack": True, "runtime": "auto"},
        "measure": {"runs": n, "min_seconds": 1.0, "repeats": len(medians)},
        "model": {"sha256": "a" * 64, "bytes": 100, "model": "/nowhere/model.tflite"},
        "provenance": {"tools": {}, "agent": {"version": "1.2.1", "sha256": "b" * 64}, "optimize": None},
        "device": {
            "agent_version": "1.2.1",
            "timing": {"latency_ms": {"p50": median(samples)}, "repeats": repeats, "samples_ms": samples},
            "board": board,
            "runtime": {"name": "tflite_runtime", "version": "2.14.0", "threads": 4, "xnnpack": True},
            "memory": {"vmhwm_kb": {"after_runs": 50_000}},
            "accuracy": None,
        },
    }


def test_a_record_missing_a_compared_field_is_an_error_naming_it(tmp_path: Path) -> None:
    """A renamed field used to compare None with None and pass; now the record is refused, naming the field."""
    base, cand = synthetic([1.0] * 3, seed=20), synthetic([1.0] * 3, seed=21)
    cand["device"]["board"]["cpu_governor"] = cand["device"]["board"].pop("governor")
    files = [tmp_path / "base.json", tmp_path / "cand.json"]
    for file, record in zip(files, (base, cand), strict=True):
        file.write_text(json.dumps(record))
    done = run_cli("compare", "--baseline", str(files[0]), "--candidate", str(files[1]))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cand.json" in done.stderr and "device.board.governor: missing" in done.stderr
    with pytest.raises(ConfigError, match="governor"):
        compare(base, cand, VerdictSettings())
    assert compare(base, synthetic([1.0] * 3, seed=22), VerdictSettings()).checks[0].status == "pass"


def test_a_model_file_given_for_a_result_says_what_compare_reads(tmp_path: Path) -> None:
    """A .tflite named as the baseline failed with "'utf-8' codec can't decode byte 0xf0"."""
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(range(256)))  # a flatbuffer's header, then binary
    result = tmp_path / "cand.json"
    result.write_text(json.dumps(synthetic([1.0] * 3, seed=23)))
    (tmp_path / "m.bin").write_bytes(model.read_bytes())  # the same bytes under another name
    for named in (model, tmp_path / "m.bin"):
        done = run_cli("compare", "--baseline", str(named), "--candidate", str(result))
        assert done.returncode == 2, done.stdout + done.stderr
        said = " ".join(done.stderr.split())
        assert f"error: {named}: a .tflite model, not a deploy result" in said and "--baseline MODEL.tflite" in said
        assert "codec" not in said and "Traceback" not in said


def test_slow_processes_do_not_raise_false_alarms_but_a_shift_of_all_does() -> None:
    settings = VerdictSettings()
    steady = synthetic([1.0, 1.0, 1.0, 1.0, 1.0], seed=1)
    one_slow = synthetic([1.0, 1.45, 1.0, 1.0, 1.5], seed=2)  # two processes in the slow state
    assert compare(steady, one_slow, settings).status == "pass"
    slower = synthetic([1.05, 1.05, 1.5, 1.05, 1.05], seed=3)
    verdict = compare(steady, slower, settings)
    assert verdict.status == "regression" and [c.name for c in verdict.checks if c.status == "fail"] == ["latency"]
    assert compare(steady, synthetic([1.02] * 5, seed=4), settings).status == "pass"  # below min_effect


def paired_synthetic(base: dict[str, Any], factor: float, seed: int) -> dict[str, Any]:
    """A candidate with a paired measurement against ``base``'s model: blocks drift together, the model is
    ``factor`` times slower than the baseline within each block."""
    rng = random.Random(seed)
    processes = []
    for index in range(5):
        model, baseline = [], []
        for _ in range(20):
            board = rng.choice([1.0, 1.5])  # a slow spell lands on both sides of a block pair
            baseline += [board * rng.lognormvariate(0, 0.05) for _ in range(100)]
            model += [board * factor * rng.lognormvariate(0, 0.05) for _ in range(100)]
        first = "model" if index % 2 == 0 else "baseline"
        processes.append({"first": first, "block_runs": 100, "model_ms": model, "baseline_ms": baseline})
    candidate = synthetic([1.0] * 5, seed=seed + 1)
    candidate["model"]["sha256"] = "c" * 64  # another model (the same bytes cannot differ, see below)
    candidate["baseline"] = {"model_sha256": base["model"]["sha256"], "source": "test"}
    candidate["device"]["timing"]["baseline"] = {"processes": processes, "error": None}
    return candidate


def test_paired_blocks_see_through_slow_spells_and_catch_a_shift() -> None:
    settings = VerdictSettings()
    base = synthetic([1.0] * 5, seed=7)
    same = compare(base, paired_synthetic(base, 1.0, seed=8), settings)
    assert same.status == "pass" and "paired in one job" in same.checks[1].message
    slower = compare(base, paired_synthetic(base, 1.05, seed=9), settings)
    assert slower.status == "regression" and slower.checks[1].name == "latency"
    assert 0.03 < slower.checks[1].change < 0.07
    faster = compare(base, paired_synthetic(base, 0.9, seed=10), settings)
    assert faster.status == "pass" and faster.checks[1].faster
    failed = paired_synthetic(base, 1.5, seed=11)
    failed["device"]["timing"]["baseline"]["error"] = {"class": "ModelCrash", "message": "x"}
    assert "separate jobs" in compare(base, failed, settings).checks[1].message  # unusable pairing: unpaired
    other_settings = paired_synthetic(base, 1.0, seed=12)
    other_settings["target"]["xnnpack"] = False  # both timed without XNNPACK, the baseline ran with it
    assert "separate jobs" in compare(base, other_settings, settings).checks[1].message


def test_the_same_model_bytes_timed_paired_are_never_a_regression() -> None:
    """A farm run whose model did not change times the baseline's bytes against themselves: two interpreters of
    one file in one process were measured 4.0 % apart (p = 4e-6, 2 processes), and the farm called the
    unchanged model a latency regression. The difference is reported, and the check passes."""
    base = synthetic([1.0] * 5, seed=7)
    unchanged = paired_synthetic(base, 1.05, seed=9)
    unchanged["model"]["sha256"] = base["model"]["sha256"]
    verdict = compare(base, unchanged, VerdictSettings())
    latency = verdict.checks[1]
    assert verdict.status == "pass" and latency.name == "latency" and 0.03 < latency.change < 0.07
    assert latency.message.startswith("the same model bytes on both sides, paired in one job")
    assert "is the measurement's (memory layout), not the model's" in latency.message


def test_throttling_makes_the_verdict_inconclusive() -> None:
    base, cand = synthetic([1.0] * 3, seed=5), synthetic([1.0] * 3, seed=6)
    cand["device"]["board"]["throttling"] = {"raw": "0x4", "throttled_now": True}
    verdict = compare(base, cand, VerdictSettings())
    assert verdict.status == "inconclusive" and "throttled" in verdict.checks[0].message


@pytest.mark.parametrize(
    ("field", "value", "check"),
    [
        ("accuracy", 0.95, "accuracy"),  # 0.97 -> 0.95: 2 points, limit 0.5
        ("bytes", 120, "model size"),  # +20 %, limit +1 %
        ("memory", 60_000, "peak memory"),  # +20 %, limit +10 %
    ],
)
def test_each_threshold_check_fails_alone_and_is_named(field: str, value: float, check: str) -> None:
    base = synthetic([1.0] * 3, seed=12)
    cand = synthetic([1.0] * 3, seed=12)  # identical latency: only the changed field can fail
    for record in (base, cand):
        record["device"]["accuracy"] = {"accuracy": 0.97}
        record["device"]["memory"] = {"vmhwm_kb": {"after_runs": 50_000}}
    if field == "accuracy":
        cand["device"]["accuracy"] = {"accuracy": value}
    elif field == "bytes":
        cand["model"]["bytes"] = value
    else:
        cand["device"]["memory"] = {"vmhwm_kb": {"after_runs": value}}
    verdict = compare(base, cand, VerdictSettings())
    assert verdict.status == "regression"
    assert [c.name for c in verdict.checks if c.status == "fail"] == [check]
    assert all(c.status in ("pass", "n/a") for c in verdict.checks if c.name != check)
    failed = next(c for c in verdict.checks if c.status == "fail")
    if field == "memory":  # the unit every command uses for VmHWM: MiB (kB / 1024)
        assert failed.message.startswith("48.8 MiB -> 58.6 MiB (+20.0%")
    if field == "bytes":
        assert " bytes -> 120 bytes (" in failed.message


def test_an_error_metric_regresses_when_it_grows_beyond_its_limit() -> None:
    """Regression and reconstruction models carry an error (lower is better), compared as relative growth."""
    base = synthetic([1.0] * 3, seed=14)
    cand = synthetic([1.0] * 3, seed=14)
    base["device"]["accuracy"] = {"accuracy": None, "metric": "mse", "value": 0.0200}
    cand["device"]["accuracy"] = {"accuracy": None, "metric": "mse", "value": 0.0209}  # +4.5 %: within 5 %
    assert compare(base, cand, VerdictSettings()).status == "pass"
    cand["device"]["accuracy"] = {"accuracy": None, "metric": "mse", "value": 0.0230}  # +15 %
    verdict = compare(base, cand, VerdictSettings())
    failed = [c for c in verdict.checks if c.status == "fail"]
    assert verdict.status == "regression" and [c.name for c in failed] == ["accuracy"]
    assert failed[0].message.startswith("mse: ") and "+15.0%" in failed[0].message
    cand["device"]["accuracy"] = {"accuracy": None, "metric": "mae", "value": 0.0209}  # another metric
    assert next(c for c in compare(base, cand, VerdictSettings()).checks if c.name == "accuracy").status == "n/a"


def test_a_candidate_without_evaluation_data_makes_the_accuracy_check_inconclusive() -> None:
    base = synthetic([1.0] * 3, seed=15)
    cand = synthetic([1.0] * 3, seed=15)
    base["device"]["accuracy"] = {"accuracy": 0.97, "metric": "accuracy", "value": 0.97}
    cand["device"].pop("accuracy", None)  # deployed without --data
    verdict = compare(base, cand, VerdictSettings())
    accuracy = next(c for c in verdict.checks if c.name == "accuracy")
    assert accuracy.status == "inconclusive" and verdict.status == "inconclusive"
    assert "without evaluation data" in accuracy.message


def test_size_and_memory_limits_are_command_line_options(tmp_path: Path) -> None:
    base = synthetic([1.0] * 3, seed=16)
    cand = synthetic([1.0] * 3, seed=16)
    for record in (base, cand):
        record["device"]["memory"] = {"vmhwm_kb": {"after_runs": 50_000}}
    cand["model"]["bytes"] = int(base["model"]["bytes"] * 1.05)  # +5 %: over the default +1 %
    cand["device"]["memory"] = {"vmhwm_kb": {"after_runs": 57_500}}  # +15 %: over the default +10 %
    files = []
    for name, record in (("base", base), ("cand", cand)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(record))
    args = ["compare", "--baseline", str(files[0]), "--candidate", str(files[1])]
    strict = run_cli(*args)
    assert strict.returncode == 7 and "model size" in strict.stderr and "peak memory" in strict.stderr
    relaxed = run_cli(*args, "--max-size-growth", "0.1", "--max-memory-growth", "0.2")
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
