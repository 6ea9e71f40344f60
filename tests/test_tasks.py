"""Tasks other than single-output classification, end to end: a dense autoencoder (reconstruction), a model
with two inputs and two outputs, and a regressor, through optimize, the device agent, deploy and the report."""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, run_cli, write_recipe

from edgepipe.data import from_arrays, read_eval_data
from edgepipe.errors import ConfigError, GateFailed
from edgepipe.tasks import score


def agent_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The agent's scoring module, imported from its source folder as the agent imports it."""
    monkeypatch.syspath_prepend(str(REPO / "device_agents"))
    return importlib.import_module("edgepipe_agent.evaluate")


@pytest.mark.parametrize("task", ["classification", "regression", "reconstruction"])
def test_the_agent_scores_exactly_as_the_host_does(task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    outputs = [rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(50, 3)).astype(np.float32)]
    if task == "classification":
        targets = [rng.integers(0, 4, 50), rng.integers(0, 3, 50)]
    else:
        targets = [rng.normal(size=(50, 4)), rng.normal(size=(50, 3))]
    host = score(task, outputs, targets)  # type: ignore[arg-type]
    board = agent_module(monkeypatch).score(np, task, outputs, targets)
    assert list(host.per_output) == pytest.approx(board, abs=1e-6)
    assert host.metric == {"classification": "accuracy", "regression": "mae", "reconstruction": "mse"}[task]


def test_a_one_unit_output_answers_one_above_its_threshold_on_host_and_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A binary classifier's single column: argmax would always answer 0 (the score was the share of zeros)."""
    logits = np.array([[-2.0], [0.5], [3.0], [-0.1]], dtype=np.float32)
    labels = np.array([0, 1, 1, 1])
    host = score("classification", [logits, 1 / (1 + np.exp(-logits))], [labels, labels], (0.0, 0.5))
    assert list(host.per_output) == [0.75, 0.75]
    assert score("classification", [logits], [labels]).value == 0.25  # what argmax alone gave
    agent = agent_module(monkeypatch)
    assert agent.score(np, "classification", [logits], [labels], [0.0]) == [0.75]
    # In raw int8 units the board's answer flips where it crosses the threshold, with its distance as the margin
    host_raw, board_raw = np.array([[-20], [5], [30]]), np.array([[-20], [-3], [30]])
    found = agent.agreement(np, "classification", [host_raw], [board_raw], [labels[:3]], [0.0])
    assert found["top1"] == pytest.approx(2 / 3) and found["top1_changed_margins"] == [[5.0]]
    assert found["top1_discordant"] == [[1, 0]]


@pytest.mark.slow
def test_reconstruction_is_scored_by_its_error_and_needs_no_labels(task_runs: dict) -> None:
    directory, result = task_runs["autoencoder"]
    assert result["recipe"]["task"] == "reconstruction"
    final = result["final"]
    assert final["metric"]["metric"] == "mse" and final["accuracy"] is None
    assert final["agreement"]["top1_agreement"] is None and final["agreement"]["metric"] == "mse"
    assert result["stages"][-1]["details"]["scheme"] == "PQAT"
    qat = result["stages"][-1]
    assert qat["details"]["distilled_from"]["teacher"] == "the float model"  # MSE to the inputs and the teacher
    assert np.isfinite(qat["training"]["loss"]).all()
    assert [g["gate"] for g in result["gates"]] == ["max_error_increase"]  # the classifier's default is off
    with np.load(directory / "eval.npz") as archive:
        assert archive.files == ["x"]  # targets are the inputs
    # The recorded error is what the interpreter gives on the eval data, the output against the input.
    from edgepipe.convert import evaluate
    from edgepipe.tasks import Task

    (x,), _ = read_eval_data(directory / "eval.npz")
    measured = evaluate.evaluate((directory / "model.tflite").read_bytes(), (x,), (x,), Task("reconstruction"))
    assert measured.score.value == pytest.approx(final["metric"]["value"], rel=1e-5)


