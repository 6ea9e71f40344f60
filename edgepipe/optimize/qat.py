"""Quantization-aware training, choosing TF-MOT's collaborative scheme from what earlier stages did.

    earlier stages        scheme (TF-MOT class)                                   name
    none                  default_8bit.Default8BitQuantizeScheme                  QAT
    prune                 collab_opts.Default8BitPrunePreserveQuantizeScheme      PQAT
    cluster               Default8BitClusterPreserveQuantizeScheme(False)         CQAT
    prune + cluster       Default8BitClusterPreserveQuantizeScheme(True)          PCQAT

Without the preserving schemes, QAT's fine-tuning moves the zeros and the shared values and the compression
of the earlier stages is lost. The QAT model converts directly; there is nothing to strip.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from edgepipe.config.recipe import QatStage
from edgepipe.errors import ModelError
from edgepipe.keras_compat import tfmot
from edgepipe.models import copy_model, train
from edgepipe.optimize.base import (
    History,
    StageContext,
    StageOutcome,
    check_patterns,
    has_weights,
    is_selected,
    wrap_layers,
)

SCHEME_NAMES = {
    "default": "QAT",
    "prune_preserve": "PQAT",
    "cluster_preserve": "CQAT",
    "prune_cluster_preserve": "PCQAT",
}


class _CentroidGradientFilter(logging.Filter):
    """CQAT/PCQAT train the cluster centroids, not the original kernels, so TensorFlow warns every epoch that
    the kernels get no gradient. It is expected; hide exactly that message while the stage trains."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Gradients do not exist for variables" not in record.getMessage()


@contextlib.contextmanager
def _without_centroid_gradient_warning() -> Iterator[None]:
    logger = logging.getLogger("tensorflow")
    quiet = _CentroidGradientFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def choose_scheme(requested: str, history: History) -> str:
    if requested != "auto":
        return requested
    if history.pruned and history.clustered:
        return "prune_cluster_preserve"
    if history.clustered:
        return "cluster_preserve"
    if history.pruned:
        return "prune_preserve"
    return "default"


def _scheme(name: str) -> Any:
    mot = tfmot()
    return {
        "default": lambda: mot.quantization.keras.default_8bit.Default8BitQuantizeScheme(),
        "prune_preserve": lambda: mot.quantization.keras.collab_opts.Default8BitPrunePreserveQuantizeScheme(),
        "cluster_preserve": lambda: mot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(False),
        "prune_cluster_preserve": lambda: mot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(True),
    }[name]()


def apply(model: Any, stage: QatStage, ctx: StageContext) -> StageOutcome:
    quantization = tfmot().quantization.keras
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (  # noqa: E501
        Default8BitQuantizeRegistry,
    )

    scheme = choose_scheme(stage.scheme, ctx.history)
    work = copy_model(model)
    check_patterns(work, stage.layers, ctx.where)
    registry = Default8BitQuantizeRegistry()
    annotated_names, left_out = [], []
    for layer in work.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        if not is_selected(layer, stage.layers):
            left_out.append(layer.name)
            continue
        if not registry.supports(layer):
            raise ModelError(
                f"{ctx.where}: layer {layer.name!r} ({type(layer).__name__}) is not supported by TF-MOT's "
                "8-bit quantization-aware training",
                hint=f"add {layer.name!r} to {ctx.where}.layers.exclude (the converter then quantizes it from "
                "the representative data), or use a ptq stage instead of qat",
            )
        annotated_names.append(layer.name)
    if not any(has_weights(layer) for layer in work.layers if layer.name in annotated_names):
        raise ModelError(
            f"{ctx.where}: no layer with weights is left to train with quantization", hint=f"check {ctx.where}.layers"
        )

    def annotate(layer: Any) -> Any:
        if layer.name in annotated_names:
            return quantization.quantize_annotate_layer(layer)
        return layer

    annotated = wrap_layers(work, annotate)
    try:
        with quantization.quantize_scope():
            quantized = quantization.quantize_apply(annotated, _scheme(scheme))
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ModelError(
            f"{ctx.where}: TF-MOT cannot apply {SCHEME_NAMES[scheme]} to this model: {exc}",
            hint=f"leave the offending layer out with {ctx.where}.layers.exclude",
        ) from None
    with _without_centroid_gradient_warning():
        history = train(quantized, ctx.data, ctx.train, ctx.progress, ctx.label)
    return StageOutcome(
        model=quantized,
        details={
            "scheme": SCHEME_NAMES[scheme],
            "scheme_requested": stage.scheme,
            "layers": annotated_names,
            "left_out": left_out,
        },
        training=history,
    )
