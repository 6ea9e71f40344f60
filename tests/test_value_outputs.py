"""Several outputs measured by an error (a box in [0, 1] beside an age in years): each is judged against its own
error, by the optimize gate, the board-against-host check and ``compare``. Judged by their mean, the age's
error decided: the box 25 % worse moved the mean 0.2 % and passed all three."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import run_cli, write_recipe
from test_compare import synthetic

from edgepipe.config.recipe import Gates
from edgepipe.config.target import Target
from edgepipe.deployment.checks import deploy_failure, host_checks
from edgepipe.errors import AccuracyMismatch
from edgepipe.optimization import gates
from edgepipe.reporting.verdict import VerdictSettings, compare
from edgepipe.score_parts import error_changes, worst_growth


def _scored(box: float, age: float, mixed: bool = False) -> dict[str, Any]:
    """A score of a model with a box output and an age output (and, ``mixed``, a class output between them)."""
    if mixed:
        return {"metric": "accuracy", "value": 0.9, "per_output": [box, 0.9, age],
                "per_output_metric": ["mae", "accuracy", "mae"]}  # fmt: skip
    return {"metric": "mae", "value": round((box + age) / 2, 6), "per_output": [box, age]}


def _error_gate(float_metric: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    rows = gates.check(Gates(max_accuracy_drop=None, max_error_increase=0.1), float_metric, final, 10)
    return next(row for row in rows if row["gate"] == "max_error_increase")


@pytest.mark.parametrize("mixed", [False, True], ids=["regression", "mixed"])
def test_the_gate_judges_each_value_output_against_its_own_float_error(mixed: bool) -> None:
    final = {"metric": _scored(0.1, 10.0, mixed), "gzip_bytes": 10, "bytes": 10}
    row = _error_gate(_scored(0.08, 10.0, mixed), final)
    assert row["value"] == pytest.approx(0.25) and row["passed"] is False  # the mean grew 0.2 %
    assert row["meaning"] == (
        "relative increase of the mae of output 0 (the value output that grew most) over the float model"
    )
    within = {"metric": _scored(0.085, 10.5, mixed), "gzip_bytes": 10, "bytes": 10}
    row = _error_gate(_scored(0.08, 10.0, mixed), within)
    assert row["value"] == pytest.approx(0.0625) and row["passed"] is True  # each output within 10 %


def test_an_error_grown_from_exactly_zero_is_the_worst_growth() -> None:
    changes = error_changes(_scored(0.01, 10.0), _scored(0.0, 5.0))
    assert [c.relative for c in changes] == [None, 1.0]
    worst = worst_growth(changes)
    assert worst is not None and worst.output == 0
    assert worst.describe("mae") == "output 0: mae 0 -> 0.01 (from 0)"
    assert error_changes(_scored(0.1, 10.0), {"metric": "mae", "value": 1.0, "per_output": [1.0]}) == []


def test_the_board_check_fails_on_one_output_its_mean_would_hide() -> None:
    host, board = _scored(0.1, 10.0), _scored(0.13, 10.0)  # the box 30 % worse on the board, the mean 0.3 %
    device = {"accuracy": {**board, "samples": 450}, "board": {}}
    inputs = SimpleNamespace(task="regression", host_accuracy=None, host={}, host_score=host)
    target = Target(name="board", transport="local")
    checks = host_checks(inputs, device, target.measure, target)  # type: ignore[arg-type]
    assert abs(checks["error_relative_delta"]) < target.measure.error_tolerance  # the mean alone would pass
    assert checks["error_matches_host"] is False
    assert checks["error_largest_difference"] == {"output": 0, "host": 0.1, "device": 0.13, "relative": 0.3}
    error = deploy_failure({}, checks, target)
    assert isinstance(error, AccuracyMismatch)
    assert "mae 5.065 differs from the host's 5.05 by +0.30%; output 0: 0.13 against 0.1 (+30.00%)" in error.message


def test_compare_fails_a_candidate_whose_one_value_output_grew_beyond_the_limit() -> None:
    base, cand = synthetic([1.0] * 3, seed=12), synthetic([1.0] * 3, seed=12)
    for mixed, name in ((False, "accuracy"), (True, "value outputs")):
        base["device"]["accuracy"] = _scored(0.1, 10.0, mixed)
        cand["device"]["accuracy"] = _scored(0.125, 10.0, mixed)  # the mean: +0.25 %, limit +5 %
        verdict = compare(base, cand, VerdictSettings())
        failed = [c for c in verdict.checks if c.status == "fail"]
        assert verdict.status == "regression" and [c.name for c in failed] == [name]
        assert failed[0].message.endswith("; grown most: output 0: mae 0.1 -> 0.125 (+25.0%)")
        cand["device"]["accuracy"] = _scored(0.102, 10.1, mixed)  # each output within 5 %
        assert compare(base, cand, VerdictSettings()).status == "pass"


def test_the_farm_matrix_shows_a_mixed_models_value_error_beside_its_accuracy() -> None:
    """The matrix cell said only "acc 90.00 %" for a class head beside two value heads."""
    from edgepipe.farm.jobs import _summary
    from edgepipe.farm.report import _job_row, cell_text

    scored = {**_scored(0.1, 0.3, mixed=True), "accuracy": 0.9}  # the agent's block: the class outputs' accuracy
    record = {"device": {"accuracy": scored, "timing": {"latency_ms": {"p50": 0.5}}}}
    summary = _summary(record)
    assert (summary["error_metric"], summary["value_error"]) == ("mae", 0.2)  # the two value outputs' mean
    job = {"model": "m", "pool": "p", "state": "done", "outcome": "pass", "exit_code": 0, "board": "b1",
           "run_id": 1, "baseline_run_id": None, "summary": summary}  # fmt: skip
    assert (
        cell_text(_job_row(job, [{"board": "b1", "outcome": "pass"}]))
        == "pass · p50 500.0 µs · acc 90.00 % · mae 0.2 · on b1"
    )


BOXES = '''
import numpy as np
import tf_keras as k


def model():
    """A box in [0, 1] and a count of 20 to 44 from one small CNN."""
    i = k.layers.Input((8, 8, 1))
    h = k.layers.GlobalAveragePooling2D()(k.layers.Conv2D(8, 3, activation="relu")(i))
    return k.Model(i, [k.layers.Dense(4, name="box")(h), k.layers.Dense(1, name="count")(h)])


def data():
    rng = np.random.default_rng(3)
    x = rng.random((240, 8, 8, 1), dtype=np.float32)
    box = np.stack([x[:, :4].mean(axis=(1, 2, 3)), x[:, 4:].mean(axis=(1, 2, 3)),
                    x[:, :, :4].mean(axis=(1, 2, 3)), x[:, :, 4:].mean(axis=(1, 2, 3))], axis=1)
    count = 20 + 24 * x.mean(axis=(1, 2, 3), keepdims=True)
    return {"x_train": x[:200], "y_train": [box[:200], count[:200]], "x_test": x[200:],
            "y_test": [box[200:], count[200:]]}
'''


@pytest.mark.slow
def test_the_report_shows_each_value_output_on_the_host_and_on_the_board(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's error was the outputs' mean, which is the count's: the box's error never showed, in the
    tables or in the plots."""
    (tmp_path / "boxes.py").write_text(BOXES)
    recipe = write_recipe(tmp_path, """
    name: boxes
    task: regression
    model: {source: boxes:model, train: {epochs: 40, learning_rate: 0.02}}
    data: {source: boxes:data}
    stages: [{kind: ptq}]
    gates: {max_error_increase: null}
    """)  # fmt: skip
    run = tmp_path / "run"
    assert run_cli("optimize", str(recipe), "--out", str(run)).returncode == 0
    deployed = run_cli("deploy", "--target", "local", str(run), "--no-history", "--repeats", "1",
                       env={"EDGEPIPE_LOCAL_WORKDIR": str(tmp_path / "board")})  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    reported = run_cli("report", str(run))
    assert reported.returncode == 0, reported.stderr[-3000:]

    document = json.loads((run / "report.json").read_text())  # validated against the schema before it was written
    assert document["metric"]["value_outputs"] == [
        {"output": 0, "name": "box", "metric": "mae"}, {"output": 1, "name": "count", "metric": "mae"}
    ]  # fmt: skip
    final = next(stage for stage in document["stages"] if stage["final"])
    box, count = final["host_errors"]
    assert box < 1 < count and final["host_score"] == pytest.approx((box + count) / 2, abs=1e-5)
    errors = final["deployments"][0]["errors"]
    assert [e["output"] for e in errors] == [0, 1]
    assert [e["host"] for e in errors] == pytest.approx([box, count], rel=1e-4)  # optimize.json rounds to 6 digits

    page = (run / "report.html").read_text()
    assert '<th class="output">box MAE</th><th class="output">count MAE</th>' in page
    assert f'<td class="output">{box:.4g}</td><td class="output">{count:.4g}</td>' in page
    box_row, count_row = (f"{e['device']:.4g} vs host {e['host']:.4g} (+0.00%)" for e in errors)
    each = f"box MAE {box_row}; count MAE {count_row}"
    assert f"Each value output of ptq (final) on local: {each}" in page
    assert "<figcaption>Each value output&#39;s error (lower is better; a panel each) on the host" in page

    from edgepipe.reporting import plots

    drawn: list[Any] = []
    monkeypatch.setattr(plots, "_svg", lambda fig: drawn.append(fig) or "")
    plots.accuracy_vs_size(document)
    plots.accuracy_vs_latency(document)
    by_size, by_latency = drawn
    labels = ["box MAE (lower is better)", "count MAE (lower is better)"]
    assert [ax.get_ylabel() for ax in by_size.axes] == labels == [ax.get_ylabel() for ax in by_latency.axes]
    for place, ax in enumerate(by_size.axes):  # the host's points: each stage's error of this output
        host = ax.collections[0].get_offsets()[:, 1]
        assert list(host) == pytest.approx([stage["host_errors"][place] for stage in document["stages"]])
    for place, ax in enumerate(by_latency.axes):  # the board's point: the final model's error of this output
        assert list(ax.collections[0].get_offsets()[:, 1]) == pytest.approx([errors[place]["device"]])
    mixed = {**document, "metric": {**document["metric"], "name": "accuracy"}}  # a class head beside them
    assert [panel.name for panel in plots.panels(mixed)] == ["accuracy (%)", *labels]

    summary = " ".join((run / "report.md").read_text().split())
    assert f"Each value output of the final model on the host: box MAE {box:.4g}, count MAE {count:.4g}." in summary
    assert f"On local: {each}" in summary
