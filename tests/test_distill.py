"""Distillation: the loss is Hinton's, a stage that distills says so, and a distilled recipe runs end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli, write_recipe

from edgepipe.config import DistillSettings
from edgepipe.examples.digits import tiny_mlp
from edgepipe.optimization.distill import compile_distilled
from edgepipe.tasks import Task

pytestmark = pytest.mark.slow


def _loss(alpha: float, temperature: float, labels: np.ndarray, teacher: np.ndarray, student_logits: Any) -> float:
    model = tiny_mlp()
    compile_distilled(model, Task(), DistillSettings(alpha=alpha, temperature=temperature), 0.001)
    packed = np.concatenate([labels[:, None], teacher], axis=1).astype(np.float32)
    return float(np.mean(model.loss(packed, student_logits).numpy()))


def _hinton(labels: np.ndarray, teacher: np.ndarray, student: np.ndarray, t: float, alpha: float) -> float:
    """alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T), written out in numpy (logits in)."""

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    rows = np.arange(len(labels))
    ce = -log_softmax(student)[rows, labels.astype(int)].mean()
    soft = np.exp(log_softmax(teacher / t))
    kl = (soft * (log_softmax(teacher / t) - log_softmax(student / t))).sum(axis=1).mean()
    return float(alpha * ce + (1 - alpha) * t * t * kl)


def test_the_loss_is_cross_entropy_plus_the_softened_kl() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 32).astype(np.float32)
    teacher = rng.normal(size=(32, 10)).astype(np.float32)
    student = rng.normal(size=(32, 10)).astype(np.float32)
    t = 4.0
    ce, kl = _hinton(labels, teacher, student, t, 1.0), _hinton(labels, teacher, student, t, 0.0) / (t * t)
    assert ce > 1.0 and kl > 0.01  # both terms are there to be weighed
    assert _loss(1.0, t, labels, teacher, student) == pytest.approx(ce, rel=1e-4)
    assert _loss(0.0, t, labels, teacher, student) == pytest.approx(t * t * kl, rel=1e-4)
    assert _loss(0.3, t, labels, teacher, student) == pytest.approx(0.3 * ce + 0.7 * t * t * kl, rel=1e-4)
    assert _loss(0.0, t, labels, student, student) == pytest.approx(0.0, abs=1e-5)  # student = teacher


RECIPE = """
name: channel-prune-distill-qat
model: {source: edgepipe.examples.cnns:resnet, train: {epochs: 2, learning_rate: 0.003}}
data: {source: edgepipe.examples.digits:load}
fine_tune: {epochs: 1, learning_rate: 0.001}
stages:
  - {kind: channel_prune, ratio: 0.5, criterion: l1, round_to: 4}
  - {kind: distill, distill: {temperature: 4, alpha: 0.3}, fine_tune: {epochs: 2}}
  - kind: qat
    fine_tune: {distill: {temperature: 2, alpha: 0.5}}
convert: {representative_samples: 64}
gates: {max_accuracy_drop: 50}
"""


def test_a_recipe_that_distills_records_and_shows_it(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, RECIPE)
    done = run_cli("optimize", str(recipe), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    import json

    stages = json.loads((tmp_path / "run" / "optimize.json").read_text())["stages"]
    assert [s["kind"] for s in stages] == ["channel_prune", "distill", "qat"]
    assert "distilled_from" not in stages[0]["details"]
    assert stages[1]["details"]["distilled_from"] == {"teacher": "the float model", "temperature": 4.0, "alpha": 0.3}
    assert stages[2]["details"]["distilled_from"]["temperature"] == 2.0
    assert "2. distill +KD" in done.stdout and "3. qat (QAT) +KD" in done.stdout
    assert stages[1]["training"]["accuracy"], "the distilled fine-tuning reports accuracy on the labels"
    losses = stages[1]["training"]["loss"]
    assert len(losses) == 2 and losses[-1] < losses[0], losses  # the distillation loss decreases


def test_a_teacher_file_that_is_missing_is_named_before_any_training(tmp_path: Path) -> None:
    body = RECIPE.replace("{temperature: 4, alpha: 0.3}", "{teacher: nowhere.keras}")
    started = time.monotonic()
    done = run_cli("optimize", str(write_recipe(tmp_path, body)), "--out", str(tmp_path / "run"))
    assert done.returncode == 2, done.stderr
    assert "stages[1] (distill): distill.teacher:" in done.stderr and "nowhere.keras does not exist" in done.stderr
    assert "training" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
    assert time.monotonic() - started < 60, "failed at recipe load, not after training the float model"


def test_each_output_distills_from_the_teachers_output_at_the_same_place() -> None:
    """Two heads, one giving logits and one softmax probabilities: each gets Hinton's loss on its own packed
    targets, and the teacher's probabilities are packed as logits."""
    from edgepipe.examples.tasks import two_heads, two_heads_data
    from edgepipe.optimization.distill import packed_targets

    data = two_heads_data()
    teacher, student = two_heads(), two_heads()
    task = Task.of(student)
    assert task.probabilities == (False, True)
    packed = packed_targets(teacher, data, task, Task.of(teacher))
    digit, high = teacher.predict(data.keras_x("train"), verbose=0)
    assert [p.shape for p in packed] == [(data.train_samples, 11), (data.train_samples, 3)]
    assert np.array_equal(packed[0][:, 0], data.y_train[0]) and np.array_equal(packed[1][:, 0], data.y_train[1])
    assert np.allclose(packed[0][:, 1:], digit) and np.allclose(packed[1][:, 1:], np.log(high), atol=1e-5)

    compile_distilled(student, task, DistillSettings(alpha=0.3, temperature=2.0), 0.001)
    assert len(student.loss) == 2
    rng = np.random.default_rng(0)
    student_digit = rng.normal(size=(16, 10)).astype(np.float32)
    student_high = rng.normal(size=(16, 2)).astype(np.float32)
    probabilities = np.exp(student_high) / np.exp(student_high).sum(axis=1, keepdims=True)
    for loss, rows, logits, given in (
        (student.loss[0], packed[0][:16], student_digit, student_digit),
        (student.loss[1], packed[1][:16], student_high, probabilities),
    ):
        want = _hinton(rows[:, 0], rows[:, 1:], logits, 2.0, 0.3)
        assert float(np.mean(loss(rows, given).numpy())) == pytest.approx(want, rel=1e-4)


