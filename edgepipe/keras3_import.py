"""Keras 3 models rebuilt in tf_keras (Keras 2), the only Keras TF-MOT can wrap.

TensorFlow 2.16+ gives its users Keras 3, so ``model.save("model.keras")`` in a current notebook writes a Keras 3
model: Functional more often than not, with ResNet-style adds, a backbone model nested as a layer, and tensor
arithmetic (``x * 0.5 + y``, ``keras.ops.concatenate``) that Keras 3 records as operations, not layers.

The rebuild replays the Keras 3 graph node by node on tf_keras tensors:

- a layer becomes the tf_keras layer of the same class built from the same config (a Keras 3-only setting is
  accepted when it holds Keras 3's default, so the feature is unused; otherwise the layer is refused by name);
  an activation tf_keras does not have, or has with another formula (Keras 3's ``hard_sigmoid`` is
  ``relu6(x + 3) / 6``, tf_keras' is ``clip(0.2 x + 0.5)``), becomes edgepipe's own layer after the layer;
- a nested model is inlined: its layers join the outer graph, the way ``rewrite.inline_nested_models`` does for
  tf_keras models;
- an operation becomes the TensorFlow function a tf_keras user would have written (``x + 3.0``, ``tf.concat``),
  which is what edgepipe's other rewrites already read (hard-swish chains, Keras layers for TF functions).

The weights are copied and the rebuilt model must give the original's outputs on a data sample, else the model
is refused with the largest difference: a rebuild is faithful or it is not used.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from edgepipe.errors import ModelError
from edgepipe.keras_compat import flat_io, is_graph_tensor, keras, tf

TOLERANCE = 1e-4  # of the output's largest magnitude: float32 sums in another order differ by ~1e-6 of it

REBUILD_HINT = "build the model with tf_keras (import tf_keras as keras) and save it again, or give a factory"

# Keras 3 activation names that tf_keras reads with the same formula under another name.
SAME_ACTIVATION = {"silu": "swish"}
# Keras 3 activations tf_keras lacks or computes otherwise: edgepipe's layer of the same formula follows the layer.
HARD_ACTIVATIONS = {"hard_silu": 1, "hard_swish": 1, "hard_sigmoid": 0}  # index into hard_activations.layers()


def is_keras3_model(model: Any) -> bool:
    """True for a model built with Keras 3 (the ``keras`` package), which TF-MOT cannot wrap."""
    return type(model).__module__.startswith("keras.") or type(model).__module__ == "keras"


def convert_keras3(model: Any, sample: Any) -> tuple[Any, list[str]]:
    """``model`` rebuilt as a tf_keras Functional model with its weights, checked on ``sample``, and lines saying
    what the rebuild changed in form (inlined models, operations, activations); or ModelError."""
    import keras as keras3

    model, flattened = flat_io(model, keras3.Model)  # a dict model refuses the list of data arrays
    graph = _graph(model)
    k2 = keras()
    inputs = [k2.Input(batch_shape=tuple(x.shape), dtype=x.dtype, name=x._keras_history[0].name) for x in graph.inputs]
    replay = _Replay()
    for old, new in zip(graph.inputs, inputs, strict=True):
        replay.tensors[id(old)] = new
    replay.run(graph, nested=None)
    twin = k2.Model(inputs, [replay.tensors[id(x)] for x in graph.outputs], name=model.name)
    for original, copy in replay.twins.values():
        _copy_weights(original, copy)
    _check_same(model, twin, sample)
    lines = [f"rebuilt from Keras 3 in tf_keras, which TF-MOT needs ({len(replay.twins)} layers, same outputs)"]
    lines += [f"{name} ({count} layers) inlined" for name, count in replay.inlined.items()]
    if replay.operations:
        lines.append(f"{replay.operations} Keras 3 operation(s) as TensorFlow functions")
    lines += [f"{name}: {kind}" for name, kind in replay.activations.items()]
    return twin, flattened + lines


def _graph(model: Any) -> Any:
    """The Functional graph of a Keras 3 model: itself, or a Sequential's inner one."""
    if type(model).__name__ == "Sequential":
        inner = getattr(model, "_functional", None)
        if inner is None:
            raise ModelError(
                "this Keras 3 Sequential model was never built (no input shape)",
                hint="start it with keras.Input(shape) and save it again",
            )
        return inner
    if type(model).__name__ != "Functional":
        raise ModelError(
            f"this is a subclassed Keras 3 model ({type(model).__name__}); only Sequential and Functional models "
            "can be rebuilt for TF-MOT",
            hint=REBUILD_HINT,
        )
    return model


