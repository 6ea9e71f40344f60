"""``kind: low_rank``: exact for a kernel of the kept rank (Dense and Conv2D), leaves unprofitable layers alone,
and makes a recipe's model cheaper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_recipe

from edgepipe.config import LowRankStage
from edgepipe.errors import ModelError
from edgepipe.examples.digits import cnn, mlp
from edgepipe.optimization.low_rank import factorize

pytestmark = pytest.mark.slow


def _low_rank(shape: tuple[int, ...], rank: int, rng: np.random.Generator) -> np.ndarray:
    rows = int(np.prod(shape[:-1]))
    return (rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, shape[-1]))).reshape(shape).astype(np.float32) * 0.05


def test_a_kernel_of_the_kept_rank_is_factorized_exactly() -> None:
    rng = np.random.default_rng(0)
    model = mlp(hidden=128)
    dense = model.get_layer("dense_2")
    kernel, bias = dense.get_weights()
    dense.set_weights([_low_rank(kernel.shape, 6, rng), bias])
    factorized, details = factorize(model, LowRankStage(kind="low_rank", energy=0.999999), "test")
    assert details["layers"]["dense_2"]["rank"] == 6
    assert factorized.get_layer("dense_2_lr").units == 6
    x = rng.random((16, 8, 8, 1), dtype=np.float32)
    assert np.allclose(factorized.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)
    assert "logits" in details["left_alone"] or "logits" in details["layers"]

    conv_model = cnn()
    conv = conv_model.get_layer("conv_2")
    kernel, bias = conv.get_weights()
    conv.set_weights([_low_rank(kernel.shape, 4, rng), bias])
    stage = LowRankStage(kind="low_rank", energy=0.999999, layers={"include": ["conv_2"]})
    factorized, details = factorize(conv_model, stage, "test")
    assert details["layers"]["conv_2"]["rank"] == 4
    assert factorized.get_layer("conv_2_lr").strides == (2, 2) and factorized.get_layer("conv_2").kernel_size == (1, 1)
    assert np.allclose(factorized.predict(x, verbose=0), conv_model.predict(x, verbose=0), atol=1e-4)


def test_a_layer_that_would_not_get_cheaper_is_left_alone_and_named() -> None:
    model = mlp(hidden=128)
    _, details = factorize(model, LowRankStage(kind="low_rank", rank_ratio=0.9), "test")
    assert set(details["layers"]) == {"logits"}  # 128x10 at rank 9: 1,242 multiplies instead of 1,280
    assert set(details["left_alone"]) == {"dense_1", "dense_2"}  # 64x128 at rank 58: 11,136 instead of 8,192
    assert "would not save multiplies" in details["left_alone"]["dense_1"]
    with pytest.raises(ModelError, match="dense_1: rank 32 of 32 would not save multiplies"):
        factorize(mlp(hidden=32), LowRankStage(kind="low_rank", energy=1.0), "test")


RECIPE = """
name: low-rank-qat
model: {source: edgepipe.examples.digits:mlp, train: {epochs: 6, learning_rate: 0.002}}
data: {source: edgepipe.examples.digits:load}
fine_tune: {epochs: 2, learning_rate: 0.0005}
stages:
  - {kind: low_rank, rank_ratio: 0.125, layers: {include: [dense_2]}}
  - {kind: qat}
convert: {representative_samples: 64}
gates: {max_accuracy_drop: 20}
"""


def test_a_low_rank_recipe_makes_the_int8_model_cheaper(tmp_path: Path) -> None:
    done = run_cli("optimize", str(write_recipe(tmp_path, RECIPE)), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "run" / "optimize.json").read_text())
    assert record["stages"][0]["details"]["layers"]["dense_2"]["rank"] == 32  # 0.125 of 256
    macs = {name: record["analysis"][name]["total"]["macs"] for name in ("float", "final")}
    assert macs["final"] < macs["float"] * 0.8, macs


def test_the_reconstruction_error_is_the_energy_left_out() -> None:
    """Eckart-Young: the squared Frobenius error of the rank-r kernel is the energy of the dropped singular values."""
    model = mlp(hidden=128)
    factorized, details = factorize(model, LowRankStage(kind="low_rank", energy=0.6), "test")
    original = model.get_layer("dense_2").get_weights()[0]
    rebuilt = factorized.get_layer("dense_2_lr").get_weights()[0] @ factorized.get_layer("dense_2").get_weights()[0]
    error = float(np.sum((original - rebuilt) ** 2) / np.sum(original**2))
    kept = details["layers"]["dense_2"]["energy_kept"]
    assert kept >= 0.6 and error == pytest.approx(1 - kept, abs=1e-4)
