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
from edgepipe.keras_compat import keras, tfmot
from edgepipe.models import copy_model, train
from edgepipe.optimization.base import (
    History,
    StageContext,
    StageOutcome,
    check_patterns,
    has_weights,
    is_selected,
    wrap_layers,
)
from edgepipe.optimization.hard_activations import fuse_hard_activations, layers


def _output_only() -> Any:
    """TF-MOT's quantize config that quantizes a layer's output and nothing else."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs,
    )

    return default_8bit_quantize_configs.Default8BitOutputQuantizeConfig()


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


def unsupported_layers(annotated: Any, scheme: Any) -> list[Any]:
    """The layers of an annotated model that TF-MOT's ``quantize_apply`` would refuse, all of them at once.

    Support is a property of the whole model, not of a layer alone: the scheme's layout transforms first fold
    Conv2D/DepthwiseConv2D -> BatchNormalization (-> ReLU), split SeparableConv2D into DepthwiseConv2D +
    Conv2D 1x1 and fuse Add/Conv -> ReLU, giving the layers they touch a quantize config of their own. Only
    what is left without one must be supported by the scheme's registry. This mirrors ``quantize_apply``'s own
    check (TF-MOT 0.8.1) but collects every refused layer instead of raising on the first.
    """
    quantization = tfmot().quantization.keras
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import QuantizeAnnotate

    quantize_map: dict[str, dict[str, Any]] = {}

    def unwrap(layer: Any) -> Any:
        if isinstance(layer, QuantizeAnnotate):
            quantize_map[layer.layer.name] = {"quantize_config": layer.quantize_config}
            return layer.layer
        return layer

    with quantization.quantize_scope():
        unwrapped = keras().models.clone_model(annotated, clone_function=unwrap)
        transformed, quantize_map = scheme.get_layout_transformer().apply(unwrapped, quantize_map)
    registry = scheme.get_quantize_registry()
    return [
        layer
        for layer in transformed.layers
        if layer.name in quantize_map
        and not quantize_map[layer.name].get("quantize_config")
        and not registry.supports(layer)
    ]


def _follows_a_foldable_layer(layer: Any) -> bool:
    """A BatchNormalization right after a Conv2D, DepthwiseConv2D or Dense: QAT folds it when it is annotated."""
    if type(layer).__name__ != "BatchNormalization":
        return False
    inbound = [node.inbound_layers for node in layer._inbound_nodes]
    sources = [source for group in inbound for source in (group if isinstance(group, list) else [group])]
    return any(type(source).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense") for source in sources)


def _freeze_left_out(quantized: Any, left_out: list[str]) -> list[str]:
    """A preserving scheme keeps the zeros and the clusters of the layers it wraps; a layer left out of QAT
    (an LSTM, which TF-MOT cannot quantize, say) would be fine-tuned freely and lose them: pruned to 50 %, the
    digits LSTM came out of one epoch of PQAT 10 % sparse. Those layers are not trained instead (the converter
    quantizes them from the representative data). Returns their names."""
    frozen = []
    for name in left_out:
        try:
            layer = quantized.get_layer(name)
        except ValueError:
            continue
        if layer.trainable_weights:
            layer.trainable = False
            frozen.append(name)
    return frozen


def apply(model: Any, stage: QatStage, ctx: StageContext) -> StageOutcome:
    quantization = tfmot().quantization.keras

    scheme = choose_scheme(stage.scheme, ctx.history)
    work = copy_model(model)
    check_patterns(work, stage.layers, ctx.where)
    annotated_names, left_out = [], []
    for layer in work.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        (annotated_names if is_selected(layer, stage.layers) else left_out).append(layer.name)
    if not any(has_weights(layer) for layer in work.layers if layer.name in annotated_names):
        raise ModelError(
            f"{ctx.where}: no layer with weights is left to train with quantization", hint=f"check {ctx.where}.layers"
        )

    # MobileNetV3's hard-swish and hard-sigmoid, written with TensorFlow functions, become one layer each
    # (hard_activations says why); they, a product of two tensors (squeeze-and-excitation's gate) and input
    # scaling get their output quantized only, which is all these layers need and TF-MOT has no default for.
    head = ctx.data.head(64)
    work, fused = fuse_hard_activations(
        work, head[0] if len(head) == 1 else list(head), lambda layer: is_selected(layer, stage.layers)
    )
    if fused:
        annotated_names = [n for n in annotated_names if n in {layer.name for layer in work.layers}]
        annotated_names += [layer.name for layer in work.layers if isinstance(layer, layers())]
        ctx.progress.note(f"{ctx.where}: " + "; ".join(fused))
    # Any other TensorFlow function called on Keras tensors (a TFOpLambda layer) breaks TF-MOT's model cloning
    # once annotated (its input arrives as a list); it is refused with the other unsupported layers.
    functions = [name for name in annotated_names if type(work.get_layer(name)).__name__ == "TFOpLambda"]

    def annotate(layer: Any) -> Any:
        if layer.name not in annotated_names or layer.name in functions:
            return layer
        if isinstance(layer, (*layers(), keras().layers.Multiply, keras().layers.Rescaling)):
            return quantization.quantize_annotate_layer(layer, _output_only())
        return quantization.quantize_annotate_layer(layer)

    for name in left_out:
        if _follows_a_foldable_layer(work.get_layer(name)):
            ctx.progress.note(
                f"{ctx.where}: {name!r} is left out of QAT, so its BatchNormalization is not folded into the layer "
                "before it: the int8 model keeps extra MUL/ADD operators and runs slower"
            )
    annotated = wrap_layers(work, annotate)
    refused = [work.get_layer(name) for name in functions] + unsupported_layers(annotated, _scheme(scheme))
    if refused:
        names = [layer.name for layer in refused]
        raise ModelError(
            f"{ctx.where}: TF-MOT's 8-bit quantization-aware training does not support "
            + ", ".join(f"{layer.name!r} ({type(layer).__name__})" for layer in refused),
            hint=f"add them to {ctx.where}.layers.exclude, e.g. exclude: {names} (the converter then quantizes "
            "them from the representative data), or use a ptq stage instead of qat",
        )
    try:
        with quantization.quantize_scope():
            quantized = quantization.quantize_apply(annotated, _scheme(scheme))
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ModelError(
            f"{ctx.where}: TF-MOT cannot apply {SCHEME_NAMES[scheme]} to this model: {exc}",
            hint=f"leave the offending layer out with {ctx.where}.layers.exclude",
        ) from None
    frozen = _freeze_left_out(quantized, left_out) if scheme != "default" else []
    if frozen:
        ctx.progress.note(
            f"{ctx.where}: not trained here, being left out of QAT: {', '.join(frozen)}; so their zeros and shared "
            f"values survive ({SCHEME_NAMES[scheme]} preserves them only in the layers it trains)"
        )
    with _without_centroid_gradient_warning():
        history = train(quantized, ctx.data, ctx.train, ctx.progress, ctx.label, ctx.task, teacher=ctx.teacher)
    return StageOutcome(
        model=quantized,
        details={
            "scheme": SCHEME_NAMES[scheme],
            "scheme_requested": stage.scheme,
            "layers": annotated_names,
            "left_out": left_out,
            "frozen": frozen,
            "fused": fused,
        },
        training=history,
    )
