"""Per-operator profiles: the windows the agent times, the static traffic and roofline, ``deploy --profile``.

The models are real int8 conversions of small Keras models shaped like users' (Conv → ReLU, a residual add, a
depthwise conv, global pooling, a dense head) and the digits MLP; every profile runs through the real agent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgepipe.analyze.roofline import roofline, traffic
from edgepipe.analyze.windows import CONTEXT_OPS, plan
from edgepipe.deployment.agent import AGENT_SOURCE
from edgepipe.tflite_model import TfliteModel

pytestmark = pytest.mark.slow


# What the operators' times summed over the whole model's may be: an operator timed twice gives about 2, the big
# operators left out well under 0.5; timing noise on a shared 2-core machine stays inside.
ACCOUNTED = (0.6, 1.6)


def _convert(model: Any, shape: tuple[int, ...], int8: bool = True) -> bytes:
    from edgepipe.keras_compat import tf

    converter = tf().lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(0)

        def samples() -> Any:
            for _ in range(8):
                yield [rng.random((1, *shape), dtype=np.float32)]

        converter.optimizations = [tf().lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf().lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf().int8
    return bytes(converter.convert())


def _conv_net(path: Path, pointwise: int = 64, factored: bool = False) -> Path:
    """Conv → ReLU, a residual add, a depthwise and a pointwise conv, global pooling, a dense head. ``factored``:
    the pointwise conv as two thinner ones (what a low-rank stage does to a layer)."""
    from edgepipe.keras_compat import keras

    k = keras()
    k.utils.set_random_seed(0)
    inputs = k.Input((24, 24, 3))
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    y = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="branch")(x)
    x = k.layers.Add(name="residual")([x, y])
    x = k.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(x)
    if factored:
        x = k.layers.Conv2D(4, 1, name="pointwise_low")(x)
        x = k.layers.Conv2D(pointwise, 1, activation="relu", name="pointwise_up")(x)
    else:
        x = k.layers.Conv2D(pointwise, 1, activation="relu", name="pointwise")(x)
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = k.layers.Dense(10, name="head")(x)
    path.write_bytes(_convert(k.Model(inputs, outputs), (24, 24, 3)))
    return path


@pytest.fixture(scope="module")
def conv_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _conv_net(tmp_path_factory.mktemp("conv") / "conv.tflite")


def test_every_window_computes_what_the_whole_model_computes_there(conv_net: Path) -> None:
    """Each window, fed the full model's tensors where it starts, gives exactly the full model's tensors where
    it ends; the pair of each operator differs by that operator alone."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    builtin = {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    found = plan(conv_net)
    model = TfliteModel.read(conv_net)
    full = Interpreter(model_path=str(conv_net), experimental_preserve_all_tensors=True, **builtin)
    full.allocate_tensors()
    sample = np.random.default_rng(1).integers(-128, 128, size=(1, 24, 24, 3), dtype=np.int8)
    full.set_tensor(full.get_input_details()[0]["index"], sample)
    full.invoke()
    assert len(found.pairs) == len(model.ops)
    for k, (with_k, without_k) in enumerate(found.pairs):
        a, b = found.windows[with_k], found.windows[without_k]
        start = max(0, k - CONTEXT_OPS)
        assert (a.start, a.length, b.start, b.length) == (start, k - start + 1, start, k - start)
    depthwise = next(op for op in model.ops if op.name == "DEPTHWISE_CONV_2D")
    around = found.windows[found.pairs[depthwise.index][0]]  # branch conv, residual add, depthwise
    assert [op.name for op in model.ops[around.start : depthwise.index + 1]] == ["CONV_2D", "ADD", "DEPTHWISE_CONV_2D"]
    assert around.inputs == model.ops[0].outputs  # the stem's output, fed to the branch and the add's skip side
    for index, window in enumerate(found.windows):
        cut = Interpreter(model_content=found.window(index), **builtin)
        cut.allocate_tensors()
        assert len(TfliteModel.read(found.window(index)).ops) == window.length
        assert sorted(d["index"] for d in cut.get_input_details()) == list(window.inputs)
        for detail in cut.get_input_details():
            cut.set_tensor(detail["index"], full.get_tensor(detail["index"]))
        cut.invoke()
        assert sorted(d["index"] for d in cut.get_output_details()) == list(window.outputs)
        for detail in cut.get_output_details():
            assert np.array_equal(cut.get_tensor(detail["index"]), full.get_tensor(detail["index"])), (index, detail)