@pytest.mark.slow
def test_two_inputs_and_two_outputs_are_evaluated_in_the_interpreters_order(task_runs: dict) -> None:
    from ai_edge_litert.interpreter import Interpreter

    directory, result = task_runs["two_heads"]
    final = result["final"]
    assert len(final["metric"]["per_output"]) == 2 and final["conformance"]["passed"]
    qat = result["stages"][-1]
    assert qat["details"]["distilled_from"]["temperature"] == 2.0  # each head distilled from the teacher's
    heads = {key.removeprefix("quant_") for key in qat["training"]}  # QAT's wrappers prefix the layer names
    assert {"digit_accuracy", "high_accuracy", "digit_loss", "high_loss"} <= heads, sorted(qat["training"])
    assert min(final["metric"]["per_output"]) > 0.8, final["metric"]  # both heads still classify
    interpreter = Interpreter(model_path=str(directory / "model.tflite"))
    inputs = [tuple(d["shape"][1:]) for d in interpreter.get_input_details()]
    with np.load(directory / "eval.npz") as archive:
        assert sorted(archive.files) == ["x_0", "x_1", "y_0", "y_1"]
        assert [archive["x_0"].shape[1:], archive["x_1"].shape[1:]] == inputs
    assert set(inputs) == {(8, 8, 1), (16,)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["autoencoder", "two_heads"])
