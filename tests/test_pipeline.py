"""``edgepipe optimize`` end to end on a tiny recipe: the run directory, optimize.json, gates, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, run_cli, write_recipe

from edgepipe.convert import evaluate
from edgepipe.errors import ConfigError, GateFailed
from edgepipe.optimization import pipeline
from edgepipe.tasks import Task
from edgepipe.tflite_model import TfliteModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(optimized_run: tuple[Path, dict]) -> tuple[Path, dict]:
    return optimized_run


def test_run_directory_holds_every_artifact(finished: tuple[Path, dict]) -> None:
    directory, result = finished
    assert (directory / "model.tflite").exists() and (directory / "recipe.yaml").exists()
    for stage in result["stages"]:
        assert (directory / stage["tflite"]["path"]).exists()
    assert [s["name"] for s in result["stages"]] == ["prune", "cluster", "qat"]
    assert result["stages"][2]["details"]["scheme"] == "PCQAT"
    on_disk = json.loads((directory / "optimize.json").read_text())
    assert on_disk["schema"] == "edgepipe.optimize/1" and on_disk["status"] == "passed"


def test_final_model_is_integer_only_read_from_the_file(finished: tuple[Path, dict]) -> None:
    directory, result = finished
    parsed = TfliteModel.read(directory / "model.tflite")
    assert [parsed.tensors[i].dtype for i in parsed.inputs] == ["int8"]
    assert [parsed.tensors[i].dtype for i in parsed.outputs] == ["int8"]
    assert all(t.dtype not in ("float32", "float16") for op in parsed.ops for t in parsed.op_outputs(op))
    assert result["final"]["conformance"]["passed"] is True


def test_recorded_accuracy_is_what_the_interpreter_gives(finished: tuple[Path, dict]) -> None:
    directory, result = finished
    from edgepipe.examples.digits import load

    data = load()
    measured = evaluate.evaluate((directory / "model.tflite").read_bytes(), data.x_test, data.y_test, Task())
    assert measured.accuracy == pytest.approx(result["final"]["accuracy"], abs=1e-6)
    agreement = result["final"]["agreement"]
    assert agreement["test_samples"] == data.test_samples
    assert agreement["accuracy_drop_points"] == pytest.approx(
        (agreement["float_keras_accuracy"] - agreement["tflite_accuracy"]) * 100, abs=1e-3
    )


def test_sizes_and_ratios_are_consistent(finished: tuple[Path, dict]) -> None:
    import gzip

    directory, result = finished
    content = (directory / "model.tflite").read_bytes()
    assert result["final"]["bytes"] == len(content)
    assert result["final"]["gzip_bytes"] == len(gzip.compress(content, 9, mtime=0))
    float_gzip = result["baseline"]["tflite"]["gzip_bytes"]
    assert result["final"]["gzip_ratio_vs_float"] == pytest.approx(float_gzip / result["final"]["gzip_bytes"], rel=1e-3)
    assert result["final"]["gzip_bytes"] < result["stages"][0]["tflite"]["gzip_bytes"] * 1.05


def test_resolved_recipe_and_provenance_are_recorded(finished: tuple[Path, dict]) -> None:
    _, result = finished
    expected = {  # every field, resolved
        "epochs": 2,
        "batch_size": 32,
        "learning_rate": 0.0005,
        "learning_rate_schedule": "constant",
        "distill": None,
    }
    assert result["recipe"]["stages"][0]["fine_tune"] == expected
    assert result["recipe"]["convert"]["io_type"] == "int8"
    provenance = result["provenance"]
    assert {"tf-keras", "tensorflow-model-optimization", "ai-edge-litert"} <= set(provenance["tools"])
    assert len(provenance["data"]["sha256"]) == 64 and provenance["data"]["test_samples"] == 450


def test_static_analysis_of_float_and_final(finished: tuple[Path, dict]) -> None:
    _, result = finished
    final, float_ = result["analysis"]["final"]["total"], result["analysis"]["float"]["total"]
    macs = 64 * 32 + 32 * 32 + 32 * 10  # tiny_mlp: 64 -> 32 -> 32 -> 10
    assert final["macs"] == float_["macs"] == macs
    assert float_["params"] == macs + 32 + 32 + 10
    assert float_["peak_activation_bytes"] == 4 * final["peak_activation_bytes"]  # float32 vs int8 activations


def test_failed_gate_keeps_the_run_aside_and_not_at_out(tmp_path: Path) -> None:
    recipe = write_recipe(
        tmp_path,
        TINY.replace("gates: {max_accuracy_drop: 10}", "gates: {max_gzip_bytes: 10}").replace(
            "  - kind: cluster\n    clusters: 16\n  - kind: qat\n", ""
        ),
    )
    with pytest.raises(GateFailed, match="max_gzip_bytes: gzip bytes is"):
        pipeline.run(pipeline.prepare(recipe), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    kept = json.loads((tmp_path / "out.failed" / "optimize.json").read_text())
    by_name = {row["gate"]: row for row in kept["gates"]}
    assert kept["status"] == "gate_failed"
    assert by_name["max_gzip_bytes"]["passed"] is False and by_name["max_accuracy_drop"]["passed"] is True


def test_directory_that_is_not_a_run_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not an edgepipe run"):
        pipeline.run(pipeline.prepare(write_recipe(tmp_path, TINY)), tmp_path / "out")
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


def test_cli_runs_a_recipe_and_replaces_a_previous_run(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, TINY.replace("  - kind: cluster\n    clusters: 16\n", ""))
    out = tmp_path / "out"
    (out).mkdir()
    (out / "optimize.json").write_text("{}")  # a previous run
    (out / "stale.txt").write_text("from the previous run")
    result = run_cli("optimize", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2. qat (PQAT)" in result.stdout and "integer-only" in result.stdout
    assert "gate max_accuracy_drop: pass" in result.stdout
    assert "> stage 1/2: prune" in result.stderr
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "optimize.json").read_text())["status"] == "passed"
    assert not list(tmp_path.glob(".out.*"))


def test_uint8_io(tmp_path: Path) -> None:
    recipe = write_recipe(
        tmp_path,
        TINY.replace("  - kind: cluster\n    clusters: 16\n  - kind: qat\n", "  - kind: ptq\n")
        .replace("  - kind: prune\n    target_sparsity: 0.5\n", "")
        .replace("{representative_samples: 64}", "{representative_samples: 64, io_type: uint8}"),
    )
    outcome = pipeline.run(pipeline.prepare(recipe), tmp_path / "out")
    parsed = TfliteModel.read(outcome.directory / "model.tflite")
    assert parsed.tensors[parsed.inputs[0]].dtype == "uint8"
    assert outcome.result["final"]["conformance"]["passed"]
    assert np.isclose(outcome.result["final"]["accuracy"], outcome.result["baseline"]["keras_accuracy"], atol=0.02)
