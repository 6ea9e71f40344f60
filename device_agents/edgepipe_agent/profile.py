"""The per-operator profile: the model cut into windows of operators (the host plans them:
``edgepipe.analyze.windows``), each timed against the window one operator shorter."""

from __future__ import annotations

import struct
import time
from typing import Any

from edgepipe_agent.protocol import JobFailed
from edgepipe_agent.runtime import (
    emit,
    headroom,
    import_runtime,
    import_under_limit,
    invoke_or_fail,
    load_model,
    one_line,
    refusal_class,
    vmhwm_kb,
)
from edgepipe_agent.timing import percentile, prepare_input, timed_block


def _window(content: bytes, profile: dict[str, Any], index: int) -> bytes:
    """Window ``index`` of the profile's model: operators start..start+length-1, fed its inputs, giving its
    outputs (four places of the subgraph edited in place; the host planned the offsets: edgepipe.analyze.windows)."""
    start, length, inputs, outputs = profile["windows"][index]
    edited = bytearray(content)
    field_at = int(profile["operators_field_at"])
    (to_operators,) = struct.unpack_from("<I", content, field_at)
    struct.pack_into("<I", edited, field_at, to_operators + 4 * int(start))
    struct.pack_into("<I", edited, int(profile["operators_at"]) + 4 * int(start) - 4, int(length))
    for at, tensors in ((int(profile["inputs_at"]), inputs), (int(profile["outputs_at"]), outputs)):
        struct.pack_into("<I", edited, at - 4, len(tensors))
        struct.pack_into(f"<{len(tensors)}i", edited, at, *tensors)
    return bytes(edited)


def _tensor_values(job: dict[str, Any], interpreter_class: Any, options: dict[str, Any], wanted: set[int],
                   np: Any) -> dict[int, Any]:  # fmt: skip
    """What the whole model computes at the ``wanted`` tensors for the timed input: what the windows are fed."""
    try:
        reference = interpreter_class(model_path=job["model"], experimental_preserve_all_tensors=True, **options)
        reference.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise JobFailed(refusal_class(str(exc)), f"the runtime refused the model: {one_line(exc)}") from None
    prepare_input(np, reference, job)
    invoke_or_fail(reference)
    return {t: np.array(reference.get_tensor(t)) for t in wanted}