def test_deploy_and_report_use_the_tasks_metric(task_runs: dict, name: str, tmp_path: Path) -> None:
    directory, optimize = task_runs[name]
    run_copy = tmp_path / "run"
    shutil.copytree(directory, run_copy)
    done = run_cli("deploy", "--target", "local", str(run_copy), "--no-history", "--repeats", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((run_copy / "deploy-local.json").read_text())
    checks, block = result["checks"], result["device"]["accuracy"]
    assert block["value"] == pytest.approx(optimize["final"]["metric"]["value"], abs=1e-6)  # rounded there
    assert checks["device_value"] == checks["host_value"]
    assert block["agreement"]["max_abs_diff"] == 0
    report = run_cli("report", str(run_copy))
    assert report.returncode == 0, report.stderr
    document = json.loads((run_copy / "report.json").read_text())
    final = next(stage for stage in document["stages"] if stage["final"])
    assert final["deployments"][0]["score"] == pytest.approx(block["value"])
    markdown = (run_copy / "report.md").read_text()
    if name == "autoencoder":
        assert document["metric"]["name"] == "mse" and "mean squared reconstruction error" in done.stdout
        assert "host MSE" in markdown and "local MSE" in markdown
        html = (run_copy / "report.html").read_text()
        assert "Mean squared reconstruction error (lower is better) on the host (circles)" in html
        assert "<th>host MSE</th>" in html
        assert checks["device_accuracy"] is None and checks["error_matches_host"] is True
    else:
        assert document["metric"]["name"] == "accuracy" and checks["accuracy_matches_host"] is True
        assert block["per_output"] and len(block["per_output"]) == 2


@pytest.mark.slow
def test_regression_gate_is_the_relative_error_increase(tmp_path: Path) -> None:
    from edgepipe.optimization import pipeline

    body = """
    name: ink
    task: regression
    model: {source: edgepipe.examples.tasks:ink_regressor, train: {epochs: 10, learning_rate: 0.003}}
    data: {source: edgepipe.examples.tasks:ink_data}
    fine_tune: {epochs: 1, learning_rate: 0.05}   # a rate far too high for a fine-tune: the error rises (+56 %)
    stages:
      - kind: qat
    convert: {representative_samples: 64}
    gates: {max_error_increase: 0.05}
    """
    with pytest.raises(GateFailed, match="max_error_increase: relative increase of the mae") as failed:
        pipeline.run(pipeline.prepare(write_recipe(tmp_path, body)), tmp_path / "run", isolate=False)
    result = failed.value.outcome.result  # type: ignore[union-attr]
    agreement = result["final"]["agreement"]
    assert agreement["metric"] == "mae" and agreement["tflite"] > agreement["float_keras"] > 0
    row = result["gates"][0]
    assert row["value"] == pytest.approx(agreement["relative_change"], abs=1e-4) and row["passed"] is False


@pytest.mark.slow
def test_a_regression_model_trains_with_the_recipes_loss_and_a_compiled_one_is_named(tmp_path: Path) -> None:
    """edgepipe fine-tuned every regression model with mse, silently, whatever it was compiled with."""
    from edgepipe.examples.tasks import ink_regressor
    from edgepipe.keras_compat import keras

    model = ink_regressor()
    model.compile(loss=keras().losses.Huber(delta=0.5), optimizer="adam")
    model.save(tmp_path / "ink.keras")
    body = """
    name: ink
    task: regression
    LOSS
    model: {source: ink.keras, train: {epochs: 2, learning_rate: 0.003}}
    data: {source: edgepipe.examples.tasks:ink_data}
    stages: [{kind: ptq}]
    gates: {max_error_increase: null}
    """
    done = run_cli("optimize", str(write_recipe(tmp_path, body.replace("LOSS", ""))), "--out", str(tmp_path / "a"))
    assert done.returncode == 0, done.stderr[-3000:]
    said = " ".join(done.stderr.split())
    assert "the model was compiled with loss Huber; edgepipe trains a regression model with mse unless the " in said
    assert json.loads((tmp_path / "a" / "optimize.json").read_text())["baseline"]["loss"] == "mse"

    mae = write_recipe(tmp_path, body.replace("LOSS", "loss: mae"))
    done = run_cli("optimize", str(mae), "--out", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled with loss" not in done.stderr
    baseline = json.loads((tmp_path / "b" / "optimize.json").read_text())["baseline"]
    assert baseline["loss"] == "mae"
    # trained on the mean absolute error: the loss Keras reports each epoch is the mae metric beside it
    assert baseline["training"]["loss"] == pytest.approx(baseline["training"]["mae"], rel=1e-4)

    classifier = body.replace("task: regression", "").replace("LOSS", "loss: huber").replace("ink.keras", "x.keras")
    done = run_cli("optimize", str(write_recipe(tmp_path, classifier)), "--out", str(tmp_path / "c"))
    assert done.returncode == 2, done.stderr[-3000:]
    said = " ".join(done.stderr.split())
    assert "loss: huber is for regression and reconstruction; a classifier is trained with the cross-entropy" in said
    assert "Traceback" not in said and not (tmp_path / "c").exists()


def test_gates_must_fit_the_task(tmp_path: Path) -> None:
    from edgepipe.optimization.pipeline import prepare

    base = """
    name: t
    task: TASK
    model: {source: edgepipe.examples.tasks:ink_regressor}
    data: {source: edgepipe.examples.tasks:ink_data}
    stages: [{kind: ptq}]
    gates: GATES
    """
    with pytest.raises(ConfigError, match="max_accuracy_drop is for classification") as wrong:
        prepare(write_recipe(tmp_path, base.replace("TASK", "regression").replace("GATES", "{max_accuracy_drop: 1}")))
    assert wrong.value.message.endswith("use gates.max_error_increase")  # no "(got a mapping)" after it
    with pytest.raises(ConfigError, match="max_error_increase is for regression"):
        prepare(
            write_recipe(tmp_path, base.replace("TASK", "classification").replace("GATES", "{max_error_increase: 1}"))
        )
    with pytest.raises(ConfigError, match=r"y_train has shape \(1347, 3\) but is not one-hot") as wrong:
        prepare(write_recipe(tmp_path, base.replace("TASK", "classification").replace("GATES", "{}")))
    assert "task: regression" in (wrong.value.hint or "")


def test_data_contract_for_several_inputs_and_each_task() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((10, 4), dtype=np.float32), rng.random((10, 2), dtype=np.float32)
    labels = rng.integers(0, 3, 10)
    numbered = {"x_train_0": a, "x_train_1": b, "y_train": labels, "x_test_0": a, "x_test_1": b, "y_test": labels}
    data = from_arrays(numbered, "d", "r.yaml", "data.source")
    assert data.input_shapes == [(4,), (2,)] and len(data.y_train) == 1
    assert data.keras_x("test")[1] is data.x_test[1]
    reconstruction = from_arrays({"x_train": a, "x_test": a}, "d", "r.yaml", "data.source", task="reconstruction")
    assert reconstruction.y_train == () and reconstruction.targets("test")[0] is reconstruction.x_test[0]
    for unlabelled, said in (
        ({"x_train": a, "x_test": a}, "has no array 'y_train', 'y_test' (found: x_test, x_train;"),
        ({"x_train": a, "y_train": (), "x_test": a, "y_test": ()}, "gives no labels (y_train, y_test empty)"),
    ):
        with pytest.raises(ConfigError, match=re.escape(said)) as missing:
            from_arrays(unlabelled, "d", "r.yaml", "data.source")
        assert "task: reconstruction" in (missing.value.hint or "")
    floats = from_arrays(
        {"x_train": a, "y_train": b, "x_test": a, "y_test": b}, "d", "r.yaml", "data.source", task="regression"
    )
    assert floats.y_train[0].dtype == np.float32 and floats.y_train[0].shape == (10, 2)
    with pytest.raises(ConfigError, match=r"the train arrays differ in samples: x_train_0 has 10, x_train_1 has 9"):
        from_arrays({**numbered, "x_train_1": b[:9]}, "d", "r.yaml", "data.source")


@pytest.mark.parametrize("top1", [0.9, None], ids=["classifier", "error-metric model"])
def test_a_parity_failure_names_what_differs(top1: float | None) -> None:
    """The parity-failure path, with and without top-1 agreement (the emulator test can only reach it when the
    emulated runtime's outputs differ from the host's, which they often do not)."""
    from edgepipe.deployment.checks import deploy_failure
    from edgepipe.errors import AccuracyMismatch
    from edgepipe.targets import load_target

    parity = {
        "passed": False,
        "top1_agreement": top1,
        "max_abs_diff": 3.0,
        "error_delta": None if top1 is not None else 0.034,
        "tolerance": {"max_abs_diff": 1.0, "min_top1_agreement": 0.99, "max_error_delta": 0.01},
        "host": {"runtime": "ai_edge_litert", "runtime_version": "2.3.0", "machine": "x86_64"},
        "device": {"runtime": "tflite_runtime", "runtime_version": "2.14.0", "machine": "aarch64"},
    }
    error = deploy_failure({}, {"parity": parity, "error_matches_host": None, "accuracy_matches_host": None},
                     load_target("rpi4-emu"))  # fmt: skip
    assert isinstance(error, AccuracyMismatch)
    if top1 is not None:
        assert "top-1 agreement 0.9000 (at least 0.99), largest difference 3 integer steps (at most 1)" in error.message
    else:  # judged by its error; the step difference is told, not judged
        assert "the error changed by +3.40% (at most 1.00%); largest output difference 3 integer steps" in error.message
    assert "tflite_runtime 2.14.0 on aarch64" in (error.hint or "")


@pytest.mark.parametrize(("lost", "gained", "chance"), [(3, 0, True), (30, 2, False)], ids=["near-ties", "worse"])
def test_an_accuracy_difference_says_whether_chance_explains_it(lost: int, gained: int, chance: bool) -> None:
    """The board's accuracy beyond the tolerance fails the deploy either way; the message says which answers
    changed, and McNemar's exact test tells a handful of flipped near-ties (3 of 450: p = 0.25, evaluate on more
    samples) from a board that is worse (30 against 2: compare runtimes)."""
    from types import SimpleNamespace

    from edgepipe.config.target import Target
    from edgepipe.deployment.checks import deploy_failure, host_checks
    from edgepipe.errors import AccuracyMismatch

    samples, host_accuracy = 450, 0.9
    device_accuracy = host_accuracy + (gained - lost) / samples
    agreement = {
        "top1": 1 - (lost + gained) / samples,
        "top1_changed_margins": [[1.0] * (lost + gained)],
        "top1_discordant": [[lost, gained]],
        "max_abs_diff": 1.0,
    }
    device = {"accuracy": {"samples": samples, "accuracy": device_accuracy, "value": device_accuracy,
                           "metric": "accuracy", "agreement": agreement}, "board": {}}  # fmt: skip
    inputs = SimpleNamespace(task="classification", host_accuracy=host_accuracy, host={},
                             host_score={"value": host_accuracy, "metric": "accuracy"})  # fmt: skip
    target = Target(name="board", transport="local")
    checks = host_checks(inputs, device, target.measure, target)  # type: ignore[arg-type]
    assert checks["accuracy_matches_host"] is False
    assert checks["accuracy_discordant"]["p_value"] == pytest.approx(0.25 if chance else 2.46e-7)
    error = deploy_failure({}, checks, target)
    assert isinstance(error, AccuracyMismatch)
    assert f"the board got {lost} answers wrong that the host got right and {gained} right" in error.message
    assert ("within chance" in (error.hint or "")) is chance


def test_a_per_position_output_is_scored_per_pixel_on_host_and_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A segmentation output (samples, H, W, classes) with a label per pixel: one answer per pixel. Flattened
    per sample, argmax picked one of H*W*classes values and the labels did not line up at all."""
    from edgepipe.deployment.checks import answers_beyond_near_ties

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (6, 4, 4))
    by_hand = float(np.mean(logits.argmax(axis=-1) == labels))
    host = score("classification", [logits], [labels], (), (3,))
    agent = agent_module(monkeypatch)
    assert host.value == pytest.approx(by_hand, abs=1e-6)
    flat = logits.reshape(6, -1)  # as the interpreters hand outputs over
    assert agent.score(np, "classification", [flat], [labels], [], [3]) == pytest.approx([by_hand], abs=1e-6)
    board = flat.copy()
    board[0, :3] = [9.0, 0.0, 0.0]  # pixel (0, 0, 0) of sample 0 answers class 0 now
    changed = int(logits[0, 0, 0].argmax() != 0)
    found = agent.agreement(np, "classification", [flat], [board], [labels], [], [3])
    assert found["top1_answers"] == [96] and found["top1_changed"] == [changed]
    assert found["top1"] == pytest.approx(1 - changed / 96)
    beyond, _ = answers_beyond_near_ties(found, 6, steps=0.0)
    assert beyond == pytest.approx(1 - changed / 96)  # per pixel, not per sample (1 - 1/6)


SEGMENTATION = '''
import numpy as np
import tf_keras as k
from edgepipe.data import Dataset
from edgepipe.examples import digits


def ink_masks():
    """Each digit's pixels as background, faint or strong ink: a label per pixel."""
    d = digits.load()
    mask = lambda x: np.digitize(x[..., 0], [0.2, 0.6]).astype(np.int32)
    return Dataset("ink-masks", d.x_train[0], mask(d.x_train[0]), d.x_test[0], mask(d.x_test[0]))


def segmenter():
    i = k.layers.Input((8, 8, 1))
    a = k.layers.Conv2D(8, 3, padding="same", activation="relu")(i)
    b = k.layers.UpSampling2D()(k.layers.Conv2D(8, 3, padding="same", activation="relu")(k.layers.MaxPooling2D()(a)))
    return k.Model(i, k.layers.Conv2D(3, 1)(k.layers.Concatenate()([a, b])), name="segmenter")


def tags():
    """Three yes/no labels per digit (even, above 4, prime): multi-hot rows."""
    d = digits.load()
    hot = lambda y: np.stack([y % 2 == 0, y > 4, np.isin(y, [2, 3, 5, 7])], axis=1).astype(np.int32)
    return Dataset("digit-tags", d.x_train[0], hot(d.y_train[0]), d.x_test[0], hot(d.y_test[0]))


def tagger(activation="sigmoid"):
    i = k.layers.Input((8, 8, 1))
    x = k.layers.Flatten()(k.layers.Conv2D(8, 3, padding="same", activation="relu")(i))
    return k.Model(i, k.layers.Dense(3, activation=activation)(x), name="tagger")


def softmax_tagger():
    return tagger("softmax")


def wrong_size():
    i = k.layers.Input((8, 8, 1))
    return k.Model(i, k.layers.Conv2D(3, 2, strides=2)(i))
'''


def _optimize_and_deploy(tmp_path: Path, recipe: str) -> tuple[str, float, float]:
    """Optimize ``recipe`` and deploy the run to the local board through the CLI: what optimize said, and the
    final model's accuracy on the host and on the board."""
    out = tmp_path / "run"
    done = run_cli("optimize", str(write_recipe(tmp_path, recipe)), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    deployed = run_cli("deploy", str(out), "--target", "local", "--no-history",
                       env={"EDGEPIPE_LOCAL_WORKDIR": str(tmp_path / "board")})  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    host = json.loads((out / "optimize.json").read_text())["final"]["accuracy"]
    board = json.loads((out / "deploy-local.json").read_text())["checks"]["device_accuracy"]
    return " ".join(done.stderr.split()), host, board


@pytest.mark.slow
def test_a_segmentation_model_trains_converts_and_is_scored_per_pixel_on_the_board(tmp_path: Path) -> None:
    (tmp_path / "seg.py").write_text(SEGMENTATION)
    recipe = """
    name: segmentation
    model: {source: seg:segmenter, train: {epochs: 6, learning_rate: 0.003}}
    data: {source: seg:ink_masks}
    stages: [{kind: ptq}]
    gates: {max_accuracy_drop: null}
    """
    _, host, board = _optimize_and_deploy(tmp_path, recipe)
    assert host > 0.8  # per pixel; the old flattened argmax scored about 0.0
    assert board == pytest.approx(host, abs=1e-6)

    wrong = write_recipe(tmp_path, recipe.replace("seg:segmenter", "seg:wrong_size"), name="wrong.yaml")
    refused = run_cli("optimize", str(wrong), "--out", str(tmp_path / "wrong"))
    assert refused.returncode == 2, refused.stderr[-2000:]
    said = " ".join(refused.stderr.split())
    assert "the labels have shape (8, 8) per sample but the model's output has shape (4, 4, 3)" in said
    distilled = recipe.replace("stages: [{kind: ptq}]", "stages: [{kind: distill}]")
    refused = run_cli("optimize", str(write_recipe(tmp_path, distilled, name="kd.yaml")), "--out", str(tmp_path / "kd"))
    assert refused.returncode == 2 and "distillation takes one answer per sample" in " ".join(refused.stderr.split())


@pytest.mark.parametrize(
    ("output", "labels", "width"),
    [((10,), (), 10), ((1,), (), 1), ((8, 8, 3), (8, 8), 3), ((8, 8, 1), (8, 8), 1), ((3,), (3,), 1),
     ((None, 5), (7,), 5), ((10,), (2,), None), ((4, 4, 3), (8, 8), None)],
)  # fmt: skip
def test_how_many_values_make_an_answer_is_read_from_the_labels_alike_on_host_and_agent(
    output: tuple, labels: tuple, width: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgepipe.tasks import answer_width

    assert answer_width(output, labels) == width
    if None not in output:  # the agent reads concrete shapes from the interpreter
        assert agent_module(monkeypatch).answer_width(list(output), list(labels)) == width


def test_a_multi_label_head_is_scored_per_label_on_host_and_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    probabilities = rng.random((20, 3)).astype(np.float32)
    labels = rng.integers(0, 2, (20, 3))
    by_hand = float(np.mean((probabilities > 0.5) == labels))
    assert score("classification", [probabilities], [labels], (0.5,), (1,)).value == pytest.approx(by_hand)
    agent = agent_module(monkeypatch)
    assert agent.score(np, "classification", [probabilities], [labels], [0.5], [1]) == pytest.approx([by_hand])


@pytest.mark.slow
def test_a_multi_label_head_trains_and_is_scored_per_label_on_the_board(tmp_path: Path) -> None:
    (tmp_path / "seg.py").write_text(SEGMENTATION)
    recipe = """
    name: tags
    model: {source: seg:tagger, train: {epochs: 6, learning_rate: 0.003}}
    data: {source: seg:tags}
    fine_tune: {epochs: 1}
    stages: [{kind: qat}]
    gates: {max_accuracy_drop: null}
    """
    said, host, board = _optimize_and_deploy(tmp_path, recipe)
    assert "multi-hot labels, 3 yes/no labels per sample" in said
    assert host > 0.8  # per label: with one-hot checks the labels were refused
    assert board == pytest.approx(host, abs=1e-6)

    softmax = write_recipe(tmp_path, recipe.replace("seg:tagger", "seg:softmax_tagger"), name="softmax.yaml")
    refused = run_cli("optimize", str(softmax), "--out", str(tmp_path / "softmax"))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "the labels are multi-hot (3 yes/no labels per sample) but the model's output is a softmax" in " ".join(
        refused.stderr.split()
    )
