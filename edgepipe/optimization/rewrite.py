"""Exact rewrites of the float model before any stage: layers TF-MOT handles better in another, equal form.

``split_separable_conv``: a SeparableConv2D is a DepthwiseConv2D (with the strides and dilation) followed by a
1x1 Conv2D (with the bias and activation). TF-MOT's QAT makes the same split inside ``quantize_apply``, but
only for QAT; splitting up front lets pruning and clustering treat the depthwise and the pointwise kernels as
the separate layers they become on the board, and later stages see layers with their own names
(``NAME_dw`` and ``NAME``). The rewrite is checked numerically: the split model must give the same outputs.

``inline_nested_models``: a model used as one layer of another (the transfer-learning shape,
``Sequential([MobileNetV2(include_top=False), Dense(10)])``) is opaque to TF-MOT, whose wrappers take layers,
not models (QAT refuses it, pruning skips it), and to channel pruning's dependency graph. Its layers are
called, as copies with the same weights, on the outer model's tensors instead: one flat model, the same
function (checked numerically like the split).

``split_activation``: a Conv2D or Dense with ``activation="elu"`` (or any activation TF-MOT's QAT cannot
fake-quantize inside a layer) becomes the layer with a linear activation followed by an ``Activation`` layer
named ``NAME_ACTIVATION``; the qat stage does it on its own copy so that the kernel still trains with
quantization and the activation's output gets a quantization range of its own (without one the converter
leaves the activation in float).

``steady_constant_features``: a Keras ``Normalization`` adapted to data in which a feature never varies (the
digits' blank corner pixels, a sensor channel stuck at 0) divides that feature by ``epsilon`` (1e-7): a
multiplier of 10 million, harmless in float (the feature minus its mean is 0) but not in int8, where one
constant holds every feature's multiplier and the others round to nothing (a tabular digits model: 0.10
accuracy after PTQ instead of 0.96). Those features' variance is set to 1: the same outputs on the data.

``unwrap_time_distributed``: ``TimeDistributed(Dense(n))`` applies the Dense to each time step; a Dense on the
whole sequence does the same (it acts on the last axis), and that is what TFLite runs. TF-MOT's QAT has no
config for the wrapper and channel pruning cannot see into it; the Dense itself both take. The layer keeps the
wrapper's name (so ``exclude`` patterns still find it); checked numerically.

``drop_training_only_layers``: data augmentation written into the model (the Keras image-classification
tutorial's ``RandomFlip``, ``RandomRotation``, ...) and noise layers act only while training and pass their
input through at inference, but TF-MOT's QAT refuses them and the converter has nothing to convert. Once the
float model is trained they are removed: the same inference function (checked), one the stages can wrap.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edgepipe.errors import ModelError
from edgepipe.keras_compat import all_layers, keras, tf

TOLERANCE = 1e-4

# Keras layers that change their input only while training (tf_keras 2.21). Not RandomCrop: at inference it
# resizes and crops an input of another size.
TRAINING_ONLY = frozenset(
    {
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomContrast",
        "RandomBrightness",
        "RandomHeight",
        "RandomWidth",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
    }
)


def split_separable_conv(
    model: Any, sample: np.ndarray, hint: str = "leave model.split_separable_conv off for this model"
) -> tuple[Any, list[str]]:
    """The model with every SeparableConv2D split in two, and a line per split layer for the result."""
    separable = [layer for layer in model.layers if type(layer).__name__ == "SeparableConv2D"]
    if not separable:
        return model, []
    k = keras()
    config = copy.deepcopy(model.get_config())
    rewritten = []
    for entry in config["layers"]:
        if entry["class_name"] != "SeparableConv2D":
            rewritten.append(entry)
            continue
        depthwise, pointwise = _split_config(entry)
        rewritten.extend([depthwise, pointwise])
    config["layers"] = rewritten
    split = (k.Sequential if isinstance(model, k.Sequential) else k.Model).from_config(config)
    for layer in model.layers:
        if type(layer).__name__ == "SeparableConv2D":
            weights = layer.get_weights()
            split.get_layer(f"{layer.name}_dw").set_weights([weights[0]])
            split.get_layer(layer.name).set_weights(weights[1:])
        elif layer.weights:
            split.get_layer(layer.name).set_weights(layer.get_weights())
    check_same(model, split, sample, "splitting SeparableConv2D", hint)
    return split, [
        f"{layer.name} -> {layer.name}_dw (DepthwiseConv2D) + {layer.name} (Conv2D 1x1)" for layer in separable
    ]


def _split_config(entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Layer configs of the depthwise and pointwise halves; the pointwise half keeps the name (and so the
    references of the layers after it), the depthwise half takes the original inputs."""
    config = entry["config"]
    name = config["name"]
    depthwise = {
        "class_name": "DepthwiseConv2D",
        "config": {
            "name": f"{name}_dw",
            "trainable": config.get("trainable", True),
            "dtype": config.get("dtype", "float32"),
            "kernel_size": config["kernel_size"],
            "strides": config["strides"],
            "padding": config["padding"],
            "data_format": config.get("data_format"),
            "dilation_rate": config["dilation_rate"],
            "depth_multiplier": config["depth_multiplier"],
            "activation": "linear",
            "use_bias": False,
            "depthwise_initializer": config["depthwise_initializer"],
            "depthwise_regularizer": config.get("depthwise_regularizer"),
            "depthwise_constraint": config.get("depthwise_constraint"),
        },
        "name": f"{name}_dw",
    }
    pointwise = {
        "class_name": "Conv2D",
        "config": {
            "name": name,
            "trainable": config.get("trainable", True),
            "dtype": config.get("dtype", "float32"),
            "filters": config["filters"],
            "kernel_size": [1, 1],
            "strides": [1, 1],
            "padding": "valid",
            "data_format": config.get("data_format"),
            "activation": config["activation"],
            "use_bias": config["use_bias"],
            "kernel_initializer": config["pointwise_initializer"],
            "bias_initializer": config["bias_initializer"],
            "kernel_regularizer": config.get("pointwise_regularizer"),
            "bias_regularizer": config.get("bias_regularizer"),
            "activity_regularizer": config.get("activity_regularizer"),
            "kernel_constraint": config.get("pointwise_constraint"),
            "bias_constraint": config.get("bias_constraint"),
        },
        "name": name,
    }
    if "inbound_nodes" in entry:  # Functional: the depthwise half reads the original inputs
        depthwise["inbound_nodes"] = entry["inbound_nodes"]
        pointwise["inbound_nodes"] = [[[f"{name}_dw", 0, 0, {}]]]
    return depthwise, pointwise


