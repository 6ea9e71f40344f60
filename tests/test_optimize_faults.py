"""What goes wrong with a user's own model and data, through the real command where a user would meet it:
a native crash in training, a kill, a module beside the recipe, NaN data, one-hot labels, a failed gate, layers
QAT cannot take, a softmax head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, run_cli, write_recipe

from edgepipe.config import QatStage, TrainSettings
from edgepipe.data import from_arrays
from edgepipe.errors import ConfigError, ModelError
from edgepipe.optimization.base import History, StageContext
from edgepipe.progress import Progress
from edgepipe.rundir import RunDirectory
from edgepipe.tasks import Task

# A model module that lives next to its recipe and imports tf_keras at the top, as users write them.
CRASHING_MODULE = '''
"""A custom layer that reads address 0 (a real SIGSEGV in native code) when it runs in training mode."""
import ctypes

import tensorflow as tf
import tf_keras as keras


def _segfault(x):
    ctypes.string_at(0)
    return x


class CrashWhenTraining(keras.layers.Layer):
    def call(self, inputs, training=None):
        if not training:
            return inputs
        out = tf.numpy_function(_segfault, [inputs], tf.float32)
        out.set_shape(inputs.shape)
        return out


def model():
    return keras.Sequential([
        keras.layers.Input((8, 8, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        CrashWhenTraining(name="crash"),
        keras.layers.Dense(10, name="logits"),
    ])


def plain():
    return keras.Sequential([
        keras.layers.Input((8, 8, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="logits"),
    ])
'''

OWN_MODEL = """
name: own-model
model: {source: "mymodels:FACTORY", train: {epochs: 2, learning_rate: 0.01}}
data: {source: edgepipe.examples.digits:load}
fine_tune: {epochs: 1}
stages:
  - kind: prune
    target_sparsity: 0.5
    layers: {include: [hidden, logits]}
convert: {representative_samples: 16}
gates: {max_accuracy_drop: null}
"""


def user_project(tmp_path: Path, factory: str, train: bool = True) -> Path:
    (tmp_path / "mymodels.py").write_text(CRASHING_MODULE)
    body = OWN_MODEL.replace("FACTORY", factory)
    if not train:  # the float model is used as it is: the first training is the prune stage's
        body = body.replace(", train: {epochs: 2, learning_rate: 0.01}", "")
    return write_recipe(tmp_path, body)


def clean_env(tmp: Path | None = None) -> dict[str, str]:
    """The environment of a user who exported nothing: no TF_USE_LEGACY_KERAS, no PYTHONPATH (``tmp``: a
    TMPDIR of its own, created here, to see what a run leaves in it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "PYTHONPATH")}
    if tmp is not None:
        tmp.mkdir()
        env["TMPDIR"] = str(tmp)
    return env


def run_in(folder: Path, *args: str, tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgepipe", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        env=clean_env(tmp),
        timeout=600,
    )


