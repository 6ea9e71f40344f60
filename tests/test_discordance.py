"""McNemar's test of the answers two models disagree on counts independent answers. A segmentation mask gives
64 per image, which are not: counted one by one, 3 images worse and 1 better read as 30 answers lost and 5
gained, "beyond chance" (p = 1e-5). The optimize gate and the board check now count samples when a sample
gives several answers, and keep counting answers when it gives one."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgepipe.config.recipe import Gates
from edgepipe.config.target import Target
from edgepipe.deployment.checks import deploy_failure, host_checks
from edgepipe.optimization import gates
from edgepipe.tasks import discordant, mcnemar

REPO = Path(__file__).resolve().parents[1]
SAMPLES = 20


def _masks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels of 20 4x4 masks (2 classes), a reference right but on 5 pixels of image 10, and another model
    wrong on 10 pixels of images 0, 1 and 2 and right on image 10."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (SAMPLES, 4, 4))
    right, wrong = np.eye(2)[labels], np.eye(2)[1 - labels]
    reference = right.copy()
    reference[10].reshape(-1, 2)[:5] = wrong[10].reshape(-1, 2)[:5]
    other = right.copy()
    for image in (0, 1, 2):
        other[image].reshape(-1, 2)[:10] = wrong[image].reshape(-1, 2)[:10]
    return labels, reference.astype(np.float32), other.astype(np.float32)


def test_the_optimize_gate_counts_images_not_pixels() -> None:
    labels, reference, other = _masks()
    counts = discordant([reference], [other], [labels], classes=[2])
    assert (counts["reference_right_other_wrong"], counts["reference_wrong_other_right"]) == (30, 5)
    assert counts["samples"] == {"reference_better": 3, "other_better": 1}
    assert counts["p_value"] == mcnemar(3, 1) == 0.625 and mcnemar(30, 5) < 1e-4  # what the pixels claimed
    final = {"metric": {"value": 0.9, "metric": "accuracy"}, "gzip_bytes": 1, "bytes": 1,
             "discordant_with_float_keras": counts}  # fmt: skip
    rows = gates.check(Gates(max_accuracy_drop=0.5), {"value": 0.97}, final, 10)
    said = gates.describe_failures(rows)
    assert (
        "30 answers lost and 5 gained against the float model, in 3 samples with fewer right and 1 with more: "
        "McNemar p = 0.625 over samples: within chance" in said
    ), said
    one = {"reference_right_other_wrong": 1, "reference_wrong_other_right": 1, "p_value": 1.0}
    assert gates.chance({"discordant": one, "passed": True}) == (
        "1 answer lost and 1 gained against the float model, McNemar p = 1"  # "1 answers" before
    )
    # one answer per sample: nothing changes (the samples are the answers)
    single = discordant([reference.reshape(-1, 2)], [other.reshape(-1, 2)], [labels.reshape(-1)])
    assert "samples" not in single and single["p_value"] == mcnemar(30, 5)


def test_the_board_check_counts_images_not_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "device_agents"))
    agent: Any = importlib.import_module("edgepipe_agent.evaluate")
    labels, host, board = _masks()
    found = agent.agreement(np, "classification", [host], [board], [labels], classes=[2])
    assert found["top1_discordant"] == [[30, 5]] and found["top1_discordant_samples"] == [3, 1]
    device = {"accuracy": {"samples": SAMPLES, "accuracy": 0.9, "value": 0.9, "metric": "accuracy",
                           "agreement": found}, "board": {}}  # fmt: skip
    inputs = type("Inputs", (), {"task": "classification", "host_accuracy": 0.97, "host": {},
                                 "host_score": {"value": 0.97, "metric": "accuracy"}})()  # fmt: skip
    target = Target(name="board", transport="local")
    checks = host_checks(inputs, device, target.measure, target)  # type: ignore[arg-type]
    assert checks["accuracy_discordant"]["samples"] == {"host_better": 3, "board_better": 1}
    assert checks["accuracy_discordant"]["p_value"] == 0.625
    error = deploy_failure({}, checks, target)
    assert error is not None and (
        "the board got 30 answers wrong that the host got right and 5 right that it got wrong, in 3 samples with "
        "fewer right and 1 with more: McNemar p = 0.62 over samples" in error.message
    ), error.message
    assert "within chance" in (error.hint or "")
