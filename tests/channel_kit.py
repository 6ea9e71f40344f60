"""Helpers of the channel pruning tests: a group by its producer, and zeroing half of every group's channels
(what makes pruning them exact)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepipe.optimization import channels
from edgepipe.optimization.channel_rules import kernel_axes


def group_of(plan: channels.Plan, producer: str) -> channels.Group:
    return next(group for group in plan.groups if producer in group.producers)


def zero_half_of_every_group(model: Any, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Zero half the channels of every prunable group wherever they are produced: the producers' kernels and
    biases, the BatchNorm gamma and beta (and depthwise biases) sliced with them, and their segment of every
    BatchNorm that reads a concatenation. Returns the zeroed channels of each group."""

    def zero(layer: Any, names: tuple[str, ...], channels_: np.ndarray) -> None:
        weights = layer.get_weights()
        for index, variable in enumerate(layer.weights):
            role = variable.name.split("/")[-1].split(":")[0]
            if role in names:  # a transposed convolution's kernel holds its output channels second to last
                axis = kernel_axes(layer)[1] if role == "kernel" else -1  # a pointwise kernel's are last
                np.moveaxis(weights[index], axis, -1)[..., channels_] = 0.0
        layer.set_weights(weights)

    plan, doomed = channels.analyze(model), {}
    for index, group in enumerate(plan.groups):
        if not group.blocked_by:
            width = group.channels // group.parts  # a grouped convolution's parts each lose half
            doomed[index] = np.sort(np.concatenate([
                start + rng.choice(width, width // 2, replace=False) for start in range(0, group.channels, width)
            ]))  # fmt: skip
            for name in group.producers:
                zero(model.get_layer(name), ("kernel", "pointwise_kernel", "bias"), doomed[index])
            for name in group.sliced:
                zero(model.get_layer(name), ("gamma", "beta", "bias"), doomed[index])
    for name, (role, segments) in plan.composite.items():
        offsets = np.cumsum([0] + [plan.groups[i].channels for i in segments])
        spans = [offsets[n] + doomed[i] for n, i in enumerate(segments) if i in doomed]
        if role == "out" and spans:
            zero(model.get_layer(name), ("gamma", "beta", "bias"), np.concatenate(spans))
    return doomed
