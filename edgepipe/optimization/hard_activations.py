"""Hard-swish and hard-sigmoid as single Keras layers, so that quantization-aware training can take them.

MobileNetV3 (Keras Applications, and models written like it) computes ``hard_sigmoid(x) = relu6(x + 3) / 6``
and ``hard_swish(x) = x * hard_sigmoid(x)`` with TensorFlow functions on Keras tensors: TFOpLambda layers, which
TF-MOT's QAT cannot clone (tensorflow/model-optimization#1145). Written as separate Keras layers instead
(Rescaling, ReLU, Multiply) they train, but every intermediate tensor gets its own fake quantization and the
converter can no longer fuse the chain into TFLite's HARD_SWISH: measured on a MobileNetV3-style block, 10 MUL
and 6 ADD operators instead. One layer per activation, with only its output quantized (TF-MOT's
``Default8BitOutputQuantizeConfig``), keeps the fusion: the int8 model has the same HARD_SWISH as post-training
quantization gives.

``fuse_hard_activations`` finds the chains (``x + 3`` -> relu6 -> ``* (1/6)`` or ``/ 6`` -> ``* x``, in either
order of the two products, the relu6 as ``tf.nn.relu6``, ``ReLU(6)`` or ``Activation("relu6")``) whose inner
tensors nothing else reads, and calls one layer in their place. Done by the qat stage only, on its own copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepipe.keras_compat import keras, tf
from edgepipe.optimization.rewrite import check_same

SIXTH = 1.0 / 6.0


def _register() -> tuple[type, type]:
    k, ops = keras(), tf()  # looked up once: autograph converts call(), which must not call edgepipe's lookups

    @k.utils.register_keras_serializable(package="edgepipe")
    class HardSigmoid(k.layers.Layer):
        """relu6(x + 3) / 6, MobileNetV3's gate."""

        def call(self, inputs: Any) -> Any:
            return ops.nn.relu6(inputs + 3.0) * SIXTH

    @k.utils.register_keras_serializable(package="edgepipe")
    class HardSwish(k.layers.Layer):
        """x * relu6(x + 3) / 6, MobileNetV3's activation; the converter fuses it into one HARD_SWISH."""

        def call(self, inputs: Any) -> Any:
            return inputs * ops.nn.relu6(inputs + 3.0) * SIXTH

    return HardSigmoid, HardSwish


_LAYERS: tuple[type, type] | None = None


def layers() -> tuple[type, type]:
    """(HardSigmoid, HardSwish), defined once (registered for saving and loading under ``edgepipe>``)."""
    global _LAYERS
    if _LAYERS is None:
        _LAYERS = _register()
    return _LAYERS


def fuse_hard_activations(model: Any, sample: Any, wanted: Any = None) -> tuple[Any, list[str]]:
    """The model with every hard-swish / hard-sigmoid chain as one layer, and a line per kind for the result.
    ``wanted(layer)``: fuse only chains whose every layer it accepts (the stage's layer selection)."""
    chains = [c for c in _find_chains(model) if wanted is None or all(wanted(n.layer) for n in c["nodes"])]
    if not chains:
        return model, []
    k = keras()
    hard_sigmoid, hard_swish = layers()
    ends = {id(chain["end"]): chain for chain in chains}
    inner = {id(node) for chain in chains for node in chain["nodes"]}
    names = {layer.name for layer in model.layers}
    inputs = [
        k.Input(batch_shape=t.shape, dtype=t.dtype, name=name)
        for t, name in zip(model.inputs, model.input_names, strict=True)
    ]
    tensors = {id(old): new for old, new in zip(model.inputs, inputs, strict=True)}
    copies: dict[int, tuple[Any, Any]] = {}
    for node in _nodes(model):
        layer = node.layer
        if id(node) in ends:
            chain = ends[id(node)]
            kind = hard_swish if chain["kind"] == "hard_swish" else hard_sigmoid
            name = _unique(f"{_producer(chain['x'])}_{chain['kind']}", names)
            tensors[id(node.outputs)] = kind(name=name)(tensors[id(chain["x"])])
            continue
        if id(node) in inner:
            continue
        if id(layer) not in copies:
            copies[id(layer)] = (layer, layer.__class__.from_config(layer.get_config()))
        args, kwargs = tf().nest.map_structure(lambda x: tensors.get(id(x), x), (node.call_args, node.call_kwargs))
        produced = copies[id(layer)][1](*args, **kwargs)
        for old, new in zip(tf().nest.flatten(node.outputs), tf().nest.flatten(produced), strict=True):
            tensors[id(old)] = new
    fused = k.Model(inputs, [tensors[id(t)] for t in model.outputs], name=model.name)
    for original, twin in copies.values():
        twin.set_weights(original.get_weights())
    check_same(model, fused, sample, "fusing hard-swish", "leave the activations out of QAT with layers.exclude")
    counts = {kind: sum(1 for c in chains if c["kind"] == kind) for kind in ("hard_swish", "hard_sigmoid")}
    return fused, [f"{count} {kind} chain(s) -> one {kind} layer each" for kind, count in counts.items() if count]