def test_traffic_and_macs_match_hand_computed_values(tmp_path: Path) -> None:
    """A float model, so every byte count is elements x 4: conv 8x8x2 -> 6x6x4 (3x3), depthwise 3x3 -> 4x4x4,
    dense 64 -> 3."""
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.Input((8, 8, 2))
    biased = {"bias_initializer": "ones"}  # a zero bias may be left out of the file by the converter
    x = k.layers.Conv2D(4, 3, name="conv", **biased)(inputs)
    x = k.layers.DepthwiseConv2D(3, name="depthwise", **biased)(x)
    outputs = k.layers.Dense(3, name="dense", **biased)(k.layers.Flatten()(x))
    path = tmp_path / "float.tflite"
    path.write_bytes(_convert(k.Model(inputs, outputs), (8, 8, 2), int8=False))
    model = TfliteModel.read(path)
    rows = {model.ops[row["index"]].name: row for row in traffic(model)}
    conv, depthwise, dense = rows["CONV_2D"], rows["DEPTHWISE_CONV_2D"], rows["FULLY_CONNECTED"]
    assert conv["macs"] == 6 * 6 * 4 * (3 * 3 * 2)
    assert conv["weight_bytes"] == (4 * 3 * 3 * 2 + 4) * 4
    assert (conv["activation_read_bytes"], conv["activation_write_bytes"]) == (8 * 8 * 2 * 4, 6 * 6 * 4 * 4)
    assert depthwise["macs"] == 4 * 4 * 4 * (3 * 3)
    assert depthwise["weight_bytes"] == (3 * 3 * 4 + 4) * 4
    assert (depthwise["activation_read_bytes"], depthwise["activation_write_bytes"]) == (6 * 6 * 4 * 4, 4 * 4 * 4 * 4)
    assert dense["macs"] == 64 * 3
    assert dense["weight_bytes"] == (64 * 3 + 3) * 4
    assert (dense["activation_read_bytes"], dense["activation_write_bytes"]) == (64 * 4, 3 * 4)
    assert conv["intensity"] == pytest.approx(2 * conv["macs"] / conv["bytes"], abs=1e-4)
    # The roofline of a board with a ridge at 10 ops/byte: the conv (about 3.4 ops/byte) is memory-bound.
    placed = roofline(list(rows.values()), peak_gops=10, bandwidth_gbs=1)
    bounds = {model.ops[p["index"]].name: p["bound"] for p in placed["ops"]}
    assert placed["ridge_ops_per_byte"] == 10 and bounds["CONV_2D"] == "memory"
    compute_heavy = roofline([{"index": 0, "macs": 10**6, "bytes": 10, "intensity": 2e5}], 10, 1)["ops"][0]
    assert compute_heavy["bound"] == "compute" and compute_heavy["attainable_ms"] == pytest.approx(0.2)


def _deploy(folder: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "edgepipe", "deploy", *args, "--no-history", "-o", str(folder / "deploy.json")],
        cwd=folder, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    record = json.loads((folder / "deploy.json").read_text()) if (folder / "deploy.json").exists() else {}
    return done, record


def test_deploy_profile_of_a_conv_net_on_the_local_target(conv_net: Path, tmp_path: Path) -> None:
    target = tmp_path / "board.yaml"  # the local board with roofline figures, so every operator gets a bound
    target.write_text(json.dumps({"name": "board", "transport": "local", "peak_gops": 50, "memory_bandwidth_gbs": 10,
                                  "measure": {"runs": 100, "min_seconds": 0.5, "repeats": 1,
                                              "profile_seconds": 1}}))  # fmt: skip
    done, record = _deploy(tmp_path, "--model", str(conv_net), "--target", str(target), "--profile")
    assert done.returncode == 0, done.stderr
    profile = record["profile"]
    model = TfliteModel.read(conv_net)
    assert [row["op"] for row in profile["ops"]] == [op.name for op in model.ops]
    layers = {row["layer"] for row in profile["ops"]}
    assert {"stem", "branch", "depthwise", "pointwise", "head"} <= layers
    for row in profile["ops"]:
        assert row["resolved"] == (row["time_ms"] > row["resolution_ms"])
        assert row["bound"] in ("compute", "memory") and row["attainable_ms"] > 0
    resolved = [row for row in profile["ops"] if row["resolved"]]
    assert {row["layer"] for row in resolved} >= {"stem", "branch"}  # the two 3x3 convs take measurable time
    assert sum(row["share"] for row in profile["ops"]) == pytest.approx(1.0)
    # The operators' times add up to the model's (timed in the same rounds); the bench measures how closely. The
    # bounds catch an operator counted twice or left out, not the noise of a shared machine (1.31 seen in CI).
    assert ACCOUNTED[0] < profile["sum_over_whole"] < ACCOUNTED[1], profile["sum_over_whole"]
    assert profile["deploy_p50_ms"] == record["device"]["timing"]["latency_ms"]["p50"]
    assert not profile["emulated"] and profile["rounds"] >= 20 and profile["seconds"] >= 1
    assert profile["peak_rss_kb"] > record["device"]["memory"]["vmhwm_kb"]["before_load"]
    assert f"slowest operators (of {len(model.ops)})" in done.stdout and "too fast to resolve" in done.stdout


