"""A model whose outputs do different jobs (a class head next to a value head, ``task: [classification,
regression]``), through the real CLI: each output trains with its own loss and is scored by its own metric on the
host and on the board, the accuracy gates judge the class outputs and the error gate the value outputs.

Before, such a model was refused ("the task is the same for every output ... mixed tasks is not supported").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_recipe
from test_tasks import agent_module

from edgepipe.errors import ConfigError
from edgepipe.keras_compat import keras
from edgepipe.score_parts import part
from edgepipe.tasks import Task, score

MODELS = '''
import numpy as np
import tf_keras as k
from edgepipe.examples import digits


def _arrays():
    """The digit (a class label) and two values: how much ink (mean pixel x 4) and whether it is odd (0.0/1.0)."""
    d = digits.load()
    values = lambda x, y: np.stack([x.mean(axis=(1, 2, 3)) * 4, (y % 2).astype("float32")], axis=1)
    return d, values(d.x_train[0], d.y_train[0]), values(d.x_test[0], d.y_test[0])


def value_first():
    """Outputs in the model's order: the values, then the digit."""
    d, train, test = _arrays()
    return {"x_train": d.x_train[0], "x_test": d.x_test[0], "y_train": [train, d.y_train[0]],
            "y_test": [test, d.y_test[0]]}


def by_name():
    """The same targets by output name; sorted (digit, ink) is not the model's order (ink, digit)."""
    d, train, test = _arrays()
    return {"x_train": d.x_train[0], "x_test": d.x_test[0], "y_train": {"ink": train, "digit": d.y_train[0]},
            "y_test": {"ink": test, "digit": d.y_test[0]}}


def two_heads():
    """Conv -> BN -> ReLU blocks and two heads: the values first, a softmax over the digits second."""
    i = k.layers.Input((8, 8, 1))
    h = k.layers.ReLU()(k.layers.BatchNormalization()(k.layers.Conv2D(16, 3, padding="same", use_bias=False)(i)))
    h = k.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(h)
    h = k.layers.GlobalAveragePooling2D()(k.layers.ReLU()(k.layers.BatchNormalization()(h)))
    return k.Model(i, [k.layers.Dense(2, name="ink")(h), k.layers.Dense(10, activation="softmax", name="digit")(h)])