def split_activation(model: Any, sample: Any, split: Callable[[Any], bool]) -> tuple[Any, list[str]]:
    """The model with every layer for which ``split(layer)`` holds followed by its activation as a layer of
    its own; and a line per split layer."""
    chosen = {layer.name: layer for layer in model.layers if split(layer)}
    if not chosen:
        return model, []
    k = keras()
    config = copy.deepcopy(model.get_config())
    renamed: dict[str, str] = {}
    rewritten = []
    for entry in config["layers"]:
        rewritten.append(entry)
        name = entry["config"]["name"]
        if name not in chosen:
            continue
        activation = entry["config"]["activation"]
        label = getattr(chosen[name].activation, "__name__", "activation")
        entry["config"]["activation"] = "linear"
        dtype = entry["config"].get("dtype")
        after = {
            "class_name": "Activation",
            "config": {"name": f"{name}_{label}", "trainable": True, "dtype": dtype, "activation": activation},
            "name": f"{name}_{label}",
        }
        if "inbound_nodes" in entry:
            after["inbound_nodes"] = [[[name, 0, 0, {}]]]
        renamed[name] = after["name"]
        rewritten.append(after)
    if "inbound_nodes" in rewritten[0] or "output_layers" in config:  # Functional: readers take the activation
        for entry in rewritten:
            if entry["name"] not in renamed.values():
                entry["inbound_nodes"] = _renamed_refs(entry.get("inbound_nodes", []), renamed)
        config["output_layers"] = _renamed_refs(config["output_layers"], renamed)
    config["layers"] = rewritten
    rebuilt = (k.Sequential if isinstance(model, k.Sequential) else k.Model).from_config(config)
    for layer in model.layers:
        if layer.weights:
            rebuilt.get_layer(layer.name).set_weights(layer.get_weights())
    check_same(model, rebuilt, sample, "moving activations into layers of their own", "leave the layer out of QAT")
    return rebuilt, [f"{name} -> {name} + {renamed[name]} (Activation)" for name in chosen]


