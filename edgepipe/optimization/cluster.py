"""Weight clustering (TF-MOT ``cluster_weights``): wrap -> fine-tune -> strip.

After a prune stage, sparsity-preserving clustering keeps the zeros (``preserve_sparsity: auto``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepipe.config.recipe import ClusterStage
from edgepipe.errors import ModelError
from edgepipe.keras_compat import tfmot
from edgepipe.models import copy_model, train
from edgepipe.optimization.base import StageContext, StageOutcome, choose_layers, wrap_layers

_INIT = {
    "kmeans_plus_plus": "KMEANS_PLUS_PLUS",
    "density_based": "DENSITY_BASED",
    "linear": "LINEAR",
    "random": "RANDOM",
}


def too_few_values(values: np.ndarray, clusters: int, preserve_sparsity: bool) -> str | None:
    """Why TF-MOT's centroid initialisation would fail on these weights, or None when it can cluster them.

    Plain clustering needs at least ``clusters`` values. Sparsity-preserving clustering keeps one centroid at
    zero and splits the other ``clusters - 1`` between negative and positive weights in proportion to their
    counts (TF-MOT 0.8.1, ``_zero_centroid_initialization``); each side needs as many weights as centroids.
    """
    if not preserve_sparsity:
        return None if values.size >= clusters else f"{values.size} weights for {clusters} clusters"
    negative, positive = int((values < 0).sum()), int((values > 0).sum())
    if negative + positive == 0:
        return None
    negative_clusters = int(np.round((clusters - 1) * negative / (negative + positive)))
    positive_clusters = clusters - 1 - negative_clusters
    if negative < negative_clusters or positive < positive_clusters:
        return (
            f"{negative + positive} non-zero weights ({negative} negative, {positive} positive) for {clusters} "
            "clusters around a preserved zero"
        )
    return None


def apply(model: Any, stage: ClusterStage, ctx: StageContext) -> StageOutcome:
    clustering = tfmot().clustering.keras
    from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import (
        ClusteringRegistry,
    )

    preserve = ctx.history.pruned if stage.preserve_sparsity == "auto" else bool(stage.preserve_sparsity)
    init = getattr(clustering.CentroidInitialization, _INIT[stage.init])
    work = copy_model(model)

    too_few: dict[str, str] = {}

    def supports(layer: Any) -> bool:
        if not ClusteringRegistry.supports(layer):
            return False
        # TF-MOT needs enough values per cluster, or k-means++ fails with a TensorFlow traceback.
        per_channel = stage.per_channel and type(layer).__name__ == "Conv2D"
        for weight in layer.trainable_weights:
            if len(weight.shape) < 2:
                continue
            values = weight.numpy()
            groups = np.moveaxis(values, -1, 0).reshape(values.shape[-1], -1) if per_channel else [values.ravel()]
            for group in groups:
                problem = too_few_values(group, stage.clusters, preserve)
                if problem:
                    too_few[layer.name] = problem + (" in a channel" if per_channel else "")
                    return False
        return True

    chosen, unsupported = choose_layers(work, stage.layers, supports, "clustered", ctx.where)
    for name, problem in too_few.items():
        ctx.progress.note(f"{ctx.where}: not clustering {name!r}: {problem}")

    def wrap(layer: Any) -> Any | None:
        if layer.name not in chosen:
            return None
        try:
            wrapper = clustering.cluster_weights(
                layer,
                number_of_clusters=stage.clusters,
                cluster_centroids_init=init,
                preserve_sparsity=preserve,
                cluster_per_channel=stage.per_channel,
            )
            # Centroids are initialised when the wrapper is built; build it here so that a failure (too few
            # non-zero weights per channel for k-means++, say) is reported against this layer.
            wrapper.build(layer.input_shape)
            return wrapper
        except Exception as exc:  # TF-MOT raises ValueError, TensorFlow InvalidArgumentError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"{ctx.where}: layer {layer.name!r} ({type(layer).__name__}) cannot be clustered: {first}",
                hint=f"add {layer.name!r} to {ctx.where}.layers.exclude, or use fewer clusters",
            ) from None

    wrapped = wrap_layers(work, wrap)
    history = train(wrapped, ctx.data, ctx.train, ctx.progress, ctx.label, ctx.task, teacher=ctx.teacher)
    stripped = clustering.strip_clustering(wrapped)
    ctx.history.clustered = True
    return StageOutcome(
        model=stripped,
        details={
            "clusters": stage.clusters,
            "init": stage.init,
            "per_channel": stage.per_channel,
            "preserve_sparsity": preserve,
            "layers": chosen,
            "skipped_unsupported": unsupported,
        },
        training=history,
    )