def worker_processes(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", "edgepipe.optimization.worker"], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if marker in line]


@pytest.mark.slow
def test_own_module_beside_the_recipe_importing_tf_keras_just_works(tmp_path: Path) -> None:
    recipe = user_project(tmp_path, "plain")
    result = run_in(tmp_path, "optimize", recipe.name, "--out", "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model.tflite").is_file()
    assert "1. prune" in result.stdout
    assert "wrote run (final model: run/model.tflite)" in result.stdout  # as typed, not /tmp/pytest-.../run
    # stderr is a pipe here, as in a CI log: one plain line per epoch (the float model's 2, the prune stage's 1),
    # and no blank line left behind by a live bar.
    lines = result.stderr.splitlines()
    assert [line.strip().split("  ")[0] for line in lines if line.strip().startswith("epoch ")] == [
        "epoch 1/2",
        "epoch 2/2",
        "epoch 1/1",
    ], result.stderr
    assert "" not in [line.strip() for line in lines[: lines.index(next(x for x in lines if "done verifying" in x))]]


def test_a_factory_name_that_does_not_exist_fails_before_any_training(tmp_path: Path) -> None:
    recipe = user_project(tmp_path, "modle")
    started = time.monotonic()
    result = run_in(tmp_path, "optimize", recipe.name, "--out", "run")
    assert result.returncode == 2, result.stderr
    assert "model.source: module 'mymodels' has no function 'modle'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
    assert time.monotonic() - started < 30  # TensorFlow was not even imported


@pytest.mark.slow
def test_native_crash_in_a_stage_is_a_classified_error_and_leaves_nothing(tmp_path: Path) -> None:
    recipe = user_project(tmp_path, "model", train=False)
    result = run_in(tmp_path, "optimize", recipe.name, "--out", "run", tmp=tmp_path.parent / f"{tmp_path.name}-tmp")
    assert result.returncode == 3, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: optimize crashed during 'stage 1/1: prune': the training and conversion process was killed by "
        "SIGSEGV (Segmentation fault)"
    ], result.stderr[-3000:]
    assert "mymodels.py" in result.stderr  # the hint quotes the crashing frame
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["mymodels.py", "recipe.yaml"]
    assert worker_processes(str(tmp_path)) == []
    # the crashed child's temporary files (TensorFlow's traced pruning functions) went with it
    assert list((tmp_path.parent / f"{tmp_path.name}-tmp").iterdir()) == []


@pytest.mark.slow
def test_sigterm_stops_the_worker_and_removes_the_partial_run(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, TINY.replace("epochs: 15", "epochs: 400"))
    process = subprocess.Popen(
        [sys.executable, "-m", "edgepipe", "optimize", str(recipe), "--out", str(tmp_path / "run")],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(tmp_path.parent / f"{tmp_path.name}-tmp"),
    )
    assert process.stderr is not None
    for line in process.stderr:  # wait until the float model is training
        if "loading the model" in line:
            break
    time.sleep(3)
    assert list(tmp_path.glob(".run.partial-*")), "the run should be in progress"
    assert worker_processes(str(tmp_path))
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    assert not list(tmp_path.glob(".run*")) and not (tmp_path / "run").exists()
    assert worker_processes(str(tmp_path)) == []
    assert list((tmp_path.parent / f"{tmp_path.name}-tmp").iterdir()) == []  # nor any temporary file