def test_profile_of_the_digits_mlp_through_the_python_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgepipe import api
    from edgepipe.analyze.calibrate import cache_file
    from edgepipe.examples.digits import load
    from edgepipe.keras_compat import keras

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    k = keras()
    k.utils.set_random_seed(0)
    data = load()
    model = k.Sequential([k.Input((64,)), k.layers.Dense(32, activation="relu"), k.layers.Dense(10)])
    path = tmp_path / "digits.tflite"
    path.write_bytes(_convert(model, (64,)))
    np.savez(tmp_path / "eval.npz", x=data.x_test[0][:50].reshape(50, 64).astype(np.float32), y=data.y_test[0][:50])
    result = api.deploy(model=path, data=tmp_path / "eval.npz", out=tmp_path / "d.json", record=False,
                        runs=50, min_seconds=0.2, repeats=1, profile=True, profile_seconds=1)  # fmt: skip
    profile = result.record["profile"]
    assert [row["op"] for row in profile["ops"]] == [op.name for op in TfliteModel.read(path).ops]
    # The local target states no ceilings: this machine's are measured once and kept with their CPU and date.
    roof = profile["roofline"]
    assert roof["source"]["from"] == "calibration" and roof["peak_gops"] > 0 and roof["memory_bandwidth_gbs"] > 0
    assert roof["ridge_ops_per_byte"] == pytest.approx(roof["peak_gops"] / roof["memory_bandwidth_gbs"])
    kept = json.loads(cache_file().read_text())
    assert [entry["peak_gops"] for entry in kept.values()] == [roof["peak_gops"]]
    assert all(row["bound"] in ("compute", "memory") for row in profile["ops"])
    unresolved = [row for row in profile["ops"] if not row["resolved"]]
    assert len(unresolved) == profile["unresolved"] and all(row["share"] == 0 for row in unresolved)
    assert result.record["device"]["accuracy"] is not None  # the profile leaves the ordinary measurement whole


def test_windows_that_do_not_fit_in_the_memory_limit_are_timed_in_groups(tmp_path: Path) -> None:
    """Every window holds a copy of the model: a 5 MB Dense-heavy model under a 250 MB address-space limit (the
    child with numpy and the runtime takes about 175 MB of it, so about 75 MB are left: two operators' windows
    per group, for anything from 64 to 95 MB left) cannot have its windows loaded at once, so its operators are
    timed in groups; all of them still get a time, and the times still add up to the whole model's."""
    from edgepipe import api
    from edgepipe.config.target import MeasureSettings, Target
    from edgepipe.keras_compat import keras

    k = keras()
    k.utils.set_random_seed(0)
    layers = [k.layers.Dense(2048, activation="relu"), k.layers.Dense(2048, activation="relu"), k.layers.Dense(10)]
    path = tmp_path / "dense.tflite"
    path.write_bytes(_convert(k.Sequential([k.Input((512,)), *layers]), (512,)))
    assert path.stat().st_size > 5 * 2**20
    settings = MeasureSettings(memory_limit_mb=250, runs=50, min_seconds=0.2, repeats=1, profile_seconds=1)
    result = api.deploy(model=path, target=Target(name="small", transport="local", measure=settings),
                        out=tmp_path / "d.json", record=False, profile=True)  # fmt: skip
    profile = result.record["profile"]
    assert "error" not in profile, profile
    assert profile["groups"] > 1 and profile["rounds"] >= 20
    assert [row["op"] for row in profile["ops"]] == ["FULLY_CONNECTED"] * 3
    assert all(row["resolved"] for row in profile["ops"][:2])  # 1 M and 4 M MACs: far above the noise
    assert ACCOUNTED[0] < (profile["sum_ms"] + profile["overhead_ms"]) / profile["whole_ms"] < ACCOUNTED[1]