def _nodes(model: Any) -> list[Any]:
    """The model's calls in the order they run (inputs excluded)."""
    k = keras()
    found = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        found.extend(n for n in model._nodes_by_depth[depth] if not isinstance(n.layer, k.layers.InputLayer))
    return found


def _find_chains(model: Any) -> list[dict[str, Any]]:
    nodes = _nodes(model)
    readers: dict[int, list[Any]] = {}
    for node in nodes:
        for tensor in _tensors_in(node):
            readers.setdefault(id(tensor), []).append(node)

    def only_reader(node: Any) -> Any:
        found = readers.get(id(node.outputs), [])
        return found[0] if len(found) == 1 else None

    chains = []
    for add in nodes:
        x = _scalar(add, ("__operators__.add", "math.add"), 3.0)
        relu6 = only_reader(add) if x is not None else None
        if relu6 is None or not _is_relu6(relu6):
            continue
        after = only_reader(relu6)
        if after is not None and _scales_by_a_sixth(after) is not None:  # (x + 3 -> relu6 -> / 6) [* x]
            product = only_reader(after)
            if product is not None and _is_product_of(product, x, after.outputs):
                chains.append({"kind": "hard_swish", "x": x, "nodes": [add, relu6, after, product], "end": product})
            else:
                chains.append({"kind": "hard_sigmoid", "x": x, "nodes": [add, relu6, after], "end": after})
        elif after is not None and _is_product_of(after, x, relu6.outputs):  # x * relu6(x + 3) -> / 6
            sixth = only_reader(after)
            if sixth is not None and _scales_by_a_sixth(sixth) is not None:
                chains.append({"kind": "hard_swish", "x": x, "nodes": [add, relu6, after, sixth], "end": sixth})
    return chains


def _tensors_in(node: Any) -> list[Any]:
    k = keras()
    flat = tf().nest.flatten((node.call_args, node.call_kwargs))
    return [x for x in flat if not isinstance(x, int | float | str | type(None)) and k.backend.is_keras_tensor(x)]


def _function(node: Any) -> str | None:
    return node.layer.get_config().get("function") if type(node.layer).__name__ == "TFOpLambda" else None


def _scalar(node: Any, functions: tuple[str, ...], value: float) -> Any:
    """The tensor ``node`` combines with the scalar ``value`` through one of ``functions``, or None."""
    if _function(node) not in functions:
        return None
    tensors = _tensors_in(node)
    scalars = [x for x in tf().nest.flatten((node.call_args, node.call_kwargs)) if isinstance(x, int | float)]
    if len(tensors) == 1 and len(scalars) == 1 and np.isclose(float(scalars[0]), value):
        return tensors[0]
    return None


def _scales_by_a_sixth(node: Any) -> Any:
    found = _scalar(node, ("math.multiply",), SIXTH)
    return found if found is not None else _scalar(node, ("math.truediv",), 6.0)


def _is_relu6(node: Any) -> bool:
    layer = node.layer
    if _function(node) == "nn.relu6":
        return len(_tensors_in(node)) == 1
    kind = type(layer).__name__
    if kind == "ReLU":
        config = layer.get_config()
        return (
            config.get("max_value") is not None
            and float(config["max_value"]) == 6.0
            and not config.get("negative_slope")
            and not config.get("threshold")
        )
    return kind == "Activation" and layer.get_config().get("activation") == "relu6"


def _is_product_of(node: Any, first: Any, second: Any) -> bool:
    """``node`` multiplies exactly these two tensors (a Multiply layer or ``a * b``)."""
    if type(node.layer).__name__ != "Multiply" and _function(node) != "math.multiply":
        return False
    tensors = _tensors_in(node)
    return len(tensors) == 2 and {id(t) for t in tensors} == {id(first), id(second)}


def _producer(tensor: Any) -> str:
    return tensor._keras_history.layer.name


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 1
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate


def chain_layer_names(model: Any) -> set[str]:
    """The layers of every hard-swish / hard-sigmoid chain in ``model``: left as they are until the qat stage
    fuses them (``tf_functions`` must not turn their ``x + 3`` into a Rescaling first)."""
    return {node.layer.name for chain in _find_chains(model) for node in chain["nodes"]}
