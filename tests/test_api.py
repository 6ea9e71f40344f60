"""The Python API (edgepipe.optimize/deploy/report/compare): the README's example as written, what importing
loads, errors as exceptions, and the forms data and recipes may take."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY

import edgepipe
from edgepipe.api import _data_source

pytestmark = pytest.mark.slow


def _readme_example() -> str:
    section = (REPO / "README.md").read_text().split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(_readme_example())
    done = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "EDGEPIPE_LOCAL_WORKDIR": str(tmp_path / "board")},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("int8 accuracy ") and lines[0].endswith(str(tmp_path / "runs/api-example/model.tflite"))
    accuracy = float(lines[0].split()[2].rstrip(","))
    assert accuracy > 0.9
    assert lines[1].startswith("on the board: p50 ") and lines[1].endswith(f"accuracy {accuracy:.4f}")
    assert lines[2] == f"report: {tmp_path / 'runs/api-example/report.html'}"
    assert lines[3].startswith("refused: unknown target 'rpi5'") and lines[3].endswith("(exit 2)")
    record = json.loads((tmp_path / "runs/api-example/optimize.json").read_text())
    assert [stage["kind"] for stage in record["stages"]] == ["prune", "qat"]
    assert (tmp_path / "runs/api-example/report.html").stat().st_size > 0


def test_importing_edgepipe_loads_neither_tensorflow_nor_paramiko() -> None:
    code = (
        "import sys, edgepipe; print(sorted(m for m in ('tensorflow', 'paramiko', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_a_wrong_recipe_field_is_a_config_error_naming_it_and_writes_nothing(tmp_path: Path) -> None:
    recipe = {
        "name": "bad",
        "model": {"source": "edgepipe.examples.digits:tiny_mlp"},
        "data": {"source": "edgepipe.examples.digits:load"},
        "stages": [{"kind": "prune", "target_sparsity": 1.5}],
    }
    with pytest.raises(edgepipe.ConfigError) as caught:
        edgepipe.optimize(recipe, out=tmp_path / "run")
    assert "stages[0].target_sparsity" in caught.value.message and caught.value.exit_code == 2
    assert not (tmp_path / "run").exists()


def test_a_recipe_file_with_arrays_in_place_of_its_data(tmp_path: Path, digits: object) -> None:
    """A preset-like file keeps its stages; the arrays replace its data source (four arrays, one tuple)."""
    (tmp_path / "recipe.yaml").write_text(TINY)
    data = digits
    arrays = (data.x_train[0], data.y_train[0], data.x_test[0], data.y_test[0])  # type: ignore[attr-defined]
    run = edgepipe.optimize(tmp_path / "recipe.yaml", data=arrays, out=tmp_path / "run")
    assert run.passed and run.model_path.is_file()
    assert run.record["eval_data"]["samples"] == len(arrays[2]) == run.final["agreement"]["test_samples"]
    assert [stage["kind"] for stage in run.stages] == ["prune", "cluster", "qat"]


def test_data_arrays_become_the_npz_layout_the_loader_reads(tmp_path: Path) -> None:
    x, y = np.zeros((4, 3), "float32"), np.arange(4)
    with np.load(_data_source(((x, y), (x, y)), tmp_path)) as pairs:
        assert sorted(pairs.files) == ["x_test", "x_train", "y_test", "y_train"]
    multi = {"x_train": [x, x], "y_train": y, "x_test": [x, x], "y_test": y}
    with np.load(_data_source(multi, tmp_path)) as named:
        assert sorted(named.files) == ["x_test_0", "x_test_1", "x_train_0", "x_train_1", "y_test", "y_train"]
    with pytest.raises(edgepipe.ConfigError):
        _data_source((x, y, x), tmp_path)


def test_compare_returns_the_verdict_and_raises_only_when_asked(
    optimized_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, _ = optimized_run
    monkeypatch.setenv("EDGEPIPE_LOCAL_WORKDIR", str(tmp_path / "board"))
    history = tmp_path / "history.sqlite"
    model = directory / "model.tflite"
    first = edgepipe.deploy(model=model, out=tmp_path / "a.json", runs=50, history=history, tags=["main"])
    # Paired (the baseline timed in the same processes): two unpaired runs of one model raise a false alarm about
    # one time in five on this shared VM, more with the other test worker busy (test_compare.py, regression_power).
    second = edgepipe.deploy(model=model, out=tmp_path / "b.json", runs=50, history=history, baseline="main")
    assert first.passed and second.passed and first.run_id != second.run_id
    assert first.latency_ms["count"] >= 50 and first.peak_memory_kb > 0

    verdict = edgepipe.compare("main", str(tmp_path / "b.json"), history=history, max_size_growth=0.0)
    assert verdict.target == "local" and "main" in verdict.baseline
    assert verdict.settings.max_size_growth == 0.0
    assert next(check for check in verdict.checks if check.name == "model size").status == "pass"  # the same file
    assert verdict.status != "regression", verdict.checks  # the same model twice, timed paired
    assert any(c.name == "latency" and "paired in one job" in c.message for c in verdict.checks), verdict.checks
    assert dataclasses.replace(verdict, status="pass").raise_for_status() is None
    with pytest.raises(edgepipe.RegressionFound):
        dataclasses.replace(verdict, status="regression").raise_for_status()
    with pytest.raises(edgepipe.Inconclusive):
        dataclasses.replace(verdict, status="inconclusive").raise_for_status()
    with pytest.raises(edgepipe.ConfigError, match="max_size_grwth"):
        edgepipe.compare("main", str(tmp_path / "b.json"), history=history, max_size_grwth=0.1)