def test_a_model_made_for_another_batch_size_is_profiled_at_batch_one(tmp_path: Path) -> None:
    """The deploy times a batch-4 model at batch 1; its windows, fed batch-1 tensors, are resized to match
    (before, the first window refused them: "Dimension mismatch")."""
    from edgepipe import api
    from edgepipe.keras_compat import keras

    k = keras()
    k.utils.set_random_seed(0)
    inputs = k.Input((12, 12, 3), batch_size=4)
    x = k.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    outputs = k.layers.Dense(10, name="head")(k.layers.Flatten()(x))
    path = tmp_path / "batch4.tflite"
    path.write_bytes(_convert(k.Model(inputs, outputs), (12, 12, 3)))
    assert TfliteModel.read(path).tensors[TfliteModel.read(path).inputs[0]].shape[0] == 4
    result = api.deploy(model=path, out=tmp_path / "d.json", record=False, runs=50, min_seconds=0.2, repeats=1,
                        profile=True, profile_seconds=0.5)  # fmt: skip
    profile = result.record["profile"]
    assert "error" not in profile, profile
    assert [row["op"] for row in profile["ops"]] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    assert profile["ops"][0]["resolved"] and profile["ops"][0]["time_ms"] > 0


def test_the_agent_refuses_a_malformed_profile_field(conv_net: Path) -> None:
    from edgepipe.config.target import MeasureSettings, Target
    from edgepipe.deployment.job import build_job

    job = build_job(Target(name="local", transport="local"), MeasureSettings(), str(conv_net))
    job["profile"] = {"model": str(conv_net), "windows": "all"}
    done = subprocess.run([sys.executable, str(AGENT_SOURCE), "run", "-"], input=json.dumps(job),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    error = json.loads(done.stdout)["error"]
    assert done.returncode == 2 and error["class"] == "BadJob"
    assert "profile must be null or an object" in error["message"]


def test_profile_usage_mistakes_are_one_line(conv_net: Path, tmp_path: Path) -> None:
    done, record = _deploy(tmp_path, "--model", str(conv_net), "--profile-seconds", "-1")
    assert done.returncode == 2 and "profile_seconds" in done.stderr and "Traceback" not in done.stderr
    assert record == {}  # nothing measured, nothing written
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(conv_net.read_bytes()[:300])
    done, record = _deploy(tmp_path, "--model", str(broken), "--profile")
    assert done.returncode == 3 and "malformed TFLite flatbuffer" in done.stderr and "Traceback" not in done.stderr
    # control flow: the IF operator runs two more subgraphs, which no window can cut
    from edgepipe.keras_compat import tf

    @tf().function(input_signature=[tf().TensorSpec([1, 4], tf().float32)])
    def branching(x: Any) -> Any:
        return tf().cond(tf().reduce_sum(x) > 0, lambda: x * 2.0, lambda: x - 1.0)

    converter = tf().lite.TFLiteConverter.from_concrete_functions([branching.get_concrete_function()], branching)
    branched = tmp_path / "branched.tflite"
    branched.write_bytes(converter.convert())
    done, record = _deploy(tmp_path, "--model", str(branched), "--profile")
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert "control flow (3 subgraphs) cannot be profiled operator by operator" in done.stderr
    assert "hint: deploy without --profile" in done.stderr and record == {}


def test_the_diff_names_the_layer_made_heavier(conv_net: Path, tmp_path: Path) -> None:
    """The same network with a pointwise conv eight times as wide: compare names that layer as the largest
    regression; every other layer keeps its name and is matched."""
    heavier = _conv_net(tmp_path / "heavier.tflite", pointwise=512)
    target = tmp_path / "board.yaml"
    target.write_text(json.dumps({"name": "board", "transport": "local", "measure": {
        "runs": 100, "min_seconds": 0.3, "repeats": 2, "profile_seconds": 2}}))  # fmt: skip
    records = {}
    for name, model in (("base", conv_net), ("heavy", heavier)):
        folder = tmp_path / name
        folder.mkdir()
        done, records[name] = _deploy(folder, "--model", str(model), "--target", str(target), "--profile")
        assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "edgepipe", "compare", "--baseline", str(tmp_path / "base" / "deploy.json"),
         "--candidate", str(tmp_path / "heavy" / "deploy.json"), "--json", str(tmp_path / "verdict.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 7, done.stderr  # a regression: the .tflite grew far beyond 1 % whatever the latency
    layers = json.loads((tmp_path / "verdict.json").read_text())["layers"]
    assert layers["largest_regression"]["layer"] == "pointwise"
    assert layers["removed"] == 0 and layers["added"] == 0  # same layers, new shapes: all matched
    pointwise = next(row for row in layers["ops"] if row["layer"] == "pointwise")
    assert pointwise["shapes_changed"] and pointwise["status"] == "slower"
    others = [abs(row["change_ms"]) for row in layers["ops"] if row["layer"] != "pointwise"]
    # it, and only it, stands out (the two deploys are separate processes: on a loaded machine the other layers
    # drift by tens of µs between them, so the margin is not asked to be large)
    assert pointwise["change_ms"] > max(others)
    assert "per-operator time" in done.stdout and "largest regression: pointwise" in done.stdout


def test_the_diff_shows_a_factorised_layer_as_removed_and_its_two_parts_as_added(conv_net: Path,
                                                                                   tmp_path: Path) -> None:  # fmt: skip
    """A recipe that factorises a layer (low-rank) changes the operator sequence: the old layer is removed, the
    two new ones are added, every other layer is still matched to itself."""
    from edgepipe.analyze.profile_diff import diff

    factored = _conv_net(tmp_path / "factored.tflite", factored=True)
    profiles = []
    for name, model in (("base", conv_net), ("factored", factored)):
        folder = tmp_path / name
        folder.mkdir()
        done, record = _deploy(folder, "--model", str(model), "--profile", "--profile-seconds", "0.5",
                               "--runs", "50", "--min-seconds", "0.2", "--repeats", "1")  # fmt: skip
        assert done.returncode == 0, done.stderr
        profiles.append(record["profile"])
    layers = diff(*profiles)
    by_status = {status: sorted(r["layer"] for r in layers["ops"] if r["status"] == status)
                 for status in ("removed", "added")}  # fmt: skip
    assert by_status == {"removed": ["pointwise"], "added": ["pointwise_low", "pointwise_up"]}
    matched = {r["layer"] for r in layers["ops"] if r["status"] in ("slower", "faster", "same")}
    assert {"stem", "branch", "depthwise", "head"} <= matched
    assert layers["removed"] == 1 and layers["added"] == 2


@pytest.mark.parametrize("width", [1400, 390])
def test_the_report_shows_the_profile_and_the_roofline(optimized_run: tuple[Path, dict], tmp_path: Path,
                                                       width: int) -> None:  # fmt: skip
    """The digits run deployed with --profile on a board with roofline figures: the HTML report's per-operator
    chart, roofline and slowest-operators table, at a desktop's and a phone's width; the Markdown's line."""
    import shutil

    from browser import artifacts_dir, body_attribute, load

    directory, _ = optimized_run
    run = tmp_path / "run"
    shutil.copytree(directory, run)
    target = tmp_path / "board.yaml"
    target.write_text(
        json.dumps(
            {
                "name": "board",
                "transport": "local",
                "peak_gops": 50,
                "memory_bandwidth_gbs": 10,
                "measure": {"runs": 50, "min_seconds": 0.2, "repeats": 1, "profile_seconds": 1},
            }
        )
    )
    done = subprocess.run([sys.executable, "-m", "edgepipe", "deploy", "--target", str(target), str(run), "--profile",
                           "--stages", "--no-history"], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # --stages: the float model and the stages before the final one, next to their models
    measured = [*run.glob("float/deploy-board.json"), *sorted(run.glob("stages/*/deploy-board.json"))]
    assert [path.parent.name for path in measured] == ["float", "1-prune", "2-cluster"]
    assert all("ops" in json.loads(path.read_text())["profile"] for path in measured)  # each profiled too
    done = subprocess.run([sys.executable, "-m", "edgepipe", "report", str(run), "--html", str(run / "report.html"),
                           "--md", str(run / "report.md"), "--json", str(run / "report.json")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    page = load(run / "report.html", screenshot=artifacts_dir() / f"profile-report-{width}.png", width=width)
    assert page.console == [] and page.page_requests == []
    assert body_attribute(page.dom, "data-plots-drawn") == "6"  # the four of every report, the profile, the roofline
    assert body_attribute(page.dom, "data-overflow-px") in (None, "0")
    assert 'id="plot-profile"' in page.dom and 'id="plot-roofline"' in page.dom and 'id="slowest"' in page.dom
    assert "Where the time goes: board" in page.dom
    # the float model's profile against the final one's, per layer: each operator matched to itself by name
    change = json.loads((run / "report.json").read_text())["profile_changes"]
    final = json.loads((run / "deploy-board.json").read_text())["profile"]
    assert [(c["target"], c["from"]) for c in change] == [("board", "float")]
    assert [(r["op"], r["layer"]) for r in change[0]["ops"]] == [(r["op"], r["layer"]) for r in final["ops"]]
    assert change[0]["removed"] == change[0]["added"] == 0
    assert 'id="profile-change-board"' in page.dom and "Per layer, float →" in page.dom
    markdown = (run / "report.md").read_text()
    assert "Slowest operators on board: " in markdown and "(FULLY_CONNECTED)" in markdown
    assert f"Per layer, float → {change[0]['to']} on board" in markdown
