"""Each technique alone and chained, with real TF-MOT training, real conversion and the flatbuffer read back.

Tolerances: sparsity measured in the int8 weights must reach the recipe's target minus 0.02 (TF-MOT rounds the
number of weights it masks per tensor; int8 rounding can only add zeros). Unique values per clustered layer
must not exceed the cluster count (quantizing centroids can merge values, never split them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import weights_digest

from edgepipe.config import ClusterStage, LayerSelection, PruneStage, PtqStage, QatStage, TrainSettings
from edgepipe.convert import conformance, weights
from edgepipe.convert.tflite import to_int8_tflite
from edgepipe.errors import ConfigError, ModelError
from edgepipe.optimization import cluster, prune, ptq, qat
from edgepipe.optimization.base import History, StageContext
from edgepipe.progress import Progress
from edgepipe.tasks import Task
from edgepipe.tflite_model import TfliteModel

pytestmark = pytest.mark.slow
SPARSITY_TOLERANCE = 0.02
DENSE = ("dense_1", "dense_2", "logits")


def context(data: Any, history: History | None = None, epochs: int = 3, lr: float = 1e-3) -> StageContext:
    return StageContext(
        data=data,
        train=TrainSettings(epochs=epochs, learning_rate=lr),
        seed=0,
        progress=Progress(),
        history=history or History(),
        where="test.yaml: stages[0]",
        label="test",
        task=Task(),  # the digits MLPs end in logits
    )


def int8_model(model: Any, data: Any) -> TfliteModel:
    content = to_int8_tflite(model, data.representative(64, 0))
    parsed = TfliteModel.read(content)
    assert conformance.check(parsed).passed, conformance.check(parsed).problems()
    return parsed


def stats_by_layer(parsed: TfliteModel, names: tuple[str, ...] = DENSE) -> dict[str, dict[str, Any]]:
    return {row["layer"]: row for row in weights.weight_stats(parsed, names)}


def test_prune_reaches_target_sparsity_in_int8_weights(digits: Any, trained_mlp: Any) -> None:
    stage = PruneStage(kind="prune", target_sparsity=0.8)
    outcome = prune.apply(trained_mlp, stage, context(digits, epochs=4))
    rows = stats_by_layer(int8_model(outcome.model, digits))
    assert set(rows) == set(DENSE)
    for name, row in rows.items():
        assert row["sparsity"] >= 0.8 - SPARSITY_TOLERANCE, (name, row["sparsity"])
    assert outcome.details["schedule"] == "polynomial_decay"
    assert outcome.details["end_step"] % outcome.details["frequency_steps"] == 0


def test_prune_constant_schedule_with_excluded_layer(digits: Any, trained_mlp: Any) -> None:
    stage = PruneStage(
        kind="prune", target_sparsity=0.6, schedule="constant", layers=LayerSelection(exclude=["logits"])
    )
    outcome = prune.apply(trained_mlp, stage, context(digits, epochs=2))
    rows = stats_by_layer(int8_model(outcome.model, digits))
    assert rows["dense_1"]["sparsity"] >= 0.6 - SPARSITY_TOLERANCE
    assert rows["logits"]["sparsity"] < 0.1
    assert outcome.details["layers"] == ["dense_1", "dense_2"]


def test_prune_two_of_four_structure(digits: Any, trained_mlp: Any) -> None:
    stage = PruneStage(kind="prune", structure="2:4", layers=LayerSelection(include=["dense_2"]))
    outcome = prune.apply(trained_mlp, stage, context(digits, epochs=2))
    kernel = outcome.model.get_layer("dense_2").get_weights()[0]  # [in, out]; TF-MOT groups along "in"
    groups = (kernel.T.reshape(kernel.shape[1], -1, 4) == 0).sum(axis=-1)
    assert groups.min() >= 2
    row = stats_by_layer(int8_model(outcome.model, digits))["dense_2"]
    assert row["sparsity"] >= 0.5 - SPARSITY_TOLERANCE


def test_prune_block_sparsity_zeros_whole_blocks(digits: Any, trained_mlp: Any) -> None:
    stage = PruneStage(kind="prune", target_sparsity=0.5, block_size=(1, 4), layers=LayerSelection(include=["dense_2"]))
    outcome = prune.apply(trained_mlp, stage, context(digits, epochs=2))
    kernel = outcome.model.get_layer("dense_2").get_weights()[0]
    blocks = kernel.reshape(kernel.shape[0], -1, 4)
    zero_blocks = np.all(blocks == 0, axis=-1)
    assert zero_blocks.mean() >= 0.5 - SPARSITY_TOLERANCE
    assert (kernel == 0).sum() == zero_blocks.sum() * 4  # no zeros outside whole blocks


def test_cluster_then_cqat_keeps_at_most_n_values(digits: Any, trained_mlp: Any) -> None:
    history = History()
    clustered = cluster.apply(trained_mlp, ClusterStage(kind="cluster", clusters=8), context(digits, history, 2, 1e-4))
    assert clustered.details["preserve_sparsity"] is False
    for name in DENSE:
        assert len(np.unique(clustered.model.get_layer(name).get_weights()[0])) <= 8
    quantized = qat.apply(clustered.model, QatStage(kind="qat"), context(digits, history, 2, 1e-4))
    assert quantized.details["scheme"] == "CQAT"
    for name, row in stats_by_layer(int8_model(quantized.model, digits)).items():
        assert row["unique"] <= 8, (name, row["unique"])


def test_per_channel_clustering_on_convolutions(digits: Any) -> None:
    from edgepipe import models
    from edgepipe.examples.digits import cnn

    model = cnn()
    models.train(model, digits, TrainSettings(epochs=2, learning_rate=3e-3), Progress(), "cnn", Task())
    stage = ClusterStage(kind="cluster", clusters=4, per_channel=True, layers=LayerSelection(include=["conv_*"]))
    outcome = cluster.apply(model, stage, context(digits, epochs=1, lr=1e-4))
    kernel = outcome.model.get_layer("conv_2").get_weights()[0]  # [kh, kw, in, out]
    per_channel = [len(np.unique(kernel[..., c])) for c in range(kernel.shape[-1])]
    assert max(per_channel) <= 4
    assert len(np.unique(kernel)) > 4  # each channel has its own centroids
    row = stats_by_layer(int8_model(outcome.model, digits), ("conv_1", "conv_2"))["conv_2"]
    assert row["max_unique_per_channel"] <= 4


def test_full_chain_picks_pcqat_and_keeps_sparsity_and_clusters(digits: Any, trained_mlp: Any) -> None:
    before = weights_digest(trained_mlp)
    history = History()
    pruned = prune.apply(trained_mlp, PruneStage(kind="prune", target_sparsity=0.75), context(digits, history, 4))
    clustered = cluster.apply(pruned.model, ClusterStage(kind="cluster", clusters=8), context(digits, history, 2, 1e-4))
    assert clustered.details["preserve_sparsity"] is True
    quantized = qat.apply(clustered.model, QatStage(kind="qat"), context(digits, history, 2, 1e-4))
    assert quantized.details["scheme"] == "PCQAT"
    rows = stats_by_layer(int8_model(quantized.model, digits))
    for name, row in rows.items():
        assert row["sparsity"] >= 0.75 - SPARSITY_TOLERANCE, (name, row)
        assert row["unique"] <= 8, (name, row)
    # The float baseline is untouched by every later stage.
    after = weights_digest(trained_mlp)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_qat_alone_uses_plain_scheme(digits: Any, trained_mlp: Any) -> None:
    outcome = qat.apply(trained_mlp, QatStage(kind="qat"), context(digits, epochs=1, lr=1e-4))
    assert outcome.details["scheme"] == "QAT"
    int8_model(outcome.model, digits)


def test_pqat_after_prune(digits: Any, trained_mlp: Any) -> None:
    history = History()
    pruned = prune.apply(trained_mlp, PruneStage(kind="prune", target_sparsity=0.7), context(digits, history, 3))
    quantized = qat.apply(pruned.model, QatStage(kind="qat"), context(digits, history, 2, 1e-4))
    assert quantized.details["scheme"] == "PQAT"
    for row in stats_by_layer(int8_model(quantized.model, digits)).values():
        assert row["sparsity"] >= 0.7 - SPARSITY_TOLERANCE


def test_ptq_returns_a_copy(digits: Any, trained_mlp: Any) -> None:
    outcome = ptq.apply(trained_mlp, PtqStage(kind="ptq"), context(digits))
    assert outcome.model is not trained_mlp
    outcome.model.get_layer("logits").set_weights([w * 0 for w in outcome.model.get_layer("logits").get_weights()])
    assert np.any(trained_mlp.get_layer("logits").get_weights()[0] != 0)


def _model_with_unsupported_layer() -> Any:
    from edgepipe.keras_compat import keras

    k = keras()
    return k.Sequential(
        [
            k.layers.Input((8, 8, 1)),
            k.layers.Flatten(),
            k.layers.Dense(16, activation="relu", name="dense_1"),
            k.layers.EinsumDense("ab,bc->ac", 16, name="mix"),
            k.layers.Dense(10, name="logits"),
        ]
    )


def test_qat_names_unsupported_layer_and_the_fix(digits: Any) -> None:
    model = _model_with_unsupported_layer()
    with pytest.raises(ModelError) as caught:
        qat.apply(model, QatStage(kind="qat"), context(digits, epochs=1))
    assert "'mix' (EinsumDense)" in caught.value.message
    assert "layers.exclude" in (caught.value.hint or "")
    # Following the hint works: the layer is left out of QAT and training proceeds.
    outcome = qat.apply(model, QatStage(kind="qat", layers=LayerSelection(exclude=["mix"])), context(digits, epochs=1))
    assert outcome.details["left_out"] == ["mix"]


def test_pattern_matching_no_layer_is_a_config_error(digits: Any, trained_mlp: Any) -> None:
    stage = PruneStage(kind="prune", layers=LayerSelection(exclude=["dense_9"]))
    with pytest.raises(ConfigError, match=r"stages\[0\].layers.exclude: pattern 'dense_9' matches no layer"):
        prune.apply(trained_mlp, stage, context(digits))


def test_subclassed_model_is_refused(digits: Any) -> None:
    from edgepipe.keras_compat import keras
    from edgepipe.models import check_wrappable

    k = keras()

    class Custom(k.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = k.layers.Dense(10)

        def call(self, x: Any) -> Any:
            return self.dense(k.layers.Flatten()(x))

    with pytest.raises(ModelError, match="subclassed") as caught:
        check_wrappable(Custom())
    assert "functional API" in (caught.value.hint or "")


def test_per_channel_clustering_of_a_too_small_conv_is_named(digits: Any) -> None:
    """conv_1 of the digits CNN has 9 weights per output channel: 16 clusters per channel cannot exist."""
    from edgepipe.examples.digits import cnn

    stage = ClusterStage(kind="cluster", clusters=16, per_channel=True, layers=LayerSelection(include=["conv_1"]))
    with pytest.raises(ModelError, match=r"layer 'conv_1' \(Conv2D\) cannot be clustered") as caught:
        cluster.apply(cnn(), stage, context(digits, epochs=1))
    assert "layers.include" in (caught.value.hint or "")
    # Picked up only by "all layers", the same layer is skipped and reported instead.
    outcome = cluster.apply(
        cnn(), ClusterStage(kind="cluster", clusters=16, per_channel=True), context(digits, epochs=1)
    )
    assert "conv_1" in outcome.details["skipped_unsupported"] and "conv_2" in outcome.details["layers"]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_fine_tune_learning_rate_schedule(digits: Any, trained_mlp: Any, schedule: str) -> None:
    """cosine decays Adam's rate to zero by the fit's last step; constant keeps it (TF-MOT's guides)."""
    from edgepipe.models import copy_model, train

    model = copy_model(trained_mlp)
    settings = TrainSettings(epochs=2, batch_size=64, learning_rate=0.01, learning_rate_schedule=schedule)
    train(model, digits, settings, Progress(), "test", Task())
    steps = int(model.optimizer.iterations.numpy())
    assert steps == 2 * -(-digits.train_samples // 64)
    final = float(model.optimizer.learning_rate.numpy())  # the rate of the last step
    if schedule == "cosine":
        assert final < 0.01 * 0.01
    else:
        assert final == pytest.approx(0.01)


def test_qat_re_estimates_batchnorm_statistics_after_its_fine_tune(digits: Any) -> None:
    """The moving averages the converter folds must describe the fine-tuned weights: set to nonsense before
    QAT, they end as the statistics of what the convolution now produces (a Keras 3 ResNet50 after 1 epoch of
    QAT: 0.25 with the lagging ones, 0.92 re-estimated)."""
    from edgepipe.keras_compat import keras

    k = keras()
    model = k.Sequential(
        [
            k.layers.Input((8, 8, 1)),
            k.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv"),
            k.layers.BatchNormalization(name="bn"),
            k.layers.ReLU(),
            k.layers.GlobalAveragePooling2D(),
            k.layers.Dense(10, name="logits"),
        ]
    )
    bn = model.get_layer("bn")
    bn.set_weights([*bn.get_weights()[:2], np.full(8, 5.0, np.float32), np.full(8, 9.0, np.float32)])
    outcome = qat.apply(model, QatStage(kind="qat"), context(digits, epochs=1))
    assert outcome.details["batchnorm_recalibrated_on"] == len(digits.x_train[0])  # 1,347 < the 2,048 limit
    norm = next(m for m in outcome.model.submodules if isinstance(m, k.layers.BatchNormalization))
    conv = next(m for m in outcome.model.submodules if isinstance(m, k.layers.Conv2D))
    produced = conv(digits.x_train[0]).numpy()  # the fine-tuned float convolution (BN folds into its output)
    np.testing.assert_allclose(norm.moving_mean.numpy(), produced.mean(axis=(0, 1, 2)), atol=0.05)