class _Replay:
    """The rebuild's state: Keras 3 tensors -> tf_keras tensors, and each Keras 3 layer's tf_keras copy (one per
    layer, so a layer called twice keeps sharing its weights)."""

    def __init__(self) -> None:
        self.tensors: dict[int, Any] = {}
        self.twins: dict[int, tuple[Any, Any]] = {}
        self.after: dict[int, Any] = {}  # id(layer) -> the activation layer split off it
        self.names: set[str] = set()
        self.inlined: dict[str, int] = {}  # nested model -> its layers
        self.operations = 0
        self.activations: dict[str, str] = {}  # layer -> how its activation was rebuilt

    def run(self, graph: Any, nested: str | None) -> None:
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                if not node.is_input:
                    self._call(node, nested)

    def _call(self, node: Any, nested: str | None) -> None:
        operation = node.operation
        args, kwargs = self._mapped(node.arguments.args), self._mapped(node.arguments.kwargs)
        # training: Keras 3 may record a call default (RandomFlip: True), which would fix the learning phase
        kwargs = {key: value for key, value in kwargs.items() if value is not None and key != "training"}
        if type(operation).__name__ in ("Functional", "Sequential"):
            inner = _graph(operation)
            given = [x for x in tf().nest.flatten((args, kwargs)) if is_graph_tensor(x)]
            for old, new in zip(inner.inputs, given, strict=True):
                self.tensors[id(old)] = new
            self.run(inner, operation.name)
            self.inlined[operation.name] = len(operation.layers)
            for old, new in zip(tf().nest.flatten(node.outputs), inner.outputs, strict=True):
                self.tensors[id(old)] = self.tensors[id(new)]
            return
        if _is_layer(operation):
            produced = self._layer(operation, nested)(*args, **kwargs)
            if id(operation) in self.after:
                produced = self.after[id(operation)](produced)
        else:
            produced = _operation(operation, args, kwargs)
            self.operations += 1
        for old, new in zip(tf().nest.flatten(node.outputs), tf().nest.flatten(produced), strict=True):
            self.tensors[id(old)] = new

    def _mapped(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return type(value)(self._mapped(item) for item in value)
        if isinstance(value, dict):
            return {key: self._mapped(item) for key, item in value.items()}
        if id(value) in self.tensors:
            return self.tensors[id(value)]
        if type(value).__name__ == "KerasTensor":  # a tensor of a graph not replayed: a bug, not the user's
            raise ModelError(f"Keras 3 tensor {value.name} was used before it was computed")
        return value

    def _layer(self, layer: Any, nested: str | None) -> Any:
        if id(layer) not in self.twins:
            twin, activation = _twin(layer)
            if nested is not None and twin.name in self.names:
                twin._name = f"{nested}_{twin.name}"
            self.names.add(twin.name)
            self.twins[id(layer)] = (layer, twin)
            if activation is not None:
                self.after[id(layer)] = activation
            if type(twin).__name__ != type(layer).__name__ or activation is not None:
                made = type(activation or twin).__name__
                self.activations[layer.name] = f"Keras 3 {layer.get_config()['activation']!r} -> edgepipe's {made}"
        return self.twins[id(layer)][1]


def _is_layer(operation: Any) -> bool:
    import keras as keras3

    return isinstance(operation, keras3.layers.Layer)


def _twin(layer: Any) -> tuple[Any, Any]:
    """The tf_keras copy of a Keras 3 layer (weights not yet copied), and the activation layer to call after it
    when its activation had to be split off (else None)."""
    k2 = keras()
    kind = type(layer).__name__
    cls = getattr(k2.layers, kind, None)
    if cls is None:
        raise ModelError(f"Keras 3 layer {layer.name!r} ({kind}) has no tf_keras equivalent", hint=REBUILD_HINT)
    if kind in WRAPPERS:
        return _wrapper_twin(layer, cls), None
    config = dict(layer.get_config())
    policy = getattr(layer, "dtype_policy", None)
    config["dtype"] = getattr(policy, "name", None) or layer.dtype
    for key, value in list(config.items()):
        config[key] = _setting(key, value)
    accepted = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable", "dtype"}
    for keras3_name, tf_keras_name in RENAMED.get(kind, {}).items():
        if keras3_name in config and tf_keras_name in accepted:
            config[tf_keras_name] = config.pop(keras3_name)
    defaults = _defaults(type(layer))
    dropped = sorted(
        key
        for key, value in config.items()
        if key not in accepted
        and value not in (None, False, {}, [], ())
        and defaults.get(key, _NONE) != value
        and (key, value) not in IMPLIED
    )
    if dropped:
        raise ModelError(
            f"Keras 3 layer {layer.name!r} ({kind}) uses settings tf_keras does not have: {', '.join(dropped)}",
            hint=REBUILD_HINT,
        )
    full, config = config, {key: value for key, value in config.items() if key in accepted}
    after = None
    if kind == "Activation" or "activation" in config:
        config["activation"], after = _activation(layer, config.get("activation"), kind == "Activation")
        if kind == "Activation" and after is not None:  # the activation layer itself becomes edgepipe's layer
            return after, None
    for _ in range(len(full)):
        try:
            return cls.from_config(config), after
        except KeyError as missing:  # a from_config that reads more than __init__ takes (MultiHeadAttention's
            key = missing.args[0] if missing.args else None  # query_shape): Keras 3's value, or None (unknown:
            if not isinstance(key, str) or key in config:  # built when the replay calls the layer; the outputs
                raise ModelError(  # are compared at the end)
                    f"Keras 3 layer {layer.name!r} ({kind}) cannot be rebuilt in tf_keras: no setting {key!r}",
                    hint=REBUILD_HINT,
                ) from None
            config[key] = full.get(key)
        except Exception as exc:  # tf_keras raises many kinds for a config it cannot take
            raise ModelError(
                f"Keras 3 layer {layer.name!r} ({kind}) cannot be rebuilt in tf_keras: {exc}", hint=REBUILD_HINT
            ) from None
    raise ModelError(f"Keras 3 layer {layer.name!r} ({kind}) cannot be rebuilt in tf_keras", hint=REBUILD_HINT)


_NONE = object()

# Keras 3 settings tf_keras has under another name, by layer class.
RENAMED = {"LeakyReLU": {"negative_slope": "alpha"}}
# Keras 3 settings that state what tf_keras always does (its preprocessing layers take channels last only).
IMPLIED = {("data_format", "channels_last")}
# Layers that wrap another layer: rebuilt around the tf_keras twin of the wrapped one.
WRAPPERS = ("Bidirectional", "TimeDistributed")


def _wrapper_twin(layer: Any, cls: type) -> Any:
    """A Bidirectional or TimeDistributed rebuilt around the tf_keras twins of the layers it wraps (its config
    holds them serialized by Keras 3, which tf_keras cannot read)."""
    if type(layer).__name__ == "TimeDistributed":
        inner, _ = _twin(layer.layer)
        return cls(inner, name=layer.name)
    forward, _ = _twin(layer.forward_layer)
    backward, _ = _twin(layer.backward_layer)
    return cls(forward, merge_mode=layer.merge_mode, backward_layer=backward, name=layer.name)


def _defaults(cls: type) -> dict[str, Any]:
    """A Keras 3 layer class's constructor defaults: a setting at its default is a feature the model does not
    use, so tf_keras not having it changes nothing."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _setting(key: str, value: Any) -> Any:
    """A Keras 3 config value as tf_keras reads it: serialized objects without Keras 3's module fields;
    initializers by class name (they matter only before training, and Keras 3 adds arguments tf_keras lacks)."""
    if isinstance(value, dict) and "class_name" in value:
        if key.endswith("_initializer"):
            return value["class_name"]
        return {"class_name": value["class_name"], "config": value.get("config", {})}
    return value


def _activation(layer: Any, name: Any, standalone: bool) -> tuple[Any, Any]:
    """(the activation tf_keras gets, edgepipe's layer to call after it or None) for a Keras 3 activation."""
    from edgepipe.optimization.hard_activations import layers as hard_layers

    if not isinstance(name, str) or name == "linear":
        return name, None
    if name in HARD_ACTIVATIONS:
        cls = hard_layers()[HARD_ACTIVATIONS[name]]
        return "linear", cls(name=layer.name if standalone else f"{layer.name}_{name}")
    name = SAME_ACTIVATION.get(name, name)
    try:
        keras().activations.get(name)
    except ValueError:
        raise ModelError(
            f"Keras 3 layer {layer.name!r} uses activation {name!r}, which tf_keras does not have",
            hint="use relu, relu6, swish, hard_swish, sigmoid, tanh or gelu, or " + REBUILD_HINT,
        ) from None
    return name, None


def _copy_weights(original: Any, twin: Any) -> None:
    """Copy a Keras 3 layer's weights into its tf_keras twin, in order, or by name where the two keep different
    sets (Keras 3's Normalization has no ``count`` in some versions)."""
    values = [np.asarray(w) for w in original.get_weights()]
    targets = twin.weights
    if [v.shape for v in values] == [tuple(w.shape) for w in targets]:
        twin.set_weights(values)
        return
    by_name = {w.path.split("/")[-1]: np.asarray(w) for w in original.weights}
    for weight in targets:
        short = weight.name.split("/")[-1].split(":")[0]
        if short in by_name and tuple(by_name[short].shape) == tuple(weight.shape):
            weight.assign(by_name.pop(short))
    if by_name:
        raise ModelError(
            f"Keras 3 layer {original.name!r}: weights {', '.join(sorted(by_name))} have no place in its tf_keras twin",
            hint=REBUILD_HINT,
        )


def _check_same(model: Any, twin: Any, sample: Any) -> None:
    want = [np.asarray(o) for o in tf().nest.flatten(model(sample, training=False))]
    got = [np.asarray(o) for o in tf().nest.flatten(twin(sample, training=False))]
    if [a.shape for a in want] != [b.shape for b in got]:
        raise ModelError("the tf_keras rebuild of this Keras 3 model gives outputs of other shapes", hint=REBUILD_HINT)
    for index, (a, b) in enumerate(zip(want, got, strict=True)):
        scale = max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0
        worst = float(np.max(np.abs(a - b))) if a.size else 0.0
        if worst > TOLERANCE * scale:
            raise ModelError(
                f"the tf_keras rebuild of this Keras 3 model does not give the same outputs (output {index}: "
                f"largest difference {worst:g})",
                hint=REBUILD_HINT,
            )


def _constant(value: Any) -> Any:
    """A non-tensor argument of an operation as TensorFlow takes it (Keras 3 keeps constants as eager tensors)."""
    if is_graph_tensor(value) or isinstance(value, int | float | str | tuple | list | slice):
        return value
    return value if value is None else np.asarray(value)


def _operation(operation: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """The TensorFlow function a tf_keras user would call for a Keras 3 operation, called on tf_keras tensors
    (Keras records it as a TFOpLambda layer). Settings of the operation live on its object (``axis``...)."""
    name = type(operation).__name__
    function = _operations().get(name)
    if function is None:
        raise ModelError(
            f"Keras 3 operation {operation.name!r} ({type(operation).__module__.split('.')[-1]}.{name}) has no "
            "TensorFlow counterpart in edgepipe's rebuild",
            hint="write it with Keras layers (layers.Add, layers.Concatenate, ...), or " + REBUILD_HINT,
        )
    args = [_constant(a) for a in args]
    return function(operation, *args, **kwargs)


def _attr(operation: Any, *names: str) -> Any:
    for name in names:
        if hasattr(operation, name):
            return getattr(operation, name)
    return None


def _hard(index: int) -> Callable[..., Any]:
    def call(operation: Any, x: Any) -> Any:
        from edgepipe.optimization.hard_activations import layers as hard_layers

        return hard_layers()[index]()(x)

    return call


@functools.cache
def _operations() -> dict[str, Callable[..., Any]]:
    """Keras 3 operation class name -> its TensorFlow call (made on first use: ``import edgepipe`` avoids TF)."""
    t = tf()
    reduce = {"Mean": t.reduce_mean, "Sum": t.reduce_sum, "Max": t.reduce_max, "Min": t.reduce_min}

    def reduction(function: Any) -> Callable[..., Any]:
        return lambda op, x: function(x, axis=op.axis, keepdims=bool(op.keepdims))

    table: dict[str, Callable[..., Any]] = {
        "Add": lambda op, a, b: a + b,
        "Subtract": lambda op, a, b: a - b,
        "Multiply": lambda op, a, b: a * b,
        "TrueDivide": lambda op, a, b: a / b,
        "Divide": lambda op, a, b: a / b,
        "Negative": lambda op, x: -x,
        "Power": lambda op, a, b: a**b,
        "Maximum": lambda op, a, b: t.maximum(a, b),
        "Minimum": lambda op, a, b: t.minimum(a, b),
        "Sqrt": lambda op, x: t.sqrt(x),
        "Square": lambda op, x: t.square(x),
        "Abs": lambda op, x: t.abs(x),
        "Exp": lambda op, x: t.exp(x),
        "Log": lambda op, x: t.math.log(x),
        "Tanh": lambda op, x: t.tanh(x),
        "Clip": lambda op, x: t.clip_by_value(x, op.x_min, op.x_max),
        "Concatenate": lambda op, xs: t.concat(list(xs), axis=op.axis),
        "Reshape": lambda op, x: t.reshape(x, op.newshape),
        "Transpose": lambda op, x: t.transpose(x, op.axes),
        "ExpandDims": lambda op, x: t.expand_dims(x, op.axis),
        "Squeeze": lambda op, x: t.squeeze(x, op.axis),
        "GetItem": lambda op, x, key: x[key],
        "Matmul": lambda op, a, b: t.matmul(a, b),
        "Cast": lambda op, x: t.cast(x, op.dtype),
        "Relu": lambda op, x: t.nn.relu(x),
        "Relu6": lambda op, x: t.nn.relu6(x),
        "Sigmoid": lambda op, x: t.math.sigmoid(x),
        "Silu": lambda op, x: t.nn.silu(x),
        "Softmax": lambda op, x: t.nn.softmax(x, axis=_attr(op, "axis")),
        "Gelu": lambda op, x: t.nn.gelu(x, approximate=bool(_attr(op, "approximate"))),
        "LeakyRelu": lambda op, x: t.nn.leaky_relu(x, alpha=float(_attr(op, "negative_slope"))),
        "HardSigmoid": _hard(0),
        "HardSilu": _hard(1),
        "HardSwish": _hard(1),
    }
    table.update({name: reduction(function) for name, function in reduce.items()})
    return table