def measure_profile(job: dict[str, Any]) -> dict[str, Any]:
    """The time of every operator k: the time of a window running operators k-w..k less that of the window
    running k-w..k-1 (edgepipe.analyze.windows says why windows), each fed what the whole model computes there.

    The windows, and the model itself, are loaded in this one process and timed in rounds. A round visits every
    operator's pair of windows in turn, a block of invocations each, the two moments apart (ascending and
    "with k" first in even rounds, descending and "without k" first in odd ones, so a drift cancels out); a
    slow spell of the board lasts much longer than a pair's two blocks, so it lands on both sides of the
    difference. The model itself is timed once a round, for the sum check. Rounds go on until ``min_seconds``
    have passed and at least ``min_rounds`` were done. When the windows do not all fit in the memory limit at
    once, the operators are timed in groups, one after the other, each for its share of the time. Back go, per
    operator, the median and median absolute deviation of its per-round differences, and the model's median.
    """
    profile = job["profile"]
    np = import_under_limit(job, lambda: __import__("numpy"), "numpy")
    interpreter_class, resolver, _, _ = import_under_limit(
        job, lambda: import_runtime(job["runtime"]), "the TFLite runtime"
    )
    try:
        with open(profile["model"], "rb") as handle:
            content = handle.read()
    except OSError as exc:
        raise JobFailed("InvalidModel", f"cannot read the profile's model file: {exc}") from None
    windows, pairs = profile["windows"], [tuple(pair) for pair in profile["pairs"]]
    count = len(pairs)
    options: dict[str, Any] = {"num_threads": int(job["threads"])}
    if not job["xnnpack"] and resolver is not None:
        options["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    emit("phase", phase="profile-load", windows=len(windows))
    values = _tensor_values(job, interpreter_class, options, {t for w in windows for t in w[2]}, np)
    whole, _ = load_model(job, interpreter_class, resolver)  # the model itself, timed in the same rounds
    prepare_input(np, whole, job)
    for _ in range(2):
        invoke_or_fail(whole)
    t0 = time.perf_counter_ns()
    invoke_or_fail(whole)
    whole_block = max(1, min(200, int(5e5 / max(time.perf_counter_ns() - t0, 1))))  # a visit: as for the windows
    # every window holds its own copy of the model's bytes: as many as fit in a third of the address space left
    per_group = max(1, int(headroom(job["memory_limit_mb"]) / 3 / (2 * max(len(content), 1))))
    groups = [list(range(first, min(first + per_group, count))) for first in range(0, count, per_group)]
    differences: list[list[float]] = [[] for _ in range(count)]
    overhead: list[float] = []
    whole_ms: list[float] = []
    clock = time.perf_counter_ns
    min_ns, min_rounds = float(profile["min_seconds"]) * 1e9, int(profile["min_rounds"])
    emit("phase", phase="profile", operators=count, groups=len(groups), min_seconds=profile["min_seconds"])
    started, fewest_rounds, largest_block = clock(), None, 1
    for group in groups:
        loaded = {index: _window_interpreter(content, profile, index, interpreter_class, options, values)
                  for k in group for index in pairs[k]}  # fmt: skip
        blocks = {}
        for k in group:
            for index in pairs[k]:
                for _ in range(max(int(job["warmup_runs"]) // 4, 2)):
                    invoke_or_fail(loaded[index])
            t0 = clock()
            invoke_or_fail(loaded[pairs[k][0]])
            blocks[k] = max(1, min(200, int(5e5 / max(clock() - t0, 1))))  # about 0.5 ms a visit
        largest_block = max(largest_block, *blocks.values())
        share_ns, group_started, rounds = min_ns * len(group) / count, clock(), 0
        try:
            while rounds < min_rounds or (clock() - group_started < share_ns and rounds < 10000):
                for k in group if rounds % 2 == 0 else group[::-1]:
                    with_k, without_k = pairs[k]
                    medians = {}
                    for index in (with_k, without_k) if rounds % 2 == 0 else (without_k, with_k):
                        visit: list[int] = []
                        timed_block(loaded[index].invoke, blocks[k], visit)
                        medians[index] = percentile(sorted(visit), 50) / 1e6
                    differences[k].append(medians[with_k] - medians[without_k])
                    if k == 0:
                        overhead.append(medians[without_k])
                visit = []
                timed_block(whole.invoke, whole_block, visit)
                whole_ms.append(percentile(sorted(visit), 50) / 1e6)
                rounds += 1
        except (ValueError, RuntimeError) as exc:
            raise JobFailed("InvokeFailed", f"invoke() of a window failed: {one_line(exc)}") from None
        fewest_rounds = rounds if fewest_rounds is None else min(fewest_rounds, rounds)
        del loaded  # the next group's windows take their memory
    return {
        "operators": [_median_and_spread(found) for found in differences],
        "overhead": _median_and_spread(overhead),
        "whole": _median_and_spread(whole_ms),
        "rounds": fewest_rounds,
        "groups": len(groups),
        "block_runs": largest_block,
        "seconds": (clock() - started) / 1e9,
        "vmhwm_kb": vmhwm_kb(),  # the windows of a group are loaded at once: this grows with the group
    }


def _window_interpreter(content: bytes, profile: dict[str, Any], index: int, interpreter_class: Any,
                        options: dict[str, Any], values: dict[int, Any]) -> Any:  # fmt: skip
    start, length = profile["windows"][index][:2]
    try:
        interpreter = interpreter_class(model_content=_window(content, profile, index), **options)
        interpreter.allocate_tensors()
        fed = interpreter.get_input_details()
        resized = [d for d in fed if list(d["shape"]) != list(values[d["index"]].shape)]
        for detail in resized:  # a model made for another batch size runs at batch 1, as the deploy times it
            interpreter.resize_tensor_input(detail["index"], list(values[detail["index"]].shape))
        if resized:
            interpreter.allocate_tensors()
        for detail in fed:
            interpreter.set_tensor(detail["index"], values[detail["index"]])
    except (ValueError, RuntimeError, KeyError) as exc:
        raise JobFailed(
            refusal_class(str(exc)), f"the window of operators {start}..{start + length - 1}: {one_line(exc)}"
        ) from None
    return interpreter


def _median_and_spread(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    middle = percentile(ordered, 50)
    return {"median_ms": middle, "mad_ms": percentile(sorted(abs(v - middle) for v in ordered), 50), "n": len(values)}