def test_a_mixed_models_outputs_distill_each_by_its_own_task() -> None:
    """A class head (softmax) next to a value head: Hinton's loss on the first, alpha * MSE(targets) + (1 -
    alpha) * MSE(teacher) on the second (the classification loss on every output before)."""
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.Input((4,))
    student = k.Model(inputs, [k.layers.Dense(3, activation="softmax")(inputs), k.layers.Dense(2)(inputs)])
    task = Task.of(student, ["classification", "regression"], [np.zeros(4, np.int64), np.zeros((4, 2))])
    compile_distilled(student, task, DistillSettings(alpha=0.3, temperature=2.0), 0.001)
    rng = np.random.default_rng(1)
    labels, teacher = rng.integers(0, 3, 16).astype(np.float32), rng.normal(size=(16, 3)).astype(np.float32)
    logits = rng.normal(size=(16, 3)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    packed = np.concatenate([labels[:, None], teacher], axis=1)
    assert float(np.mean(student.loss[0](packed, probabilities).numpy())) == pytest.approx(
        _hinton(labels, teacher, logits, 2.0, 0.3), rel=1e-4
    )
    targets, taught, values = (rng.normal(size=(16, 2)).astype(np.float32) for _ in range(3))
    want = 0.3 * np.mean((targets - values) ** 2) + 0.7 * np.mean((taught - values) ** 2)
    given = np.concatenate([targets, taught], axis=1)
    assert float(np.mean(student.loss[1](given, values).numpy())) == pytest.approx(want, rel=1e-5)


def _teacher_file(path: Path, classes: int) -> Path:
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.layers.Input((8, 8, 1))
    k.Model(inputs, k.layers.Dense(classes)(k.layers.Flatten()(inputs))).save(path)
    return path


def test_a_teacher_for_another_task_is_refused_with_both_shapes_before_training(tmp_path: Path) -> None:
    _teacher_file(tmp_path / "five.keras", 5)
    body = RECIPE.replace("{temperature: 4, alpha: 0.3}", "{teacher: five.keras}")
    started = time.monotonic()
    done = run_cli("optimize", str(write_recipe(tmp_path, body)), "--out", str(tmp_path / "run"))
    assert done.returncode == 2, done.stderr
    assert "stages[1] (distill): distill.teacher:" in done.stderr
    assert "gives outputs (5) but the model gives (10)" in done.stderr and "Traceback" not in done.stderr
    assert "hint: name a teacher trained for the same task" in done.stderr
    assert not (tmp_path / "run" / "model.tflite").exists()
    assert time.monotonic() - started < 60, "failed when the teacher was loaded, before the float model trained"


def test_a_teacher_file_that_is_not_a_model_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.keras").write_bytes(b"not a zip archive")
    body = RECIPE.replace("{temperature: 4, alpha: 0.3}", "{teacher: broken.keras}")
    done = run_cli("optimize", str(write_recipe(tmp_path, body)), "--out", str(tmp_path / "run"))
    assert done.returncode == 3, done.stderr
    assert "stages[1] (distill):" in done.stderr and "broken.keras is not a valid .keras file" in done.stderr
    assert "Traceback" not in done.stderr
