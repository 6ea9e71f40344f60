"""Activation ranges measured on the data before QAT's fine-tune, instead of TF-MOT's starting [-6, 6].

TF-MOT 0.8.1 creates every activation quantizer (``MovingAverageQuantizer``) with the range [-6, 6] and moves
it towards each batch's minimum and maximum by an exponential moving average of decay 0.999: 0.1 % per step.
A fine-tune of a few hundred steps (edgepipe's recipes: 2 epochs of the digits, 86 steps) leaves each range
within about 10 % of where it started, whatever the tensor holds. A tensor that goes beyond 6 is clipped in
training and in the converted model: a regression output of 0 .. 9 came out of QAT in [-5.5, 6.2] (every
prediction above 6.2 clipped), and a tabular model whose Dense layers see standardized features lost 4.2
points after QAT against 0.67 after post-training quantization. One forward pass over training samples first,
with each range set to the minimum and maximum the data gives it (what post-training calibration does), lets
the fine-tune start from the model's real ranges; TF-MOT's moving average then goes on from there.

The pass runs with Dropout and noise layers switched off: the int8 model runs without them, and a range
measured with Dropout(0.5) active started about twice as wide as the converted model needs (half of the int8
steps unused). The moving average then follows the training batches, as TF-MOT's does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepipe.keras_compat import tf

CALIBRATION_SAMPLES = 512
BATCH = 64
# Layers active in training only, and the attribute that sets how much they change: zero for the pass.
TRAINING_NOISE = {
    "Dropout": "rate", "SpatialDropout1D": "rate", "SpatialDropout2D": "rate", "SpatialDropout3D": "rate",
    "AlphaDropout": "rate", "GaussianDropout": "rate", "GaussianNoise": "stddev",
}  # fmt: skip


def calibrate(model: Any, x: np.ndarray | list[np.ndarray], samples: int = CALIBRATION_SAMPLES) -> int:
    """Set every per-tensor activation range of the QAT ``model`` to the minimum and maximum (0 included) that
    its tensor takes on the first ``samples`` of ``x`` (one array per model input). Returns how many samples
    were used. The pass runs in training mode, as TF-MOT measures ranges, with Dropout and noise off (see the
    module's docstring; BatchNorm moving statistics move a little, and are re-estimated after the fine-tune)."""
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops, quantizers

    arrays = x if isinstance(x, list) else [x]
    count = min(samples, len(arrays[0]))
    moving = quantizers.MovingAverageQuantizer
    original = moving.__call__
    reset: set[int] = set()

    def all_values(self: Any, inputs: Any, training: Any, weights: dict[str, Any], **kwargs: Any) -> Any:
        if self.per_axis:  # per-channel activation ranges: TF-MOT's own update (none in the 8-bit scheme)
            return original(self, inputs, training, weights, **kwargs)
        low, high = weights["min_var"], weights["max_var"]
        if id(low) not in reset:  # forget [-6, 6]: the range becomes the data's
            reset.add(id(low))
            low.assign(tf().zeros_like(low))
            high.assign(tf().zeros_like(high))
        return quant_ops.AllValuesQuantize(
            inputs, low, high, is_training=True, num_bits=self.num_bits, narrow_range=self.narrow_range,
            symmetric=self.symmetric,
        )  # fmt: skip

    silenced = _training_noise(model)
    moving.__call__ = all_values
    try:
        for layer, attribute, _ in silenced:
            setattr(layer, attribute, 0.0)
        for start in range(0, count, BATCH):
            batch = [a[start : min(start + BATCH, count)] for a in arrays]
            model(batch if len(batch) > 1 else batch[0], training=True)
    finally:
        moving.__call__ = original
        for layer, attribute, value in silenced:
            setattr(layer, attribute, value)
    return count if reset else 0


def _training_noise(model: Any) -> list[tuple[Any, str, Any]]:
    """(layer, attribute, value) of every Dropout or noise layer, inside TF-MOT's wrappers too."""
    found = []
    for outer in model.layers:
        layer = getattr(outer, "layer", outer)  # a QuantizeWrapper holds the layer
        attribute = TRAINING_NOISE.get(type(layer).__name__)
        if attribute is not None:
            found.append((layer, attribute, getattr(layer, attribute)))
    return found
