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
from edgepipe.custom_objects import is_users_layer
from edgepipe.errors import ModelError
from edgepipe.keras_compat import keras, tfmot
from edgepipe.models import BATCHNORM_SAMPLES, copy_model, reestimate_batchnorm, train
from edgepipe.optimization import qat_ranges, rewrite
from edgepipe.optimization.base import (
    History,
    StageContext,
    StageOutcome,
    check_patterns,
    has_weights,
    is_selected,
    wrap_layers,
)
from edgepipe.optimization.fold_batchnorm import fold_batchnorm
from edgepipe.optimization.hard_activations import fuse_hard_activations, layers
from edgepipe.optimization.lift_1d import lift_1d
from edgepipe.optimization.qat_layers import (
    ACTIVATED_LAYERS,
    UNWRAPPABLE,
    activation_breaks_output_quantization,
    activation_name,
    copies_values,
    follows_a_foldable_layer,
    known_activations,
    looks_up_input_ids,
    output_quantized_only,
    scales_an_input,
    unsupported_activation,
)
from edgepipe.optimization.repeated_relu import drop_repeated_relu


def _output_only() -> Any:
    """TF-MOT's quantize config that quantizes a layer's output and nothing else."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs,
    )

    return default_8bit_quantize_configs.Default8BitOutputQuantizeConfig()


def _not_quantized() -> Any:
    """TF-MOT's quantize config that quantizes nothing: the layer's output keeps its input's scale."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs,
    )

    return default_8bit_quantize_configs.NoOpQuantizeConfig()


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
    scheme = {
        "default": lambda: mot.quantization.keras.default_8bit.Default8BitQuantizeScheme(),
        "prune_preserve": lambda: mot.quantization.keras.collab_opts.Default8BitPrunePreserveQuantizeScheme(),
        "cluster_preserve": lambda: mot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(False),
        "prune_cluster_preserve": lambda: mot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(True),
    }[name]()
    if name != "default":
        registry = _TruthfulRegistry(scheme.get_quantize_registry())
        scheme.get_quantize_registry = lambda: registry
    return scheme


class _TruthfulRegistry:
    """A preserving scheme's registry whose ``supports`` also asks the 8-bit registry beneath it.

    TF-MOT 0.8.1's PQAT/CQAT registries call every layer without weights supported (for ReLU, pooling), then
    ask the 8-bit registry for its config, which raises for a layer it does not know. ``quantize_apply`` asks
    ``supports`` before giving an unannotated layer that feeds quantized ones its output quantization (a
    Rescaling at the input, left to the converter), so under PQAT that layer failed the whole stage while plain
    QAT skips it. Everything else is the wrapped registry's."""

    def __init__(self, registry: Any) -> None:
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
            default_8bit_quantize_registry,
        )

        self._registry = registry
        self._default = default_8bit_quantize_registry.Default8BitQuantizeRegistry()

    def supports(self, layer: Any) -> bool:
        return bool(self._registry.supports(layer) and self._default.supports(layer))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


def _refused_by_preserving_only(
    refused: list[tuple[Any, str]], annotated: Any, scheme: str, annotated_names: list[str]
) -> list[str]:
    """The layers a preserving scheme (PQAT, CQAT, PCQAT) refuses by their class that plain QAT takes: TF-MOT's
    cluster-preserving registry has no Conv2DTranspose, say (a U-Net's decoder, refused under PCQAT)."""
    if scheme == "default" or not refused:
        return []
    candidates = [
        layer.name for layer, what in refused if what == type(layer).__name__ and layer.name in annotated_names
    ]
    if not candidates:
        return []
    with _own_lambdas():
        plain = {layer.name for layer, _ in unsupported_layers(annotated, _scheme("default"))}
    return [name for name in candidates if name not in plain]