'''

RECIPE = """
name: mixed
task: [regression, classification]
model: {source: heads:two_heads, train: {epochs: 12, learning_rate: 0.003}}
data: {source: heads:value_first}
fine_tune: {epochs: 1, learning_rate: 0.0005}
stages: [{kind: qat}]
gates: {max_accuracy_drop: 3.0, max_error_increase: 0.5}
"""


def _optimized(tmp_path: Path, recipe: str) -> tuple[str, dict]:
    """``recipe`` on the models above through ``edgepipe optimize``: what it printed and optimize.json."""
    (tmp_path / "heads.py").write_text(MODELS)
    done = run_cli("optimize", str(write_recipe(tmp_path, recipe)), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads((tmp_path / "run" / "optimize.json").read_text())


def _two_heads() -> object:
    k = keras()
    i = k.Input((4,))
    return k.Model(i, [k.layers.Dense(3, activation="softmax", name="cls")(i), k.layers.Dense(2, name="val")(i)])


def test_each_output_trains_and_scores_by_its_own_task_alike_on_host_and_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k = keras()
    task = Task.of(_two_heads(), ["classification", "regression"], [np.zeros(5, np.int64), np.zeros((5, 2))])
    assert task.kind == "mixed" and task.kinds == ("classification", "regression") and task.spec == list(task.kinds)
    cross_entropy, error = task.losses()
    assert (
        isinstance(cross_entropy, k.losses.SparseCategoricalCrossentropy)
        and not cross_entropy.get_config()["from_logits"]
    )  # the softmax head gives probabilities
    assert isinstance(error, k.losses.MeanSquaredError) and task.keras_metrics() == ["accuracy", "mae"]

    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels, values = np.array([0, 1, 1, 2]), np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [2.0, 2.0]])
    predicted = values + np.array([[0.5, -0.5], [0.0, 0.0], [0.25, 0.25], [-1.0, 1.0]])
    scored = task.score([probabilities, predicted], [labels, values])
    # accuracy 2/4 on the class head, MAE (0.5 + 0.5 + 0 + 0 + 0.25 + 0.25 + 1 + 1) / 8 on the value head
    assert scored.per_output == (0.5, 0.4375) and scored.per_output_metric == ("accuracy", "mae")
    assert (scored.metric, scored.value) == ("accuracy", 0.5)  # the headline is the class outputs' accuracy
    assert part(scored.to_dict(), "mae") == 0.4375 and part(scored.to_dict(), "accuracy") == 0.5
    board = agent_module(monkeypatch).score(np, list(task.kinds), [probabilities, predicted], [labels, values])
    assert board == pytest.approx(list(scored.per_output), abs=1e-9)
    # only the class output has answers to agree on: the value output's change does not count
    assert task.agreement([probabilities, predicted], [probabilities, values]) == 1.0
    assert score("regression", [predicted], [values]).value == 0.4375  # the same number as a plain regressor's

    with pytest.raises(ConfigError, match=r"3 tasks listed but the model has 2 outputs \('cls', 'val'\)"):
        Task.of(_two_heads(), ["classification", "regression", "regression"])


@pytest.mark.slow
def test_a_value_head_next_to_a_class_head_optimizes_deploys_and_is_gated_per_output(tmp_path: Path) -> None:
    printed, record = _optimized(tmp_path, RECIPE)
    out = tmp_path / "run"
    final = record["final"]["metric"]
    assert final["per_output_metric"] == ["mae", "accuracy"] and record["baseline"]["loss"] == ["mse", "cross-entropy"]
    ink, digit = final["per_output"]
    assert digit > 0.8 and ink < 0.3, final  # each head learned from its own targets
    assert record["final"]["accuracy"] == digit and final["value"] == digit
    gates = {row["gate"]: row for row in record["gates"]}
    float_ink = record["baseline"]["keras_metric"]["per_output"][0]
    assert gates["max_error_increase"]["value"] == pytest.approx((ink - float_ink) / float_ink, abs=1e-4)
    assert "mae of the value output over" in gates["max_error_increase"]["meaning"]
    assert gates["max_accuracy_drop"]["passed"]
    said = " ".join(printed.split())
    assert f"per output (float Keras -> final): ink MAE {float_ink:.4g} -> {ink:.4g}, digit accuracy" in said

    deployed = run_cli("deploy", str(out), "--target", "local", "--no-history",
                       env={"EDGEPIPE_LOCAL_WORKDIR": str(tmp_path / "board")})  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    checks = json.loads((out / "deploy-local.json").read_text())["checks"]
    # the board read the outputs in the interpreter's order, each scored by its own task: the host's figures
    assert checks["device_accuracy"] == pytest.approx(digit, abs=1e-6)
    assert checks["error_metric"] == "mae" and checks["device_error"] == pytest.approx(ink, rel=1e-5)
    assert checks["accuracy_matches_host"] and checks["error_matches_host"]
    assert "mean absolute error (value outputs)" in deployed.stdout

    # compare: the value outputs are a check of their own (the accuracy check judges the class outputs)
    record = json.loads((out / "deploy-local.json").read_text())
    record["device"]["accuracy"]["per_output"][0] *= 1.5  # ink's error 50 % up, the digit accuracy the same
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps(record))
    compared = run_cli("compare", "-b", str(out / "deploy-local.json"), "-c", str(worse))
    said = " ".join(compared.stdout.split())
    assert compared.returncode == 7 and "value outputs" in said and "(+50.0%, limit +5%)" in said, said

    reported = run_cli("report", str(out))
    assert reported.returncode == 0, reported.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())  # validated against the schema before it was written
    assert report["metric"]["name"] == "accuracy" and report["metric"]["value_error"]["name"] == "mae"
    final_stage = next(stage for stage in report["stages"] if stage["final"])
    assert final_stage["host_value_error"] == pytest.approx(ink, rel=1e-5)
    assert final_stage["deployments"][0]["value_error"] == pytest.approx(ink, rel=1e-5)
    header = (out / "report.md").read_text().splitlines()[2]
    assert "| host accuracy | host MAE | local accuracy | local MAE | local p50 |" in header


@pytest.mark.slow
@pytest.mark.parametrize("task", ["[regression, classification]", "{digit: classification, ink: regression}"])
def test_targets_given_by_name_are_checked_by_task_in_the_models_order(tmp_path: Path, task: str) -> None:
    """Held sorted (digit, ink), the targets met the list [regression, classification] in the wrong order: the
    ink values were refused as class labels. They are checked once the model has put them in its order; tasks
    by output name (as compile(loss={...}) takes losses) are put in that order too."""
    recipe = RECIPE.replace("heads:value_first", "heads:by_name").replace("[{kind: qat}]", "[{kind: ptq}]")
    _, record = _optimized(tmp_path, recipe.replace("[regression, classification]", task))
    ink, digit = record["final"]["metric"]["per_output"]
    assert digit > 0.8 and ink < 0.3


@pytest.mark.parametrize(
    ("task", "data", "said"),
    [
        (
            "[regression, classification, regression]",
            "value_first",
            "the recipe lists 3 tasks (one per output) but the data gives 2 target arrays",
        ),
        (
            "[classification, regression]",  # the model's order is the other way round
            "value_first",
            "y_train[0] has shape (1347, 2) but is not one-hot (exactly one 1 per row) hint: give one integer class "
            "label per sample, or one-hot rows; the recipe's task lists this output as classification; list it as "
            "regression if it holds values",
        ),
        (
            "{digit: classification, inc: regression}",
            "value_first",
            "task: names inc, which the model does not have and leaves out ink (the model's outputs: ink, digit)",
        ),
        (
            "[classification, reconstruction]",
            "value_first",
            "task: reconstruction cannot be one output's task among others (its targets are the inputs)",
        ),
    ],
)
def test_a_task_list_that_does_not_fit_the_data_is_refused_before_training(
    tmp_path: Path, task: str, data: str, said: str
) -> None:
    (tmp_path / "heads.py").write_text(MODELS)
    recipe = RECIPE.replace("[regression, classification]", task).replace("heads:value_first", f"heads:{data}")
    done = run_cli("optimize", str(write_recipe(tmp_path, recipe)), "--out", str(tmp_path / "run"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert said in " ".join(done.stderr.split()) and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("task", "accepted"),
    [(["classification", "regression"], True), (["classification", "reconstruction"], False), ([], False),
     ("classification", True), (["classification", 3], False)],
)  # fmt: skip
def test_the_agent_takes_a_task_per_output_and_refuses_what_it_cannot_score(
    task: object, accepted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    from test_tasks import REPO

    monkeypatch.syspath_prepend(str(REPO / "device_agents"))
    protocol = importlib.import_module("edgepipe_agent.protocol")
    job = json.dumps({"protocol": protocol.JOB_PROTOCOL, "model": "m.tflite", "task": task})
    if accepted:
        assert protocol.check_job(job)["task"] == task
        return
    with pytest.raises(protocol.JobFailed, match="expected null, one of classification, regression, reconstruction"):
        protocol.check_job(job)


def test_a_dict_built_models_outputs_are_named_by_their_keys_and_unmatched_target_names_are_said() -> None:
    """``task: {cls: ...}`` and targets by name address a dict-built model's outputs by key, as Keras does; the
    layers were named dense_1, dense, and the mapping was refused ("names cls, value, which the model does not
    have")."""
    from edgepipe.data import Dataset
    from edgepipe.keras_compat import flat_io
    from edgepipe.models import unmatched_names

    k = keras()
    inputs = k.Input((4,))
    built = k.Model({"x": inputs}, {"value": k.layers.Dense(1)(inputs), "cls": k.layers.Dense(3)(inputs)})
    flat, said = flat_io(built, k.Model)
    assert list(flat.output_names) == ["cls", "value"]  # Keras' order: the keys sorted
    assert said[-1].startswith("layers named by their dict keys: dense") and said[-1].endswith("-> value")

    a = np.zeros((4, 4), np.float32)
    named = Dataset("d", a, (a[:, 0], a[:, :3]), a, (a[:, 0], a[:, :3]), output_names=("first", "second"))
    assert unmatched_names(flat, named) == [
        "the data's targets are named first, second, the model's outputs cls, value: taken in sorted order (first "
        "to cls, second to value); name them as the model's outputs to have them matched by name"
    ]
    assert unmatched_names(flat, Dataset("d", a, (a, a), a, (a, a), output_names=("value", "cls"))) == []
