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


def test_the_loss_is_cross_entropy_plus_the_softened_kl() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 32).astype(np.float32)
    teacher = rng.normal(size=(32, 10)).astype(np.float32)
    student = rng.normal(size=(32, 10)).astype(np.float32)

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    ce = -log_softmax(student)[np.arange(32), labels.astype(int)].mean()
    t = 4.0
    p_teacher = np.exp(log_softmax(teacher / t))
    kl = (p_teacher * (log_softmax(teacher / t) - log_softmax(student / t))).sum(axis=1).mean()
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