def unsupported_layers(annotated: Any, scheme: Any) -> list[tuple[Any, str]]:
    """The layers of an annotated model that TF-MOT's ``quantize_apply`` would refuse, all of them at once,
    each with what is refused (its class, or its activation).

    Support is a property of the whole model, not of a layer alone: the scheme's layout transforms first fold
    Conv2D/DepthwiseConv2D -> BatchNormalization (-> ReLU), split SeparableConv2D into DepthwiseConv2D +
    Conv2D 1x1 and fuse Add/Conv -> ReLU, giving the layers they touch a quantize config of their own. What is
    left without one gets the registry's (for the preserving schemes, one that also asks the 8-bit registry
    beneath: ``_TruthfulRegistry``). Finally each config's
    activations must be ones TF-MOT's QuantizeAwareActivation knows (a Conv2D with ``activation="selu"`` passes
    the registry and fails inside ``quantize_apply``). This mirrors TF-MOT 0.8.1's own checks but collects
    every refusal instead of raising on the first.
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
    registry = scheme.get_quantize_registry()  # for the preserving schemes, also asks the 8-bit registry
    refused = []
    for layer in transformed.layers:
        if layer.name not in quantize_map:
            continue
        config = quantize_map[layer.name].get("quantize_config")
        if config is None and not registry.supports(layer):
            refused.append((layer, type(layer).__name__))
            continue
        activation = unsupported_activation(layer, config or registry.get_quantize_config(layer))
        if activation:
            refused.append((layer, f"{type(layer).__name__} with activation {activation!r}"))
    return refused


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


def _rewritten(
    work: Any, stage: QatStage, ctx: StageContext, annotated: list[str], fold: bool
) -> tuple[Any, list[str], list[str], dict[str, list[str]]]:
    """The exact rewrites QAT needs on its own copy, each announced in a note: MobileNetV3's hard activations
    fused, 1-D layers lifted to 2-D, activations TF-MOT cannot fake-quantize inside a layer split off. Returns
    the model, the names of the layers to annotate (the new ones included), the TensorFlow functions
    (TFOpLambda layers) among them, which are refused with the other unsupported layers, and what was done
    (for the stage's details)."""
    head = ctx.data.head(64)
    sample = head[0] if len(head) == 1 else list(head)

    def added(before: set[str]) -> list[str]:
        return [layer.name for layer in work.layers if layer.name not in before]

    # A BatchNorm after a transposed or separable convolution, which TF-MOT does not fold (fold_batchnorm); not
    # under PQAT/CQAT/PCQAT (``fold`` false): a scale per channel breaks the clusters those preserve, and the
    # folded layer trained unpreserved (a prune + cluster + QAT U-Net fell from 49 % zeros to 30 % with it).
    work, folds = fold_batchnorm(work, sample, lambda layer: fold and layer.name in annotated)
    if folds:
        annotated = [n for n in annotated if n in {layer.name for layer in work.layers}]
        ctx.progress.note(f"{ctx.where}: BatchNorm folded (TF-MOT's QAT does not fold it there): " + "; ".join(folds))

    # A ReLU of what a ReLU gave changes nothing, but would be an int8 operator of its own (repeated_relu).
    work, repeated = drop_repeated_relu(work, sample, lambda layer: layer.name in annotated)
    if repeated:
        annotated = [n for n in annotated if n in {layer.name for layer in work.layers}]
        ctx.progress.note(
            f"{ctx.where}: ReLU layers that change nothing, which QAT would keep as operators of their own, "
            "dropped: " + "; ".join(repeated)
        )

    # MobileNetV3's hard-swish and hard-sigmoid, written with TensorFlow functions, become one layer each
    # (hard_activations says why); they, a product of two tensors (squeeze-and-excitation's gate) and affine
    # layers nothing folds get their output quantized only, which is all they need and TF-MOT has no default for.
    work, fused = fuse_hard_activations(work, sample, lambda layer: is_selected(layer, stage.layers))
    if fused:
        annotated = [n for n in annotated if n in {layer.name for layer in work.layers}]
        annotated += [layer.name for layer in work.layers if isinstance(layer, layers())]
        ctx.progress.note(f"{ctx.where}: " + "; ".join(fused))
    # Any other TensorFlow function called on Keras tensors breaks TF-MOT's model cloning once annotated.
    functions = [name for name in annotated if type(work.get_layer(name)).__name__ == "TFOpLambda"]
    # Conv1D and MaxPooling1D, which TF-MOT's QAT lacks, as 2-D twins on a height-1 image (lift_1d says why).
    before = {layer.name for layer in work.layers}
    work, lifted = lift_1d(work, sample)
    if lifted:
        annotated += added(before)  # the reshapes and causal paddings around them
        ctx.progress.note(
            f"{ctx.where}: 1-D layers computed as 2-D ones on a height-1 image, as TFLite runs them (TF-MOT's QAT "
            f"has no Conv1D): {', '.join(lifted)}"
        )
    # TF-MOT splits a SeparableConv2D itself, into layers it names depthwise_conv2d_1 and conv2d_1, which the
    # table's weights column and the per-layer profile could not tie to the user's layer: split it here instead
    # (a lifted SeparableConv1D too), the same two layers, named after it ("sep" -> "sep_dw" + "sep").
    separable = [name for name in annotated if type(work.get_layer(name)).__name__ == "SeparableConv2D"]
    work, split_separable = rewrite.split_separable_conv(
        work, sample, hint=f"exclude {', '.join(separable)} from QAT (layers.exclude)"
    )
    annotated += [f"{name}_dw" for name in separable]
    # A Conv2D or Dense with an activation QAT cannot fake-quantize inside the layer (selu, relu6, ...): the
    # activation becomes a layer of its own, quantized at its output only, and the layer trains as usual.
    before = {layer.name for layer in work.layers}
    work, split = rewrite.split_activation(
        work,
        sample,
        lambda layer: (
            layer.name in annotated
            and type(layer).__name__ in ACTIVATED_LAYERS
            and activation_name(layer.activation) not in known_activations()
        ),
    )
    if split:
        annotated += added(before)
        ctx.progress.note(f"{ctx.where}: activations QAT cannot quantize inside a layer: " + "; ".join(split))
    done = {
        "folded_batchnorms": folds,
        "dropped_relus": repeated,
        "split_separable": split_separable,
        "fused": fused,
        "lifted_1d": lifted,
        "split_activations": split,
    }
    return work, annotated, functions, done


def _own_lambdas() -> Any:
    """TF-MOT's own rewrites may hold Python lambdas (SeparableConv1D becomes expand_dims -> SeparableConv2D ->
    squeeze in Lambda layers), which tf_keras refuses to rebuild from a config in its safe mode: every model
    with a SeparableConv1D ended QAT with an internal error. They are TF-MOT's code, not a file's."""
    from tf_keras.src.saving import serialization_lib

    return serialization_lib.SafeModeScope(safe_mode=False)


def apply(model: Any, stage: QatStage, ctx: StageContext) -> StageOutcome:
    quantization = tfmot().quantization.keras

    scheme = choose_scheme(stage.scheme, ctx.history)
    work = copy_model(model)
    check_patterns(work, stage.layers, ctx.where)
    annotated_names, left_out, folded, lookups, unwrappable, opaque, own = [], [], [], [], [], [], []
    for layer in work.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        if scales_an_input(layer):
            folded.append(layer.name)
            continue
        if looks_up_input_ids(layer):
            lookups.append(layer.name)
            continue
        if type(layer).__name__ in UNWRAPPABLE and is_selected(layer, stage.layers):
            unwrappable.append(layer.name)
            continue
        if type(layer).__name__ == "Lambda" and not layer.weights and is_selected(layer, stage.layers):
            opaque.append(layer.name)
            continue
        if is_users_layer(layer) and is_selected(layer, stage.layers):  # TF-MOT has no quantize config for it
            own.append(layer.name)
            left_out.append(layer.name)
            continue
        (annotated_names if is_selected(layer, stage.layers) else left_out).append(layer.name)
    if lookups:
        ctx.progress.note(
            f"{ctx.where}: {', '.join(lookups)} read token ids, which TF-MOT's QAT cannot fake-quantize (it has no "
            "Embedding either): left to the converter, which quantizes the table (int8 GATHER)"
        )
    for what in sorted({UNWRAPPABLE[type(work.get_layer(name)).__name__] for name in unwrappable}):
        names = [name for name in unwrappable if UNWRAPPABLE[type(work.get_layer(name)).__name__] == what]
        ctx.progress.note(
            f"{ctx.where}: {', '.join(names)}: TF-MOT's QAT cannot wrap {what}; trained without fake quantization "
            "here and quantized by the converter from the representative data"
        )
    for names, what in ((opaque, "a Lambda layer is Python code"), (own, "a layer class of your own is one")):
        if names:
            ctx.progress.note(
                f"{ctx.where}: {', '.join(names)}: {what} TF-MOT's QAT cannot quantize; left out of QAT (as "
                "layers.exclude would) and quantized by the converter from the representative data"
            )
    if not any(has_weights(layer) for layer in work.layers if layer.name in annotated_names):
        raise ModelError(
            f"{ctx.where}: no layer with weights is left to train with quantization", hint=f"check {ctx.where}.layers"
        )

    work, annotated_names, functions, rewrites = _rewritten(work, stage, ctx, annotated_names, scheme == "default")

    registry = _scheme(scheme).get_quantize_registry()

    def annotate(layer: Any) -> Any:
        if layer.name in left_out and activation_breaks_output_quantization(layer, registry):
            return quantization.quantize_annotate_layer(layer, _output_only())
        if layer.name not in annotated_names or layer.name in functions:
            return layer
        if output_quantized_only(layer):
            return quantization.quantize_annotate_layer(layer, _output_only())
        if copies_values(layer):
            return quantization.quantize_annotate_layer(layer, _not_quantized())
        return quantization.quantize_annotate_layer(layer)

    for name in left_out:
        if follows_a_foldable_layer(work.get_layer(name)):
            ctx.progress.note(
                f"{ctx.where}: {name!r} is left out of QAT, so its BatchNormalization is not folded into the layer "
                "before it: the int8 model keeps extra MUL/ADD operators and runs slower"
            )

    def refusals(annotated: Any) -> list[tuple[Any, str]]:
        with _own_lambdas():
            return [(work.get_layer(name), "TFOpLambda") for name in functions] + unsupported_layers(
                annotated, _scheme(scheme)
            )

    annotated = wrap_layers(work, annotate)
    refused = refusals(annotated)
    preserved_only = _refused_by_preserving_only(refused, annotated, scheme, annotated_names)
    if preserved_only:  # plain QAT takes them: left out, as an exclude would, and frozen below with the others
        ctx.progress.note(
            f"{ctx.where}: {', '.join(preserved_only)}: TF-MOT's {SCHEME_NAMES[scheme]} cannot take "
            + ("this layer" if len(preserved_only) == 1 else "these layers")
            + " (plain QAT can); left out of QAT, its zeros and shared values kept, and quantized by the "
            "converter from the representative data"
        )
        annotated_names = [n for n in annotated_names if n not in preserved_only]
        left_out += preserved_only
        annotated = wrap_layers(work, annotate)
        refused = refusals(annotated)
    if refused:
        names = [layer.name for layer, _ in refused]
        raise ModelError(
            f"{ctx.where}: TF-MOT's 8-bit quantization-aware training does not support "
            + ", ".join(f"{layer.name!r} ({what})" for layer, what in refused),
            hint=f"add them to {ctx.where}.layers.exclude, e.g. exclude: {names} (the converter then quantizes "
            "them from the representative data), or use a ptq stage instead of qat",
        )
    try:
        with quantization.quantize_scope(), _own_lambdas():
            quantized = quantization.quantize_apply(annotated, _scheme(scheme))
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ModelError(
            f"{ctx.where}: TF-MOT cannot apply {SCHEME_NAMES[scheme]} to this model: {exc}",
            hint=f"leave the offending layer out with {ctx.where}.layers.exclude",
        ) from None
    frozen = _freeze_left_out(quantized, left_out + lookups + unwrappable) if scheme != "default" else []
    if frozen:
        ctx.progress.note(
            f"{ctx.where}: not trained here, being left out of QAT: {', '.join(frozen)}; so their zeros and shared "
            f"values survive ({SCHEME_NAMES[scheme]} preserves them only in the layers it trains)"
        )
    ranged_on = qat_ranges.calibrate(quantized, ctx.data.keras_x("train"))
    if ranged_on:
        ctx.progress.note(
            f"{ctx.where}: activation ranges measured on {ranged_on:,} training samples before the fine-tune "
            "(TF-MOT starts each at [-6, 6] and moves it 0.1 % per step)"
        )
    with _without_centroid_gradient_warning():
        history = train(quantized, ctx.data, ctx.train, ctx.progress, ctx.label, ctx.task, teacher=ctx.teacher)
    # The fine-tune moved the weights; the BatchNorms' moving averages lag them (a Keras 3 ResNet50 trained 2
    # epochs, then 1 of QAT: 0.25 with them, 0.92 re-estimated). They are what the converter folds.
    recalibrated = reestimate_batchnorm(quantized, ctx.data.keras_x("train"), BATCHNORM_SAMPLES)
    if recalibrated:
        ctx.progress.note(
            f"{ctx.where}: BatchNorm statistics re-estimated after the fine-tune ({recalibrated:,} samples)"
        )
    return StageOutcome(
        model=quantized,
        details={
            "scheme": SCHEME_NAMES[scheme],
            "scheme_requested": stage.scheme,
            "layers": annotated_names,
            "left_out": left_out,
            "frozen": frozen,
            "input_rescaling": folded,  # left to the converter
            "input_lookups": lookups,  # Embeddings of token ids: left to the converter
            # layers TF-MOT cannot wrap (attention, Bidirectional, Lambda, the user's own classes), or only plain QAT
            "left_to_converter": unwrappable + opaque + own + preserved_only,
            "activation_ranges_measured_on": ranged_on,
            "batchnorm_recalibrated_on": recalibrated,
            **rewrites,
        },
        training=history,
    )
