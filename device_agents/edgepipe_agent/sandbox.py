"""The sandboxed child: reads one job on stdin, does everything that touches the model, answers on stdout.

The supervisor starts it under a time and memory limit, so a model that crashes, hangs or eats the memory takes
only this process with it."""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

from edgepipe_agent.evaluate import evaluate
from edgepipe_agent.profile import measure_profile
from edgepipe_agent.protocol import JobFailed
from edgepipe_agent.runtime import (
    emit,
    import_runtime,
    import_under_limit,
    invoke_or_fail,
    load_model,
    tensor_info,
    vmhwm_kb,
)
from edgepipe_agent.timing import measure_paired, prepare_input, summarize, time_runs


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Everything that touches the model; runs only inside the sandboxed child. A repeat (``_repeat``) only
    times: it stays quiet and leaves accuracy to the first child."""
    repeat = bool(job.get("_repeat"))
    say = (lambda *args, **fields: None) if repeat else emit
    say("phase", phase="import-runtime")
    np = import_under_limit(job, lambda: __import__("numpy"), "numpy")
    interpreter_class, resolver, name, version = import_under_limit(
        job, lambda: import_runtime(job["runtime"]), "the TFLite runtime"
    )
    xnnpack = bool(job["xnnpack"]) or resolver is None
    result: dict[str, Any] = {
        "runtime": {"name": name, "version": version, "threads": int(job["threads"]), "xnnpack": xnnpack},
        "memory": {"vmhwm_kb": {"before_load": vmhwm_kb()}, "limit_mb": job["memory_limit_mb"]},
    }
    say("phase", phase="load")
    t0 = time.perf_counter()
    interpreter, size = load_model(job, interpreter_class, resolver)
    load_ms = (time.perf_counter() - t0) * 1000
    prepare_input(np, interpreter, job)
    result["memory"]["vmhwm_kb"]["after_load"] = vmhwm_kb()
    result["model"] = {
        "bytes": size,
        "inputs": [tensor_info(d) for d in interpreter.get_input_details()],
        "outputs": [tensor_info(d) for d in interpreter.get_output_details()],
    }

    say("phase", phase="first-inference")
    t0 = time.perf_counter()
    invoke_or_fail(interpreter)
    first_ms = (time.perf_counter() - t0) * 1000
    say("phase", phase="warmup", runs=int(job["warmup_runs"]))
    warmup = []
    for _ in range(int(job["warmup_runs"])):
        t0 = time.perf_counter()
        invoke_or_fail(interpreter)
        warmup.append((time.perf_counter() - t0) * 1000)
    say("phase", phase="measure", runs=job["runs"], min_seconds=job["min_seconds"], max_runs=job["max_runs"])
    samples = time_runs(interpreter, job)
    result["memory"]["vmhwm_kb"]["after_runs"] = vmhwm_kb()
    result["timing"] = {
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "warmup_ms": warmup,
        "latency_ms": summarize(samples),
        "samples_ms": samples,
    }
    if job["data"] and not repeat:
        say("phase", phase="evaluate")
        result["accuracy"] = evaluate(np, interpreter, job)
    return result


def sandbox_main() -> int:
    """Child entry point: read the job on stdin, write ``{"ok": ...}`` or ``{"error": ...}`` on stdout."""
    job = json.loads(sys.stdin.read())
    try:
        if job.get("_profile"):
            answer: dict[str, Any] = {"ok": {"profile": measure_profile(job)}}
        else:
            answer = {"ok": measure_paired(job) if job.get("_paired") else measure(job)}
    except JobFailed as exc:
        answer = {"error": {"class": exc.error_class, "message": exc.message}}
    except MemoryError:
        answer = {"error": {"class": "ModelOutOfMemory", "message": "ran out of memory (MemoryError)"}}
    except Exception as exc:  # a bug here or in the runtime's Python layer: say which, keep answering
        line = traceback.format_exception_only(type(exc), exc)[-1].strip()
        answer = {"error": {"class": "AgentFailure", "message": f"unexpected error in the sandbox: {line}"}}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0