def test_partial_runs_of_dead_processes_are_removed_by_the_next_run(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f".out.partial-{dead.stdout.strip()}"
    (abandoned / "stages").mkdir(parents=True)
    live = tmp_path / f".out.partial-{os.getppid()}"  # a process that is still running: another run
    live.mkdir()
    with RunDirectory(tmp_path / "out") as work:
        assert work.exists()
    assert not abandoned.exists()
    assert live.exists()


def test_nan_in_the_data_is_refused_at_load_time_naming_split_and_count(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((20, 8, 8, 1)).astype(np.float32)
    x_test = x.copy()
    x_test[3, 0, 0, 0] = np.nan
    x_test[5, 1, 1, 0] = np.inf
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.zeros(20, int), x_test=x_test, y_test=np.zeros(20, int))
    recipe = write_recipe(tmp_path, TINY.replace("edgepipe.examples.digits:load", "d.npz"))
    result = run_cli("optimize", str(recipe), "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "x_test holds 1 NaN and 1 infinite values (in 2 of 20 samples)" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_column_of_one_value_per_sample_is_refused_with_the_feature_axis_to_add(tmp_path: Path) -> None:
    # was "must be a numeric array of shape (samples, ...), got dtype int64 shape (20,)": it is numeric
    column = np.arange(20, dtype=np.int64)  # one CSV column
    np.savez(tmp_path / "d.npz", x_train=column, y_train=column % 2, x_test=column, y_test=column % 2)
    recipe = write_recipe(tmp_path, TINY.replace("edgepipe.examples.digits:load", "d.npz"))
    result = run_cli("optimize", str(recipe), "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    said = " ".join(result.stderr.split())
    assert "x_train has one value per sample (shape (20,)); a model input needs a feature axis" in said, said
    assert "hint: return x_train as x[:, None] (shape (20, 1)) for a model Input((1,))" in said
    assert "Traceback" not in said and not (tmp_path / "run").exists()


def test_the_data_function_runs_once_per_run_and_the_child_gets_the_checked_arrays(tmp_path: Path) -> None:
    """It ran twice (the CLI's check, then the optimizing child): an image folder was decoded twice."""
    (tmp_path / "counted.py").write_text(
        "from pathlib import Path\n"
        "from edgepipe.examples import digits\n"
        "def load():\n"
        "    with open(Path(__file__).with_name('calls.txt'), 'a') as calls:\n"
        "        calls.write('called\\n')\n"
        "    return digits.load()\n"
    )
    recipe = TINY.replace("edgepipe.examples.digits:load", "counted:load").replace("  - kind: prune\n", "")
    recipe = recipe.replace("    target_sparsity: 0.5\n  - kind: cluster\n    clusters: 16\n", "")
    result = run_cli("optimize", str(write_recipe(tmp_path, recipe)), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "calls.txt").read_text().splitlines() == ["called"]
    assert not list((tmp_path / "run").glob(".checked-data*"))  # the hand-off does not stay in the run


def test_checked_data_reaches_the_child_as_it_was(tmp_path: Path) -> None:
    from edgepipe.data import Dataset, read_checked, write_checked

    rng = np.random.default_rng(0)
    a, b = rng.random((6, 4), dtype=np.float32), rng.random((6, 2, 3), dtype=np.float32)
    data = Dataset("two-in", (a, b), (np.arange(6), a[:, :1]), (a[:3], b[:3]), (np.arange(3), a[:3, :1]),
                   notes=("y_train: one-hot labels read as class indices", "ünïcode"))  # fmt: skip
    write_checked(tmp_path / "d.npz", data)
    back = read_checked(tmp_path / "d.npz")
    assert back.name == "two-in" and back.notes == data.notes
    for key in ("x_train", "y_train", "x_test", "y_test"):
        got, want = getattr(back, key), getattr(data, key)
        assert len(got) == len(want), key
        assert all(np.array_equal(g, w) and g.dtype == w.dtype for g, w in zip(got, want, strict=True)), key
    named = from_arrays({"x_train": {"b": a, "a": a}, "y_train": np.arange(6), "x_test": {"a": a, "b": a},
                         "y_test": np.arange(6)}, "d", "r.yaml", "data.source")  # fmt: skip
    write_checked(tmp_path / "n.npz", named)
    assert named.input_names == ("a", "b") == read_checked(tmp_path / "n.npz").input_names
    assert named.output_names == () == read_checked(tmp_path / "n.npz").output_names
    with pytest.raises(ConfigError, match="x_train and x_test must be dicts of the same names"):
        from_arrays({"x_train": {"a": a}, "y_train": np.arange(6), "x_test": {"b": a}, "y_test": np.arange(6)},
                    "d", "r.yaml", "data.source")  # fmt: skip
    empty = Dataset("unlabelled", a, (), a, ())
    write_checked(tmp_path / "e.npz", empty)
    assert read_checked(tmp_path / "e.npz").y_train == ()


def test_one_hot_labels_are_read_as_classes_and_said_so() -> None:
    x = np.zeros((6, 4), np.float32)
    labels = np.array([0, 2, 1, 2, 0, 1])
    data = from_arrays(
        {"x_train": x, "y_train": np.eye(3)[labels], "x_test": x, "y_test": labels}, "d", "r.yaml", "data.source"
    )
    np.testing.assert_array_equal(data.y_train[0], labels)
    assert data.notes == ("y_train: one-hot labels (6 x 3) read as class indices",)
    multi_label = np.eye(3)[labels] + np.eye(3)[(labels + 1) % 3]  # kept as they are: a multi-label head's
    data = from_arrays({"x_train": x, "y_train": multi_label, "x_test": x, "y_test": multi_label}, "d", "r", "data")
    np.testing.assert_array_equal(data.y_train[0], multi_label)
    assert data.notes[0] == "y_train: multi-hot labels, 3 yes/no labels per sample (a multi-label head)"
    with pytest.raises(ConfigError, match=r"y_train has shape \(6, 3\) but is not one-hot"):
        from_arrays({"x_train": x, "y_train": multi_label / 3, "x_test": x, "y_test": labels}, "d", "r", "data")
    ink = x.sum(axis=1) + 0.5  # a regression head's targets next to a class head's labels
    arrays = {"x_train": x, "y_train": [labels, ink], "x_test": x, "y_test": [labels, ink]}
    with pytest.raises(ConfigError, match=r"y_train\[1\] must hold integer class labels") as mixed:
        from_arrays(arrays, "d", "r", "data")
    assert "list one task per output, in the model's output order: task: [classification, regression]" in (
        mixed.value.hint or ""
    )
    data = from_arrays(arrays, "d", "r", "data", task=["classification", "regression"])  # what the hint says
    assert (data.y_train[0].dtype, data.y_train[1].dtype) == (np.int64, np.float32)
    names = np.array(["cat", "dog", "cat", "owl", "dog", "cat"])  # class names, as a CSV gives them
    with pytest.raises(ConfigError, match=r"y_train must be numeric, got dtype <U3 \(class names such as 'cat'\)") as n:
        from_arrays({"x_train": x, "y_train": names, "x_test": x, "y_test": labels}, "d", "r", "data")
    assert "np.unique(names, return_inverse=True)" in (n.value.hint or "")


@pytest.mark.slow
def test_a_failed_gate_still_prints_the_results_table(tmp_path: Path) -> None:
    body = (
        TINY.replace("gates: {max_accuracy_drop: 10}", "gates: {max_gzip_bytes: 10, max_accuracy_drop: 10}")
        .replace("  - kind: prune\n    target_sparsity: 0.5\n  - kind: cluster\n    clusters: 16\n  - kind: qat\n", "")
        .replace("stages:\n", "stages:\n  - kind: ptq\n")
    )
    result = run_cli("optimize", str(write_recipe(tmp_path, body)), "--out", str(tmp_path / "run"))
    assert result.returncode == 6, result.stderr
    assert "1. ptq" in result.stdout and "gate max_gzip_bytes: FAIL" in result.stdout
    assert f"kept {tmp_path / 'run.failed'}" in result.stdout.replace("\n", "")
    # the accuracy gate says what the answers behind its figure are: lost and gained against the float model
    record = json.loads((tmp_path / "run.failed" / "optimize.json").read_text())
    row = next(r for r in record["gates"] if r["gate"] == "max_accuracy_drop")
    lost, gained = row["discordant"]["reference_right_other_wrong"], row["discordant"]["reference_wrong_other_right"]
    samples, agreement = record["final"]["agreement"]["test_samples"], record["final"]["agreement"]["top1_agreement"]
    assert (lost - gained) / samples * 100 == pytest.approx(row["value"], abs=1e-3)  # exactly the drop
    assert lost + gained <= round((1 - agreement) * samples)  # only answers that changed can differ in rightness
    said = " ".join(result.stdout.split())
    answers = "answer" if lost == 1 else "answers"  # "1 answers lost" before
    assert f"{lost} {answers} lost and {gained} gained against the float model, McNemar p =" in said


def test_an_accuracy_gate_tells_a_drop_beyond_chance_from_one_within_it() -> None:
    from edgepipe.config.recipe import Gates
    from edgepipe.optimization import gates
    from edgepipe.tasks import discordant

    labels = np.arange(400) % 4
    right = np.eye(4)[labels]
    wrong = np.eye(4)[(labels + 1) % 4]
    float_out = np.where((np.arange(400) < 380)[:, None], right, wrong)  # 380 right
    few = float_out.copy()
    few[:6], few[380:383] = wrong[:6], right[380:383]  # 6 lost, 3 gained: 0.75 points, a coin could do that
    many = float_out.copy()
    many[:30] = wrong[:30]  # 30 lost, none gained: 7.5 points
    for outputs, lost, gained, verdict in ((few, 6, 3, "within chance"), (many, 30, 0, "beyond chance")):
        counts = discordant([float_out], [outputs], [labels])
        assert (counts["reference_right_other_wrong"], counts["reference_wrong_other_right"]) == (lost, gained)
        drop = (lost - gained) / 4  # points on 400 samples
        final = {"metric": {"value": 0.95 - drop / 100, "metric": "accuracy"}, "gzip_bytes": 1, "bytes": 1,
                 "discordant_with_float_keras": counts}  # fmt: skip
        rows = gates.check(Gates(max_accuracy_drop=0.5), {"value": 0.95}, final, 10)
        assert not rows[0]["passed"] and verdict in gates.describe_failures(rows)
        advice = gates.advice(rows, 400)
        assert ("test on more samples" in advice) == (verdict == "within chance"), advice
    assert discordant([float_out], [float_out], [labels])["p_value"] == 1.0  # nothing changed


def stage_context(data: object) -> StageContext:
    return StageContext(
        data=data,  # type: ignore[arg-type]
        train=TrainSettings(epochs=1),
        seed=0,
        progress=Progress(),
        history=History(),
        where="r.yaml: stages[0]",
        label="qat",
        task=Task(),
    )


def test_qat_names_every_unsupported_layer_in_one_message(digits: object) -> None:
    from edgepipe.keras_compat import keras
    from edgepipe.optimization import qat

    k = keras()
    inputs = k.layers.Input((8, 8, 1))
    x = k.layers.BatchNormalization(name="input_bn")(inputs)  # reads the input: left to the converter
    x = k.layers.Conv2D(4, 3, name="conv")(x)
    x = k.layers.BatchNormalization(name="conv_bn")(x)  # folded into conv: supported
    x = k.layers.GroupNormalization(groups=2, name="groups")(x)
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(8, name="dense")(x)
    x = k.layers.EinsumDense("ab,bc->ac", 8, name="mix")(x)
    model = k.Model(inputs, k.layers.Dense(10, name="logits")(x))
    with pytest.raises(ModelError) as caught:
        qat.apply(model, QatStage(kind="qat"), stage_context(digits))
    message = caught.value.message
    assert "'groups' (GroupNormalization)" in message and "'mix' (EinsumDense)" in message
    assert "input_bn" not in message and "conv_bn" not in message and "conv'" not in message
    assert "exclude: ['groups', 'mix']" in (caught.value.hint or "")


def test_a_softmax_head_is_fine_tuned_on_probabilities_even_when_wrapped() -> None:
    from edgepipe import models
    from edgepipe.examples.cnns import softmax_cnn
    from edgepipe.keras_compat import tfmot

    model = softmax_cnn()
    task = Task.of(model)
    assert task.probabilities == (True,)
    wrapped = tfmot().sparsity.keras.prune_low_magnitude(model)
    assert Task.of(wrapped).probabilities == (False,)  # what reading the wrapped model gets wrong
    models.compile_for(wrapped, task, 1e-3)
    assert wrapped.loss.get_config()["from_logits"] is False


def test_module_beside_the_recipe_is_found_without_pythonpath(tmp_path: Path) -> None:
    from edgepipe.sources import resolve

    (tmp_path / "beside.py").write_text(textwrap.dedent("def load():\n    return 42\n"))
    entry = resolve("beside:load", tmp_path, "r.yaml", "data.source", "x")
    assert entry.load("r.yaml", "data.source")() == 42  # type: ignore[union-attr]


def test_quick_epochs_in_a_log_print_the_first_and_the_last_only() -> None:
    """40 epochs of a second each would fill a CI log's screen: off a terminal only the first, the last, and one
    line at most every EPOCH_LINE_EVERY_S in between are printed."""
    from edgepipe.cli.console import stderr
    from edgepipe.cli.optimize import ConsoleProgress

    progress = ConsoleProgress()
    with stderr.capture() as captured:
        progress.training_started("training the float model", 40)
        for epoch in range(1, 41):
            progress.epoch_done(epoch, {"loss": 1.0 / epoch, "accuracy": 0.5})
        progress.training_done()
    lines = [line.strip().split("  ")[0] for line in captured.get().splitlines()]
    assert lines == ["epoch 1/40", "epoch 40/40"], captured.get()
