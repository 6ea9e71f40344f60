"""Channel pruning that removes filters: a smaller Keras model with the kept weights copied in, no masks.

Removing output channel ``c`` of a convolution is only correct if every layer that sees channel ``c`` drops it
too. As Torch-Pruning's dependency graph does for PyTorch, the layers are walked in graph order and each tensor's
last axis is traced back to the *channel group* that produced it:

- a Conv2D or Conv1D, their transposed forms (a U-Net's or an autoencoder's decoder), their separable forms
  (Xception, NASNet: the depthwise kernel and the pointwise kernel's rows are cut on the input channels, the
  pointwise kernel's columns on the output) or a (non-output) Dense opens a group: its filters are the group's
  channels;
- BatchNormalization, activations, dropout, pooling, upsampling, padding and global pooling pass a group
  through; a DepthwiseConv2D (depth multiplier 1) and a PReLU pass it through and are sliced with it; so do a
  Reshape that keeps the channels as its last axis (a squeeze-and-excitation block's ``(C,)`` -> ``(1, 1, C)``,
  pixels to a sequence's ``(H, W, C)`` -> ``(H * W, C)``) and a TensorFlow function applied element by element
  with scalar constants (MobileNetV3's hard-swish, ``x + 3`` and ``x * (1/6)``, which Keras records as
  ``TFOpLambda`` layers);
- an ``Add`` (and Subtract, Multiply, Average, Maximum, Minimum, a Concatenate along another axis than the
  channels, and an element-wise TensorFlow function of several tensors, as hard-swish's ``x * relu6(x + 3)``)
  ties its inputs' groups into one: every branch of a residual add keeps the same channels;
- Flatten maps a group to blocks of the next Dense's inputs (channel ``c`` of an HxWxC tensor is every input
  ``i`` with ``i % C == c``);
- a ``Concatenate`` on the channel axis lays its inputs' groups side by side: whatever reads it (a convolution, a
  BatchNorm, a depthwise convolution) is sliced segment by segment, each group keeping its own channels;
- a layer that consumes a group (a convolution's input channels, a Dense's input rows) is sliced on its input;
- a grouped convolution (``groups=g``: RegNet, ResNeXt) reads and makes its channels in g equal parts, each
  output part from its own input part: the group it reads and the group it opens keep equal numbers of channels
  in each of their g parts (``Group.parts``), and its kernel is cut part by part.

What cannot be traced safely (any other Reshape, a Permute, a Softmax, any other TensorFlow function, a grouped
convolution reading a Concatenate, a channels-first layer, a custom layer, an Add or Flatten after a
Concatenate, a merge of tensors with different channel counts, a layer called more than once, a group that
reaches a model output) *blocks* the group: it is left whole and named, with the reason, in the stage's
details, never pruned wrongly.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepipe.keras_compat import keras
from edgepipe.optimization.channel_rules import (
    FILTERS,
    MERGES,
    PASSTHROUGH,
    SEPARABLE,
    acts_per_channel,
    elementwise,
    grouped_sliced,
    kernel_axes,
    kind_and_why,
    on_channels,
    output_kernel,
    per_channel,
    same_channels,
    separable_sliced,
    simple,
    sliced_along,
)

CRITERIA = ("l1", "l2", "bn_gamma", "activation")


@dataclass
class Group:
    """Channels that must be kept or removed together."""

    channels: int
    producers: list[str] = field(default_factory=list)  # layers whose output channels these are
    sliced: list[str] = field(default_factory=list)  # BatchNorm, DepthwiseConv2D: sliced along with them
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (layer, flatten block size or 0)
    blocked_by: list[str] = field(default_factory=list)
    # The ``groups`` of the grouped convolutions that read or make these channels: each needs equal numbers kept
    # in each of its equal parts.
    grouped_by: list[int] = field(default_factory=list)

    @property
    def parts(self) -> int:
        """Equal contiguous parts that must each keep the same number of channels (1: no such constraint)."""
        return math.lcm(*self.grouped_by) if self.grouped_by else 1


@dataclass
class Plan:
    """The groups of a model and, once decided, the channels each keeps."""

    groups: list[Group]
    keep: dict[int, np.ndarray] = field(default_factory=dict)  # group index -> sorted kept channel indices
    # Layers reading a Concatenate: name -> ("in" (input channels) or "out" (own channels), group indices in order)
    composite: dict[str, tuple[str, list[int]]] = field(default_factory=dict)

    def composite_keep(self, segments: list[int]) -> np.ndarray | None:
        """Kept indices across concatenated groups (offsets from the groups' original widths); None: all kept."""
        if not any(index in self.keep for index in segments):
            return None
        kept, offset = [], 0
        for index in segments:
            width = self.groups[index].channels
            kept.append(offset + (self.keep[index] if index in self.keep else np.arange(width)))
            offset += width
        return np.concatenate(kept)

    def kept_count(self, index: int) -> int:
        return len(self.keep[index]) if index in self.keep else self.groups[index].channels

    def removed(self) -> dict[str, dict[str, int]]:
        """Per producer: channels before and after, for optimize.json."""
        rows = {}
        for index, group in enumerate(self.groups):
            for name in group.producers:
                rows[name] = {"before": group.channels, "after": self.kept_count(index)}
        return rows

    def blocked(self) -> dict[str, list[str]]:
        return {", ".join(g.producers): g.blocked_by for g in self.groups if g.blocked_by and g.producers}


class _Groups:
    """Union-find over channel groups: a residual add merges the groups of its branches."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.groups: list[Group] = []

    def new(self, channels: int, producer: str) -> int:
        self.parent.append(len(self.parent))
        self.groups.append(Group(channels, [producer]))
        return len(self.parent) - 1

    def find(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def union(self, first: int, second: int) -> int:
        a, b = self.find(first), self.find(second)
        if a == b:
            return a
        self.parent[b] = a
        ga, gb = self.groups[a], self.groups[b]
        ga.producers += gb.producers
        ga.sliced += gb.sliced
        ga.consumers += gb.consumers
        ga.blocked_by += gb.blocked_by
        ga.grouped_by += gb.grouped_by
        return a


CHANNEL_LAYERS = (*FILTERS, "Dense", "DepthwiseConv2D", "BatchNormalization", "PReLU")


def not_channel_pruned(model: Any) -> list[str]:
    """Layers with weights that channel pruning never changes (recurrent, 1-D or 3-D convolutions, embeddings
    ...), as ``name (Kind)``: what a user should know when nothing else can be pruned either."""
    return [
        f"{layer.name} ({type(layer).__name__})"
        for layer in model.layers
        if layer.weights and type(layer).__name__ not in CHANNEL_LAYERS and not hasattr(layer, "layers")
    ]


def analyze(model: Any) -> Plan:
    """The channel groups of ``model`` (tf_keras Sequential or functional, channels last)."""
    k = keras()
    union = _Groups()
    # What each layer's output carries on its last axis: ("group", index), ("flat", index, block) or None.
    carries: dict[str, tuple[Any, ...] | None] = {}
    composite: dict[str, tuple[str, list[int]]] = {}
    output_layers = {tensor._keras_history.layer.name for tensor in model.outputs}
    for layer in model.layers:
        kind = type(layer).__name__
        if isinstance(layer, k.layers.InputLayer):
            carries[layer.name] = None
            continue
        calls = _calls(model, layer)
        inbound = _inbound(layer, calls[0] if calls else 0)
        sources = [carries.get(name) for name in inbound]
        traced = [s for s in sources if s is not None]

        def block(reason: str, sources: list[tuple[Any, ...] | None] = traced) -> None:
            for source in sources:
                for member in _members(source):
                    union.groups[union.find(member)].blocked_by.append(reason)

        if len(calls) > 1:  # one set of weights on several inputs: whatever any call reads stays whole
            every = [carries.get(name) for call in calls for name in _inbound(layer, call)]
            block(f"{layer.name} (called {len(calls)} times: shared weights)", [s for s in every if s is not None])
            carries[layer.name] = None
            continue

        if traced and getattr(layer, "data_format", "channels_last") == "channels_first":
            # a pooling, padding or Flatten that takes axis 1 for the channels: the last axis is not what it keeps
            block(f"{layer.name} ({kind_and_why(layer)})")
            carries[layer.name] = None
            continue
        cat = traced[0] if len(traced) == 1 and traced[0][0] == "cat" else None
        if kind in (*FILTERS, "Dense") and simple(layer):
            groups = getattr(layer, "groups", 1)
            if cat is not None and groups != 1:
                block(f"{layer.name} ({kind_and_why(layer)})")
            elif cat is not None:
                composite[layer.name] = ("in", cat[1])
            elif traced:
                source = traced[0]
                group = union.groups[union.find(source[1])]
                group.consumers.append((layer.name, source[2] if source[0] == "flat" else 0))
                group.grouped_by += [groups] if groups != 1 else []
            channels = layer.units if kind == "Dense" else layer.filters
            carries[layer.name] = ("group", union.new(channels, layer.name))
            union.groups[carries[layer.name][1]].grouped_by += [groups] if groups != 1 else []
            if layer.get_config().get("activation") == "softmax":  # normalizes across the channels
                union.groups[carries[layer.name][1]].blocked_by.append(f"{layer.name} (softmax over its channels)")
        elif (
            cat is not None
            and (kind in PASSTHROUGH or (kind == "DepthwiseConv2D" and layer.depth_multiplier == 1))
            and kind not in ("PReLU",)
            and not per_channel(layer)
            and layer.get_config().get("activation") != "softmax"
        ):
            if kind in ("BatchNormalization", "DepthwiseConv2D"):
                composite[layer.name] = ("out", cat[1])
            carries[layer.name] = cat
        elif kind == "Concatenate" and traced and len(traced) == len(sources) and on_channels(layer):
            carries[layer.name] = ("cat", [m for source in traced for m in _members(source)])
            if any(source[0] == "flat" for source in traced):
                block(f"{layer.name} (Concatenate of flattened tensors)")
                carries[layer.name] = None
                continue
        elif len(sources) == 1 and traced and traced[0][0] == "group" and sliced_along(layer):
            union.groups[union.find(traced[0][1])].sliced.append(layer.name)
            carries[layer.name] = traced[0]
        elif (
            kind in (*MERGES, "TFOpLambda", "Concatenate")  # a Concatenate here joins along another axis
            and traced
            and all(s is not None and s[0] == "group" for s in sources)
        ):
            if not same_channels(layer) or (kind == "TFOpLambda" and not elementwise(layer, len(sources))):
                block(f"{layer.name} ({kind_and_why(layer)})")
                carries[layer.name] = None
                continue
            merged = traced[0][1]
            for source in traced[1:]:
                merged = union.union(merged, source[1])
            carries[layer.name] = ("group", merged)
        elif (kind in PASSTHROUGH or (kind == "Lambda" and traced and acts_per_channel(layer))) and len(traced) <= 1:
            if kind == "BatchNormalization" and traced:
                if traced[0][0] != "group" or layer.axis not in ([-1], [len(layer.input_shape) - 1], -1):
                    block(f"{layer.name} (BatchNormalization not on the channel axis)")
                    carries[layer.name] = None
                    continue
                union.groups[union.find(traced[0][1])].sliced.append(layer.name)
            if kind == "PReLU" and traced and layer.get_weights()[0].shape[-1] != 1:  # a slope per channel
                if traced[0][0] != "group":
                    after = "Flatten" if traced[0][0] == "flat" else "Concatenate"
                    block(f"{layer.name} (PReLU after a {after}: its slopes are not sliced there)")
                    carries[layer.name] = None
                    continue
                union.groups[union.find(traced[0][1])].sliced.append(layer.name)
            if traced and layer.get_config().get("activation") == "softmax":
                block(f"{layer.name} ({kind_and_why(layer)})")
                carries[layer.name] = None
                continue
            if traced and per_channel(layer):
                block(f"{layer.name} ({kind}: a scale or offset per channel)")
                carries[layer.name] = None
                continue
            carries[layer.name] = traced[0] if traced else None
        elif kind == "Flatten" and traced and traced[0][0] == "group":
            spatial = int(np.prod(layer.input_shape[1:-1])) if len(layer.input_shape) > 2 else 1
            carries[layer.name] = ("flat", traced[0][1], spatial)
        else:
            block(f"{layer.name} ({kind_and_why(layer)})")
            carries[layer.name] = None
            continue
        if layer.name in output_layers and carries[layer.name] is not None:
            block(f"{layer.name} (a model output)", [carries[layer.name]])
    roots = sorted({union.find(i) for i in range(len(union.parent))})
    position = {root: index for index, root in enumerate(roots)}
    plan = Plan([union.groups[r] for r in roots])
    for name, (role, members) in composite.items():
        segments = [position[union.find(m)] for m in members]
        plan.composite[name] = (role, segments)
        if len(set(segments)) != len(segments):  # one group twice in a concatenation: keep it whole
            for index in segments:
                plan.groups[index].blocked_by.append(f"{name} (reads one group twice through a Concatenate)")
    return plan


def _members(source: tuple[Any, ...] | None) -> list[int]:
    if source is None:
        return []
    return list(source[1]) if source[0] == "cat" else [source[1]]


def _calls(model: Any, layer: Any) -> list[int]:
    """The indices of ``layer``'s calls that belong to ``model``'s graph (a layer may also be called elsewhere)."""
    network = getattr(model, "_network_nodes", set())
    return [i for i in range(len(layer.inbound_nodes)) if f"{layer.name}_ib-{i}" in network]


def _inbound(layer: Any, call: int = 0) -> list[str]:
    node = layer.inbound_nodes[call]
    inbound = node.inbound_layers
    return [item.name for item in (inbound if isinstance(inbound, list | tuple) else [inbound])]


def importance(model: Any, plan: Plan, criterion: str, sample: np.ndarray | None = None) -> list[np.ndarray]:
    """One score per channel of every group, higher is more important, summed over the group's producers."""
    scores = []
    for group in plan.groups:
        total = np.zeros(group.channels)
        for name in group.producers:
            total += _producer_score(model, name, group, criterion, sample)
        scores.append(total)
    return scores


def _producer_score(model: Any, name: str, group: Group, criterion: str, sample: np.ndarray | None) -> np.ndarray:
    layer = model.get_layer(name)
    kernel = output_kernel(layer)
    flat = kernel.reshape(-1, kernel.shape[-1])
    if criterion == "bn_gamma":
        norms = [model.get_layer(n) for n in group.sliced if type(model.get_layer(n)).__name__ == "BatchNormalization"]
        if norms:  # network slimming: the scale BatchNorm gives each channel
            return np.sum([np.abs(_bn_gamma(norm)) for norm in norms], axis=0)
        return np.abs(flat).sum(axis=0)  # no BatchNorm behind this producer: fall back to L1
    if criterion == "activation" and sample is not None:
        probe = keras().Model(model.inputs, layer.output)
        produced = np.asarray(probe.predict(sample, batch_size=256, verbose=0))
        return np.abs(produced).reshape(-1, produced.shape[-1]).mean(axis=0)
    if criterion == "l2":
        return np.sqrt((flat**2).sum(axis=0))
    return np.abs(flat).sum(axis=0)


def _bn_gamma(layer: Any) -> np.ndarray:
    weights = {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in layer.weights}
    return weights.get("gamma", np.ones(layer.weights[0].shape))


def decide(
    model: Any,
    plan: Plan,
    scores: list[np.ndarray],
    ratio: float,
    per_layer: dict[str, float],
    global_ranking: bool,
    min_channels: int,
    round_to: int,
) -> Plan:
    """Which channels each unblocked group keeps. ``per_layer`` (glob -> ratio, matched against the group's
    producers) overrides ``ratio``; ``global_ranking`` removes the least important channels across all groups
    (scores normalized per group by their mean, so wide and narrow layers compete fairly)."""
    ratios = {}
    for index, group in enumerate(plan.groups):
        if group.blocked_by:
            continue
        chosen = [r for pattern, r in per_layer.items() for p in group.producers if fnmatch.fnmatchcase(p, pattern)]
        ratios[index] = chosen[0] if chosen else ratio
    groups = plan.groups
    targets = {i: _kept(groups[i], r, min_channels, round_to) for i, r in ratios.items()}
    if global_ranking and ratios:
        pooled = np.concatenate([scores[i] / (scores[i].mean() or 1.0) for i in ratios])
        threshold = np.quantile(pooled, ratio)
        for i in ratios:
            survivors = int(np.sum(scores[i] / (scores[i].mean() or 1.0) > threshold))
            targets[i] = _kept(groups[i], 1 - survivors / groups[i].channels, min_channels, round_to)
    for index, kept in targets.items():
        if kept < groups[index].channels:
            plan.keep[index] = _most_important(scores[index], kept, groups[index].parts)
    return plan


def _kept(group: Group, ratio: float, min_channels: int, round_to: int) -> int:
    """How many channels a group keeps: at least ``min_channels``, a multiple of ``round_to`` and of its parts."""
    step = math.lcm(round_to, group.parts)
    kept = max(min_channels, math.ceil(group.channels * (1 - ratio) / step) * step)
    return min(group.channels, math.ceil(kept / group.parts) * group.parts)


def _most_important(scores: np.ndarray, kept: int, parts: int) -> np.ndarray:
    """The ``kept`` highest-scoring channels, sorted; ``kept / parts`` of them from each of ``parts`` equal parts."""
    width = len(scores) // parts
    chosen = [
        start + np.argsort(-scores[start : start + width], kind="stable")[: kept // parts]
        for start in range(0, len(scores), width)
    ]
    return np.sort(np.concatenate(chosen))


def rebuild(model: Any, plan: Plan) -> Any:
    """A new model with the planned channels removed and every kept weight copied in."""
    k = keras()
    out_keep: dict[str, np.ndarray] = {}
    in_keep: dict[str, tuple[np.ndarray, int]] = {}
    for index, group in enumerate(plan.groups):
        if index not in plan.keep:
            continue
        kept = plan.keep[index]
        for name in group.producers + group.sliced:
            out_keep[name] = kept
        for name, block in group.consumers:
            in_keep[name] = (kept, block)
    for name, (role, segments) in plan.composite.items():
        kept_across = plan.composite_keep(segments)
        if kept_across is None:
            continue
        if role == "in":
            in_keep[name] = (kept_across, 0)
        else:
            out_keep[name] = kept_across

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name in out_keep and type(layer).__name__ in FILTERS:
            config["filters"] = len(out_keep[layer.name])
        elif layer.name in out_keep and type(layer).__name__ == "Dense":
            config["units"] = len(out_keep[layer.name])
        elif layer.name in out_keep and type(layer).__name__ == "Reshape":
            config["target_shape"] = (*config["target_shape"][:-1], len(out_keep[layer.name]))
        return layer.__class__.from_config(config)

    pruned = k.models.clone_model(model, clone_function=clone)
    for old, new in zip(model.layers, pruned.layers, strict=True):
        weights = old.get_weights()
        if not weights:
            continue
        new.set_weights(_sliced(old, weights, out_keep.get(old.name), in_keep.get(old.name)))
    return pruned


def _sliced(
    layer: Any, weights: list[np.ndarray], out: np.ndarray | None, inputs: tuple[np.ndarray, int] | None
) -> list[np.ndarray]:
    kind = type(layer).__name__
    if kind in SEPARABLE:
        return separable_sliced(weights, out, None if inputs is None else inputs[0])
    if getattr(layer, "groups", 1) != 1:
        kernel = grouped_sliced(weights[0], layer.groups, out, None if inputs is None else inputs[0])
        return [kernel, *[w if out is None else np.take(w, out, axis=-1) for w in weights[1:]]]
    if kind in (*FILTERS, "Dense"):
        kernel, rest = weights[0], weights[1:]
        in_axis, out_axis = kernel_axes(layer)
        if inputs is not None:
            kept, block = inputs
            if kind == "Dense" and block:  # a Flatten in between: channel c is every input row i with i % C == c
                channels = kernel.shape[0] // block
                rows = (np.arange(block)[:, None] * channels + kept[None, :]).reshape(-1)
                kernel = kernel[rows, :]
            else:
                kernel = np.take(kernel, kept, axis=in_axis)
        if out is not None:
            kernel = np.take(kernel, out, axis=out_axis)
            rest = [np.take(w, out, axis=-1) for w in rest]
        return [kernel, *rest]
    if kind == "DepthwiseConv2D" and out is not None:
        return [np.take(weights[0], out, axis=2), *[np.take(w, out, axis=-1) for w in weights[1:]]]
    if kind == "BatchNormalization" and out is not None:
        return [np.take(w, out, axis=-1) for w in weights]
    if kind == "PReLU" and out is not None and weights[0].shape[-1] != 1:
        return [np.take(weights[0], out, axis=-1)]
    return weights
