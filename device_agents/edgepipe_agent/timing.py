"""The timed loops: nothing but ``invoke()`` between two clock reads, alone or paired with a baseline model in
alternating blocks, and the summary of the samples."""

from __future__ import annotations

import time
from typing import Any

from edgepipe_agent.evaluate import read_data
from edgepipe_agent.protocol import JobFailed
from edgepipe_agent.runtime import (
    fits,
    import_runtime,
    import_under_limit,
    invoke_or_fail,
    load_model,
    one_line,
    quantize,
)


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on a sorted list."""
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    count = len(ordered)
    mean = sum(ordered) / count
    variance = sum((s - mean) ** 2 for s in ordered) / (count - 1) if count > 1 else 0.0
    return {
        "count": count,
        "min": ordered[0],
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
        "mean": mean,
        "std": variance**0.5,
    }


def time_runs(interpreter: Any, job: dict[str, Any]) -> list[float]:
    """The timed loop: nothing but invoke() between the two clock reads, as a bare loop would do."""
    runs, max_runs, min_ns = int(job["runs"]), int(job["max_runs"]), float(job["min_seconds"]) * 1e9
    invoke = interpreter.invoke
    clock = time.perf_counter_ns
    samples: list[int] = []
    started = clock()
    try:
        while len(samples) < max_runs and (len(samples) < runs or clock() - started < min_ns):
            t0 = clock()
            invoke()
            samples.append(clock() - t0)
    except (ValueError, RuntimeError) as exc:
        raise JobFailed("InvokeFailed", f"invoke() failed: {one_line(exc)}") from None
    return [s / 1e6 for s in samples]


def timed_block(invoke: Any, count: int, samples: list[int]) -> None:
    """``count`` invocations, each timed alone (nothing but invoke() between the clock reads)."""
    clock = time.perf_counter_ns
    for _ in range(count):
        t0 = clock()
        invoke()
        samples.append(clock() - t0)


def prepare_input(np: Any, interpreter: Any, job: dict[str, Any]) -> None:
    """Batch 1, and the first evaluation sample as input when it fits (zeros otherwise) for the timed runs."""
    sources = interpreter.get_input_details()
    firsts = [None] * len(sources)
    if job["data"]:
        xs, _ = read_data(np, job["data"])
        firsts = [x[:1] for x in xs] if len(xs) == len(sources) else firsts
    # one sample: batch 1, and a free dimension (a sequence of any length) as long as the first sample's
    wanted = [
        [1, *(first.shape[1:] if first is not None and fits(source, first.shape) else source["shape"][1:])]
        for first, source in zip(firsts, sources, strict=True)
    ]
    pairs = list(zip(sources, wanted, strict=True))
    if any([int(d) for d in source["shape"]] != [int(d) for d in shape] for source, shape in pairs):
        for source, shape in zip(sources, wanted, strict=True):
            interpreter.resize_tensor_input(source["index"], [int(d) for d in shape])
        interpreter.allocate_tensors()
        sources = interpreter.get_input_details()
    for first, source in zip(firsts, sources, strict=True):
        sample = np.zeros(source["shape"], dtype=source["dtype"])
        if first is not None and fits(source, first.shape):
            sample = quantize(np, first, source)
        interpreter.set_tensor(source["index"], sample)


def measure_paired(job: dict[str, Any]) -> dict[str, Any]:
    """A paired repeat of a job with a baseline: both models in this one process, timed in alternating blocks.

    Blocks of about 10 ms each, in the order A B B A A B ... (ABBA, ``_first`` says who starts): a slow spell
    of the board (another tenant, a frequency change) lasts far longer than a block, so it lands on both
    models alike instead of on one of them. Both get the same input rule and the same warm-up.
    """
    np = import_under_limit(job, lambda: __import__("numpy"), "numpy")
    interpreter_class, resolver, _, _ = import_under_limit(
        job, lambda: import_runtime(job["runtime"]), "the TFLite runtime"
    )
    model, _ = load_model(job, interpreter_class, resolver)
    baseline, _ = load_model({**job, "model": job["baseline"]}, interpreter_class, resolver)
    typical_ns = []
    for interpreter in (model, baseline):
        prepare_input(np, interpreter, job)
        invoke_or_fail(interpreter)
        warmup = []
        for _ in range(max(int(job["warmup_runs"]), 3)):
            t0 = time.perf_counter_ns()
            invoke_or_fail(interpreter)
            warmup.append(time.perf_counter_ns() - t0)
        typical_ns.append(sorted(warmup)[len(warmup) // 2])
    # about 10 ms of the slower model, but at least 20 blocks per model before max_runs
    block = max(1, min(1000, int(10e6 / max(typical_ns)), int(job["max_runs"]) // 20))
    first_is_model = job.get("_first", "model") == "model"
    ordered: list[tuple[Any, list[int]]] = [(model, []), (baseline, [])]
    if not first_is_model:
        ordered.reverse()
    runs, max_runs, min_ns = int(job["runs"]), int(job["max_runs"]), float(job["min_seconds"]) * 1e9
    clock = time.perf_counter_ns
    started, turn = clock(), 0
    try:
        while len(ordered[0][1]) < max_runs and (len(ordered[0][1]) < runs or clock() - started < min_ns):
            for interpreter, samples in ordered if turn % 2 == 0 else ordered[::-1]:
                timed_block(interpreter.invoke, block, samples)
            turn += 1
    except (ValueError, RuntimeError) as exc:
        raise JobFailed("InvokeFailed", f"invoke() failed: {one_line(exc)}") from None
    model_ns, baseline_ns = (ordered[0][1], ordered[1][1]) if first_is_model else (ordered[1][1], ordered[0][1])
    return {
        "first": "model" if first_is_model else "baseline",
        "block_runs": block,
        "model_ms": [s / 1e6 for s in model_ns],
        "baseline_ms": [s / 1e6 for s in baseline_ns],
    }
