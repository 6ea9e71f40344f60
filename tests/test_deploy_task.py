"""``deploy --model m.tflite --data eval.npz``: how each output is scored. The data's types decided it alone, so
integer values (a count) on a one-unit head were scored as class labels, accuracy 0.0, without a word;
``--task`` says it, and every wrong ``--task`` is a one-line error through the real CLI that writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from edgepipe.keras_compat import keras, tf

pytestmark = pytest.mark.slow


def _tflite(path: Path, units: int) -> Path:
    """A small float .tflite with one output ``units`` wide (untrained: only the scoring is under test)."""
    k = keras()
    inputs = k.Input((8, 8, 1))
    x = k.layers.GlobalAveragePooling2D()(k.layers.Conv2D(4, 3, activation="relu")(inputs))
    model = k.Model(inputs, k.layers.Dense(units)(x))
    path.write_bytes(tf().lite.TFLiteConverter.from_keras_model(model).convert())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("task")
    x = np.random.default_rng(0).random((40, 8, 8, 1), dtype=np.float32)
    np.savez(folder / "counts.npz", x=x, y=20 + np.arange(40)[:, None] % 25)  # a count per sample: 20 to 44
    np.savez(folder / "labels.npz", x=x, y=np.arange(40) % 4)
    return {
        "counter": _tflite(folder / "counter.tflite", 1),
        "classifier": _tflite(folder / "classifier.tflite", 4),
        "counts": folder / "counts.npz",
        "labels": folder / "labels.npz",
    }


def _deploy(files: dict[str, Path], model: str, data: str, tmp_path: Path, *task: str) -> tuple[object, Path]:
    out = tmp_path / "deploy.json"
    done = run_cli(
        "deploy", "--model", str(files[model]), "--data", str(files[data]), "--target", "local", "--no-history",
        "--repeats", "1", "--runs", "20", "--min-seconds", "0", "--out", str(out), *task,
        env={"EDGEPIPE_LOCAL_WORKDIR": str(tmp_path / "board")},
    )  # fmt: skip
    return done, out


def test_integer_values_a_one_unit_head_cannot_classify_are_scored_as_regression_and_said_so(
    files: dict[str, Path], tmp_path: Path
) -> None:
    done, out = _deploy(files, "counter", "counts", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    said = " ".join(done.stderr.split())
    assert "scored by the data: y (integers 20 to 44, not class indices of an output 1 wide) as regression" in said
    record = json.loads(out.read_text())
    assert record["device"]["accuracy"]["metric"] == "mae" and record["model"]["task_from"] == "data types"
    assert "mean absolute error" in done.stdout


def test_integer_labels_that_fit_are_classes_unless_task_says_otherwise(files: dict[str, Path], tmp_path: Path) -> None:
    done, out = _deploy(files, "classifier", "labels", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "y (integers) as classification; --task says otherwise (e.g. --task regression)" in " ".join(
        done.stderr.split()
    )
    assert json.loads(out.read_text())["device"]["accuracy"]["metric"] == "accuracy"

    done, out = _deploy(files, "counter", "labels", tmp_path, "--task", "regression")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["device"]["accuracy"]["metric"] == "mae" and record["model"]["task_from"] == "--task"
    assert "scored by the data" not in done.stderr


@pytest.mark.parametrize(
    ("model", "data", "task", "error"),
    [
        ("counter", "counts", "clasification", "error: --task: 'clasification' is not a task"),
        (
            "counter",
            "counts",
            "classification",
            "error: --task classification: y holds labels up to 44, but the model's output 0 is 1 wide (a yes/no "
            "head answers 0 or 1)",
        ),
        ("counter", "counts", "regression,regression", "error: --task lists 2 tasks but counts.npz has 1 target array"),
        (
            "counter",
            "counts",
            "reconstruction",
            "error: --task reconstruction scores each output against the model's input, but counts.npz has 1 "
            "target array (y)",
        ),
    ],
)
def test_a_wrong_task_is_a_one_line_error_that_writes_nothing(
    files: dict[str, Path], tmp_path: Path, model: str, data: str, task: str, error: str
) -> None:
    done, out = _deploy(files, model, data, tmp_path, "--task", task)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [" ".join(line.split()) for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [error] and "Traceback" not in done.stderr
    assert "hint:" in done.stderr
    assert not out.exists() and not list(tmp_path.glob("*.json"))


def test_each_value_output_is_printed_against_the_host_beside_their_mean(tmp_path: Path) -> None:
    """A box in [0, 1] beside a count of 20 to 44: the table printed their mean error alone, which is the
    count's; each output now has its own row, as the board check judges them."""
    k = keras()
    inputs = k.Input((8, 8, 1))
    x = k.layers.GlobalAveragePooling2D()(k.layers.Conv2D(4, 3, activation="relu")(inputs))
    model = k.Model(inputs, [k.layers.Dense(4, name="box")(x), k.layers.Dense(1, name="count")(x)])
    files = {"boxes": tmp_path / "boxes.tflite", "data": tmp_path / "boxes.npz"}
    files["boxes"].write_bytes(tf().lite.TFLiteConverter.from_keras_model(model).convert())
    rng = np.random.default_rng(1)
    x = rng.random((40, 8, 8, 1), dtype=np.float32)
    np.savez(files["data"], x=x, y_0=rng.random((40, 4), dtype=np.float32), y_1=20 + rng.random((40, 1)) * 24)
    done, out = _deploy(files, "boxes", "data", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    checks = json.loads(out.read_text())["checks"]
    rows = checks["error_per_output"]
    assert [row["output"] for row in rows] == [0, 1] and rows[0]["device"] < 1 < rows[1]["device"]
    printed = done.stdout.replace("│", " ")
    assert "the mean of 2 outputs:" in " ".join(printed.split())
    for row in rows:
        line = next(line for line in printed.splitlines() if line.strip().startswith(f"output {row['output']}"))
        assert f"{row['device']:.5g} vs host {row['host']:.5g}" in line, line
