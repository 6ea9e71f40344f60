"""What does an int8 convolution cost on this CPU: its MACs, or its output pixels?

    .venv/bin/python bench/conv_cost.py [--threads 1]

Single-convolution models (3x3, "same" padding, full-integer PTQ) with the same output size and 1 to 64
channels in and out, timed interleaved with LiteRT's interpreter (XNNPACK) in this process: 15 rounds of 100
invokes each, median per invoke. When the time barely moves while the MACs grow 100-fold, the kernels are
bound by per-pixel work (requantization, memory), not by multiplies, and removing channels will buy little
speed on this CPU; on a core without wide int8 dot-product units (a Raspberry Pi 4's Cortex-A72) the same
convolutions scale with their MACs. Channel pruning's speed-up must be judged on the board's own core
(``bench/structured.py --targets local rpi4-emu``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgepipe.keras_compat import keras, tf

CASES = [  # (height and width, channels in, channels out)
    (14, 1, 32),
    (14, 16, 16),
    (14, 32, 32),
    (14, 64, 64),
    (28, 1, 32),
    (28, 32, 32),
    (56, 1, 32),
]


def int8_conv(size: int, channels_in: int, channels_out: int) -> bytes:
    k, t = keras(), tf()
    inputs = k.layers.Input((size, size, channels_in))
    model = k.Model(inputs, k.layers.Conv2D(channels_out, 3, padding="same")(inputs))
    rng = np.random.default_rng(0)
    converter = t.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [t.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [rng.random((1, size, size, channels_in), dtype=np.float32)] for _ in range(16)
    )
    converter.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = t.int8
    return bytes(converter.convert())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from ai_edge_litert.interpreter import Interpreter

    interpreters = []
    for size, channels_in, channels_out in CASES:
        interpreter = Interpreter(model_content=int8_conv(size, channels_in, channels_out), num_threads=args.threads)
        interpreter.allocate_tensors()
        interpreters.append(interpreter)
    times: list[list[float]] = [[] for _ in CASES]
    for _ in range(15):
        for index, interpreter in enumerate(interpreters):
            started = time.perf_counter()
            for _ in range(100):
                interpreter.invoke()
            times[index].append((time.perf_counter() - started) / 100 * 1e6)
    print(f"{'output':>8} {'in -> out':>10} {'MACs':>11} {'median µs':>10} {'MACs per ns':>12}")
    for (size, channels_in, channels_out), samples in zip(CASES, times, strict=True):
        macs = size * size * 9 * channels_in * channels_out
        median = float(np.median(samples))
        print(
            f"{size:>3}x{size:<4} {channels_in:>4} -> {channels_out:<3} {macs:>11,} {median:>10.1f} "
            f"{macs / median / 1e3:>12.2f}"
        )


if __name__ == "__main__":
    main()