def _renamed_refs(value: Any, renamed: dict[str, str]) -> Any:
    """``[layer_name, node, tensor, ...]`` references inside a Functional config, pointed at the new names."""
    if isinstance(value, list) and value and isinstance(value[0], str) and value[0] in renamed:
        return [renamed[value[0]], *value[1:]]
    if isinstance(value, list):
        return [_renamed_refs(item, renamed) for item in value]
    if isinstance(value, dict):
        return {key: _renamed_refs(item, renamed) for key, item in value.items()}
    return value


def inline_nested_models(model: Any, sample: Any) -> tuple[Any, list[str]]:
    """The model with every nested model's layers in its own graph, and a line per inlined model."""
    if not any(isinstance(layer, keras().Model) for layer in model.layers):
        return model, []
    flat, inlined, _ = replayed(model)
    check_same(model, flat, sample, "inlining nested models", "build the model without nesting models in it")
    return flat, inlined


def drop_training_only_layers(model: Any, sample: Any) -> tuple[Any, list[str]]:
    """The model without the layers in ``TRAINING_ONLY`` (nested models are inlined on the way), and their
    names with their classes."""
    if not any(type(layer).__name__ in TRAINING_ONLY for layer in all_layers(model)):
        return model, []
    rebuilt, _, dropped = replayed(model, skip=TRAINING_ONLY)
    check_same(model, rebuilt, sample, "removing training-only layers", "remove the augmentation layers yourself")
    return rebuilt, dropped


# Layers that act on the last axis alone, so that TimeDistributed(layer) on (batch, steps, ..., features) equals
# the layer on the whole tensor.
LAST_AXIS_LAYERS = frozenset({"Dense", "Activation", "ReLU", "LeakyReLU", "Dropout"})


def unwrap_time_distributed(model: Any, sample: Any) -> tuple[Any, list[str]]:
    """The model with each ``TimeDistributed`` of a layer in ``LAST_AXIS_LAYERS`` replaced by that layer (same
    name and weights), and a line per replaced wrapper."""
    k = keras()

    def wrapped(layer: Any) -> bool:
        return isinstance(layer, k.layers.TimeDistributed) and type(layer.layer).__name__ in LAST_AXIS_LAYERS

    if not any(wrapped(layer) for layer in model.layers):
        return model, []
    lines: list[str] = []

    def unwrap(node: Any, layer: Any, args: Any, kwargs: Any) -> Any:
        if not wrapped(layer):
            return None
        inner = layer.layer
        config = {**inner.get_config(), "name": layer.name}
        twin = inner.__class__.from_config(config)
        produced = twin(args[0])
        twin.set_weights(inner.get_weights())
        lines.append(f"{layer.name}: TimeDistributed({type(inner).__name__}) -> {type(inner).__name__}")
        return produced

    unwrapped, _, _ = replayed(model, replace=unwrap)
    check_same(model, unwrapped, sample, "unwrapping TimeDistributed", "use a ptq stage, or exclude the layer")
    return unwrapped, lines


CONSTANT_STD = 1e-6  # a feature whose standard deviation is below this never varied in the adapted data


def steady_constant_features(model: Any, sample: Any) -> tuple[Any, list[str]]:
    """``model`` with each Normalization's constant features divided by 1 instead of epsilon; a line per layer
    changed. Checked on ``sample``: a feature that does vary there keeps the model as it was (and a note)."""
    lines = []
    for layer in model.layers:
        if type(layer).__name__ != "Normalization" or layer.invert or len(layer.get_weights()) < 2:
            continue
        weights = layer.get_weights()
        constant = np.sqrt(np.maximum(weights[1], 0.0)) < CONSTANT_STD
        if not constant.any() or constant.all():
            continue
        before = [np.asarray(o) for o in _as_list(model(sample, training=False))]
        weights[1] = np.where(constant, 1.0, weights[1]).astype(weights[1].dtype)
        original = layer.get_weights()
        layer.set_weights(weights)
        after = [np.asarray(o) for o in _as_list(model(sample, training=False))]
        worst = max(float(np.max(np.abs(a - b))) for a, b in zip(before, after, strict=True))
        if worst > TOLERANCE:  # the feature varies in this data after all: leave the layer as the user made it
            layer.set_weights(original)
            lines.append(f"{layer.name}: left as it is, {int(constant.sum())} feature(s) with zero variance vary here")
            continue
        lines.append(
            f"{layer.name}: {int(constant.sum())} of {constant.size} features never vary in the data it was "
            "adapted to; their variance is set to 1 (Keras divided them by 1e-7, which int8 cannot hold next to "
            "the other features' scales)"
        )
    return model, lines


