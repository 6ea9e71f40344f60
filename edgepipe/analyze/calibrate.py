"""The roofline's two ceilings for this machine, measured once: what the local target uses when it states none.

- compute: the int8 throughput the runtime reaches on a compute-bound convolution (3x3, 128 -> 128 channels on a
  32x32 map: 151 M multiply-accumulates, about 1 byte moved per 1,000 operations), with the target's threads
  and the default XNNPACK delegate, median of 20 invocations. A practical peak, not the datasheet's.
- memory: numpy copies of 128 MiB (read and write: 256 MiB moved per copy), best of 5.

The figures are kept in ``$XDG_CACHE_HOME/edgepipe/calibration.json`` per CPU model and thread count, with when
they were measured, so a later profile of the same machine reuses them.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.files import user_cache, write_json
from edgepipe.provenance import now

COPY_BYTES = 128 * 2**20
CONV = (32, 32, 128, 128)  # height, width, input channels, filters (3x3)


def cache_file() -> Path:
    return user_cache() / "calibration.json"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def calibration(threads: int) -> dict[str, Any]:
    """This machine's ceilings for ``threads`` interpreter threads: measured the first time, then read back."""
    key = f"{_cpu()}|{threads}"
    path = cache_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = {**measure(threads), "cpu_model": _cpu(), "threads": threads, "measured": now()}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, known)
    return dict(known[key])


def measure(threads: int) -> dict[str, float]:
    return {"peak_gops": _int8_gops(threads), "memory_bandwidth_gbs": _copy_gbs()}


def _copy_gbs() -> float:
    source = np.ones(COPY_BYTES, dtype=np.uint8)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * COPY_BYTES / best / 1e9


def _int8_gops(threads: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    height, width, channels, filters = CONV
    interpreter = Interpreter(model_content=_conv_model(), num_threads=threads)
    interpreter.allocate_tensors()
    for _ in range(3):
        interpreter.invoke()
    times = []
    for _ in range(20):
        started = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - started)
    macs = height * width * channels * filters * 9
    return 2 * macs / float(np.median(times)) / 1e9


def _conv_model() -> bytes:
    from edgepipe.keras_compat import keras, tf

    k = keras()
    height, width, channels, filters = CONV
    inputs = k.Input((height, width, channels))
    model = k.Model(inputs, k.layers.Conv2D(filters, 3, padding="same")(inputs))
    rng = np.random.default_rng(0)
    converter = tf().lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf().lite.Optimize.DEFAULT]
    shape = (1, height, width, channels)
    converter.representative_dataset = lambda: ([rng.random(shape, np.float32)] for _ in range(4))
    converter.target_spec.supported_ops = [tf().lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf().int8
    return bytes(converter.convert())