def fold_input_rescaling(model: Any, sample: Any) -> tuple[Any, list[str]]:
    """A Rescaling that reads the input and feeds only a Normalization with per-feature statistics (a tabular
    model's; EfficientNet's with ImageNet weights) folded into it: ``(x * s + o - mean) / std`` is a
    Normalization of ``x`` with mean ``(mean - o) / s`` and deviation ``std / s``. Two such affine layers in a
    row at the input break QAT's int8 model: the converter quantizes the per-feature multipliers with the scale
    of the tensor between them (0.5 at most; 0.10 accuracy on a tabular digits model, 0.87 with both left to
    it). One Normalization reading the input is quantized from the calibration data like any input scaling
    (0.96). A line per fold."""
    pairs = []
    for layer in model.layers:
        readers = [node.outbound_layer for node in layer._outbound_nodes if node.outbound_layer in model.layers]
        if type(layer).__name__ != "Rescaling" or len(readers) != 1:
            continue
        norm = readers[0]
        if type(norm).__name__ != "Normalization":  # (a Concatenate's axis is one int, a Normalization's a list)
            continue
        sources = [source for node in layer._inbound_nodes for source in _as_list(node.inbound_layers)]
        last_axis = list(norm.axis) in ([-1], [len(norm.input_shape) - 1])
        if (
            not norm.invert
            and last_axis
            and all(type(source).__name__ == "InputLayer" for source in sources)
            and _per_feature(norm)
        ):
            pairs.append((layer, norm))
    if not pairs:
        return model, []
    folded, _, _ = replayed(model, skip=frozenset(rescaling.name for rescaling, _ in pairs))
    for rescaling, norm in pairs:
        scale, offset = float(np.asarray(rescaling.scale)), float(np.asarray(rescaling.offset))
        mean, variance, *rest = norm.get_weights()
        folded.get_layer(norm.name).set_weights([(mean - offset) / scale, variance / scale**2, *rest])
    check_same(model, folded, sample, "folding an input Rescaling into its Normalization", "use a ptq stage")
    return folded, [f"{r.name} folded into {n.name} (one affine layer at the input)" for r, n in pairs]


def _per_feature(norm: Any) -> bool:
    """Whether a Normalization's mean or scale differs between features. A uniform one is a scalar affine map
    that the converter folds into the quantization by itself: EfficientNetB0's default statistics, where
    folding the Rescaling into it made QAT's Keras model itself worse (0.20 against 0.78 after one epoch)."""
    weights = norm.get_weights()
    if len(weights) < 2:  # statistics given as constants (Normalization(mean=..., variance=...)): left alone
        return False
    mean, variance = (np.asarray(w, dtype=np.float64).reshape(-1) for w in weights[:2])
    return bool(np.ptp(mean) > 0 or np.ptp(variance) > 0)


def replayed(
    model: Any, skip: frozenset[str] = frozenset(), replace: Replacer | None = None
) -> tuple[Any, list[str], list[str]]:
    """``model`` replayed as one flat Functional model, without the layers whose class is in ``skip``, and with
    each call that ``replace`` answers replaced by what it returns; with a line per inlined model and one per
    skipped layer."""
    k = keras()
    inputs, tensors = fresh_inputs(model)
    names = {layer.name for layer in model.layers}
    twins: dict[int, tuple[Any, Any]] = {}  # id(layer) -> (layer, its copy): a shared layer stays shared
    inlined: list[str] = []
    skipped: list[str] = []
    _replay(model, None, tensors, names, twins, inlined, skip, skipped, replace)
    flat = k.Model(inputs, [tensors[id(t)] for t in model.outputs], name=model.name)
    for original, twin in twins.values():
        twin.set_weights(original.get_weights())
    return flat, inlined, skipped


# (node, layer, mapped args, mapped kwargs) -> the new output tensor that replaces the call, or None to copy it
Replacer = Callable[[Any, Any, Any, Any], Any]


def fresh_inputs(model: Any) -> tuple[list[Any], dict[int, Any]]:
    """New Keras inputs like ``model``'s, and the map from its input tensors to them that a replay starts from."""
    k = keras()
    inputs = [
        k.Input(batch_shape=x.shape, dtype=x.dtype, name=name)
        for x, name in zip(model.inputs, model.input_names, strict=True)
    ]
    return inputs, {id(old): new for old, new in zip(model.inputs, inputs, strict=True)}


def graph_calls(model: Any, tensors: dict[int, Any]) -> Iterator[tuple[Any, Any, Any, Any]]:
    """Each call of a layer in ``model``'s graph, in order (inputs aside), as (node, layer, args, kwargs) with
    its arguments mapped through ``tensors`` (the replay's new tensors, filled in as the caller goes)."""
    k, t = keras(), tf()
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if isinstance(node.layer, k.layers.InputLayer):
                continue
            args, kwargs = t.nest.map_structure(lambda x: tensors.get(id(x), x), (node.call_args, node.call_kwargs))
            yield node, node.layer, args, kwargs


def _replay(
    model: Any,
    nested: str | None,
    tensors: dict[int, Any],
    names: set[str],
    twins: dict,
    inlined: list[str],
    skip: frozenset[str],
    skipped: list[str],
    replace: Replacer | None = None,
) -> None:
    """Call a copy of each layer of ``model``'s graph, in order, on the tensors that ``tensors`` maps its inputs
    to; a nested model's graph is replayed the same way, its inputs mapped to what it was called on. Layers of
    a nested model keep their names unless the outer model has the name already (then ``MODEL_NAME``). A layer
    whose class or name is in ``skip`` is not called: its output is its input."""
    k, t = keras(), tf()
    for node, layer, args, kwargs in graph_calls(model, tensors):
        if isinstance(layer, k.Model):
            given = [x for x in t.nest.flatten((args, kwargs)) if k.backend.is_keras_tensor(x)]
            for inner, outer in zip(layer.inputs, given, strict=True):
                tensors[id(inner)] = outer
            _replay(layer, layer.name, tensors, names, twins, inlined, skip, skipped, replace)
            for inner, outer in zip(layer.outputs, t.nest.flatten(node.outputs), strict=True):
                tensors[id(outer)] = tensors[id(inner)]
            line = f"{layer.name} ({len(layer.layers)} layers) inlined into {model.name}"
            inlined.extend([] if line in inlined else [line])
            continue
        if type(layer).__name__ in skip or layer.name in skip:
            given = [x for x in t.nest.flatten(args) if k.backend.is_keras_tensor(x)]
            tensors[id(t.nest.flatten(node.outputs)[0])] = given[0]
            line = f"{layer.name} ({type(layer).__name__})"
            skipped.extend([] if line in skipped else [line])
            continue
        produced = replace(node, layer, args, kwargs) if replace is not None else None
        if produced is not None:
            tensors[id(t.nest.flatten(node.outputs)[0])] = produced
            continue
        if id(layer) not in twins:  # a layer called twice (shared weights) is copied once and called twice
            config = layer.get_config()
            if nested is not None and config["name"] in names:
                config["name"] = f"{nested}_{config['name']}"
            names.add(config["name"])
            twins[id(layer)] = (layer, layer.__class__.from_config(config))
        produced = twins[id(layer)][1](*args, **kwargs)
        for old, new in zip(t.nest.flatten(node.outputs), t.nest.flatten(produced), strict=True):
            tensors[id(old)] = new


def check_same(model: Any, rewritten: Any, sample: Any, what: str, hint: str) -> None:
    """The rewritten model gives the same outputs on ``sample`` (to ``TOLERANCE``), or a ModelError."""
    want = [np.asarray(o) for o in _as_list(model(sample, training=False))]
    got = [np.asarray(o) for o in _as_list(rewritten(sample, training=False))]
    if [a.shape for a in want] != [b.shape for b in got]:
        raise ModelError(f"{what} changed the shapes of the model's outputs", hint=hint)
    worst = max((float(np.max(np.abs(a - b))) for a, b in zip(want, got, strict=True) if a.size), default=0.0)
    if worst > TOLERANCE:
        raise ModelError(f"{what} changed the model's outputs (largest difference {worst:g})", hint=hint)


def _as_list(outputs: Any) -> list[Any]:
    return list(outputs) if isinstance(outputs, list | tuple) else [outputs]
