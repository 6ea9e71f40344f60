#!/usr/bin/env python3
"""edgepipe's device agent: measures one TFLite model on the board it runs on and answers with one JSON result.

It is ONE file that needs only the Python standard library, numpy and a TFLite runtime: ``ai_edge_litert``,
``tflite_runtime`` or TensorFlow's ``tf.lite`` (found by itself, in that order unless the job names one). edgepipe
copies it to the board; nothing else of edgepipe is installed there.

Commands::

    python3 edgepipe_agent.py run -        read a job (JSON) on stdin, print a result (JSON) on stdout
    python3 edgepipe_agent.py probe        print the board's state and the runtimes it has (JSON)
    python3 edgepipe_agent.py version      print the agent version and the protocols it speaks

Environment: ``EDGEPIPE_AGENT_LAUNCHER`` (a JSON list) prefixes the command that starts the sandboxed child,
for emulators the kernel cannot start by itself; ``EDGEPIPE_EMULATED=1`` marks the board state as emulated.

While it works, ``run`` writes progress events to stderr, one JSON object per line, such as
``{"event": "phase", "phase": "warmup", "runs": 10}``. Lines that are not JSON are the runtime's own log.

Job, protocol ``edgepipe.job/1``::

    protocol        "edgepipe.job/1" (required; any other value is refused with error class BadJob)
    model           path of the .tflite file on the board (required)
    data            path of an .npz with the evaluation samples, or null: ``x`` (float32 samples) and ``y``
                    (targets) for a model with one input and one output, else ``x_0, x_1, ...`` and ``y_0, ...``
                    in the order of the interpreter's input and output details; no ``y`` for reconstruction
    task            "classification" | "regression" | "reconstruction", or null to infer it from the data
                    (no y: reconstruction; integer y: classification; float y: regression)  (default null)
    reference       path of an .npz with the host's raw outputs for ``x`` (``o_0, o_1, ...``), or null
    outputs         path where the agent saves its own raw outputs for ``x`` (.npz, ``o_0, ...``), or null
    runtime         "auto" | "ai_edge_litert" | "tflite_runtime" | "tensorflow"        (default "auto")
    threads         interpreter threads                                                  (default 1)
    xnnpack         apply the XNNPACK delegate (false: built-in kernels only)            (default true)
    warmup_runs     untimed runs after the first inference                               (default 10)
    runs            timed runs, at least                                                 (default 200)
    min_seconds     keep timing until this much time has passed, too                     (default 1.0)
    max_runs        never more timed runs than this (bounds the size of the result)      (default 20000)
    repeats         measure in this many sandboxed processes, one after the other        (default 1)
    baseline        path of a second .tflite to time against the model: ``repeats`` more processes each load
                    both and time them in alternating blocks of about 10 ms (ABBA), or null   (default null)
    time_limit_s    wall-time limit of the sandboxed child                               (default 300)
    memory_limit_mb address-space limit of the sandboxed child (RLIMIT_AS)               (default 2048)

Result, protocol ``edgepipe.result/1``::

    protocol, agent_version
    status          "ok" | "error"
    error           null, or {"class": ..., "message": ...}; classes:
                      BadJob            the job is not valid JSON, has an unknown protocol or a wrong field
                      RuntimeMissing    no TFLite runtime can be imported on the board
                      InvalidModel      not a TFLite flatbuffer (empty, truncated, wrong identifier, corrupt)
                      UnsupportedOp     a valid model with an operator this runtime does not have
                      DataMismatch      the evaluation data does not fit the model's input
                      InvokeFailed      the interpreter returned an error while running
                      ModelCrash        the child died from a signal (segmentation fault, abort, ...)
                      ModelTimeout      the child exceeded time_limit_s and was killed
                      ModelOutOfMemory  the child exceeded memory_limit_mb
                      MemoryLimitTooLow the memory limit cannot even hold numpy and the runtime
                      AgentFailure      a bug in this agent (the message holds the traceback's last line)
    board           machine, cpu model, cores, governor, MHz, temperature, throttling (vcgencmd), kernel,
                    os, python, numpy; "emulated" when the agent runs under QEMU user-mode emulation
    runtime         {"name", "version", "threads", "xnnpack"}
    model           {"bytes", "inputs": [...], "outputs": [...]} as the runtime reports them
    timing          load_ms, first_inference_ms, warmup_ms [...], latency_ms {count, min, p50, p90, p99, max,
                    mean, std}, samples_ms [...] (every timed run, in order, all repeats pooled),
                    repeats [{pid, latency_ms, samples_ms}] (one per sandboxed process);
                    with a baseline: baseline {model, latency_ms (the baseline's), error, processes
                    [{pid, first ("model" | "baseline"), block_runs, model_ms [...], baseline_ms [...]}]}:
                    samples in the order timed, in blocks of block_runs alternating A B B A ...; error is a
                    failure while measuring with the baseline (the model's own result stands)
    memory          vmhwm_kb {before_load, after_load, after_runs}, limit_mb
    clock           {"started", "finished"}: the board's wall clock (seconds since 1970) around the whole job
    accuracy        {samples, task, metric, value, per_output [...], accuracy, agreement: {top1, max_abs_diff}}:
                    metric "accuracy" (top-1, classification), "mae" (mean absolute error, regression) or "mse"
                    (mean squared error of each output against its input, reconstruction); ``value`` is the
                    mean over the outputs; ``accuracy`` is ``value`` for a classifier, else null; agreement
                    (only with a reference): top1 (classifiers; else null) and the largest difference of the raw
                    output values
    sandbox         {pid, exit, signal, wall_s, stderr_tail}

Model errors (everything but BadJob and AgentFailure) are results, not agent failures: ``run`` prints the result
and exits 0. It exits 2 only when it could not even read the job, after printing a BadJob result.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from importlib import metadata
from typing import Any

AGENT_VERSION = "1.5.0"
JOB_PROTOCOL = "edgepipe.job/1"
RESULT_PROTOCOL = "edgepipe.result/1"
RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")
DISTRIBUTIONS = {
    "ai_edge_litert": ("ai-edge-litert",),
    "tflite_runtime": ("tflite-runtime",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-aarch64", "tf-nightly"),
}
JOB_DEFAULTS: dict[str, Any] = {
    "data": None,
    "task": None,
    "reference": None,
    "outputs": None,
    "runtime": "auto",
    "threads": 1,
    "xnnpack": True,
    "warmup_runs": 10,
    "runs": 200,
    "min_seconds": 1.0,
    "max_runs": 20000,
    "repeats": 1,
    "baseline": None,
    "profile": None,  # {model, windows, pairs, their offsets, min_seconds, min_rounds}: see measure_profile
    "time_limit_s": 300.0,
    "memory_limit_mb": 2048,
}
# The interpreter's messages are the only signal these runtimes give for an unknown operator.
UNSUPPORTED_OP_MARKERS = ("Didn't find op for builtin opcode", "unresolved custom op", "Op builtin_code out of range")
MAX_THREADS = 1024  # the same bound as the host's target settings
OUT_OF_MEMORY_MARKERS = ("std::bad_alloc", "MemoryError", "out of memory")
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}


class JobFailed(Exception):
    """A classified failure; becomes the result's ``error``."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message


# ------------------------------------------------------------------------------------------------- the board
def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    # A Raspberry Pi names itself in "Model"; x86 in "model name"; other ARM boards in "Hardware".
    return fields.get("Model") or fields.get("model name") or fields.get("Hardware") or platform.processor() or None


def _throttling() -> dict[str, Any] | None:
    """``vcgencmd get_throttled`` on a Raspberry Pi: bits 0-3 happen now, bits 16-19 happened since boot."""
    tool = shutil.which("vcgencmd")
    if tool is None:
        return None
    try:
        done = subprocess.run([tool, "get_throttled"], capture_output=True, text=True, timeout=5, check=False)
        value = int(done.stdout.strip().partition("=")[2], 16)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {"raw": None}
    return {
        "raw": hex(value),
        "under_voltage_now": bool(value & 0x1),
        "frequency_capped_now": bool(value & 0x2),
        "throttled_now": bool(value & 0x4),
        "soft_temperature_limit_now": bool(value & 0x8),
        "throttled_since_boot": bool(value & 0x40000) or bool(value & 0x10000),
    }


def _temperature_c() -> float | None:
    raw = _read("/sys/class/thermal/thermal_zone0/temp")
    return round(int(raw) / 1000, 1) if raw and raw.lstrip("-").isdigit() else None


def _emulated() -> bool:
    """Set by the host's emulator transport: QEMU user mode shows the guest's view of /proc, not itself."""
    return os.environ.get("EDGEPIPE_EMULATED") == "1"


def _version(*distributions: str) -> str | None:
    """The installed version of the first of ``distributions`` (one module can ship under several names)."""
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def board_state() -> dict[str, Any]:
    """What the board is and how it is running right now; none of it needs root, missing parts are null."""
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq"
    current_khz = _read(f"{cpufreq}/scaling_cur_freq")
    max_khz = _read(f"{cpufreq}/cpuinfo_max_freq")
    os_release = dict(line.split("=", 1) for line in (_read("/etc/os-release") or "").splitlines() if "=" in line).get(
        "PRETTY_NAME"
    )
    meminfo = {
        k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in (_read("/proc/meminfo") or "").splitlines())
    }
    return {
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "governor": _read(f"{cpufreq}/scaling_governor"),
        "mhz_current": int(current_khz) // 1000 if current_khz and current_khz.isdigit() else None,
        "mhz_max": int(max_khz) // 1000 if max_khz and max_khz.isdigit() else None,
        "temperature_c": _temperature_c(),
        "throttling": _throttling(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory_total_kb": meminfo.get("MemTotal"),
        "memory_available_kb": meminfo.get("MemAvailable"),
        "kernel": platform.release(),
        "os": os_release.strip('"') if os_release else None,
        "hostname": platform.node(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "emulated": _emulated(),
    }


def available_runtimes() -> dict[str, str | None]:
    """Runtime module -> installed version, without importing any of them (importing TensorFlow takes seconds)."""
    from importlib.util import find_spec

    return {name: _version(*DISTRIBUTIONS[name]) or "unknown" for name in RUNTIMES if find_spec(name) is not None}


def probe(workdir: str) -> dict[str, Any]:
    free = shutil.disk_usage(workdir if os.path.isdir(workdir) else os.path.expanduser("~")).free
    return {
        "protocol": RESULT_PROTOCOL,
        "agent_version": AGENT_VERSION,
        "board": board_state(),
        "runtimes": available_runtimes(),
        "executable": sys.executable,
        "free_disk_bytes": free,
    }


# ------------------------------------------------------------------------------------ the sandboxed child
def _vmhwm_kb() -> int | None:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def _emit(event: str, **fields: Any) -> None:
    sys.stderr.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stderr.flush()


LOAD_FAILURE_MARKERS = ("failed to map segment", "cannot allocate memory", "Cannot allocate memory")


def _import_under_limit(job: dict[str, Any], load: Any, what: str) -> Any:
    """Import ``what`` inside the sandbox's address-space limit. A limit too small for the libraries themselves
    is the target's setting, not the model's fault nor the agent's: say so (MemoryLimitTooLow)."""
    try:
        return load()
    except (ImportError, OSError, MemoryError) as exc:
        text = " ".join(str(exc).split()).split("Original error was:")[-1].strip() or type(exc).__name__
        if isinstance(exc, MemoryError) or any(marker in text for marker in LOAD_FAILURE_MARKERS):
            raise JobFailed(
                "MemoryLimitTooLow",
                f"the {job['memory_limit_mb']} MB memory limit is too small to load {what} itself ({text[-160:]})",
            ) from None
        if isinstance(exc, ImportError) and what == "numpy":
            raise JobFailed("RuntimeMissing", f"numpy cannot be imported: {text[-200:]}") from None
        raise


def _import_runtime(preference: str) -> tuple[Any, Any, str, str | None]:
    """(Interpreter class, OpResolverType or None, module name, version) of the first runtime that imports."""
    names = RUNTIMES if preference == "auto" else (preference,)
    problems = []
    for name in names:
        try:
            if name == "tensorflow":
                import tensorflow as tf  # type: ignore[import-not-found]

                module: Any = tf.lite
                resolver = getattr(tf.lite.experimental, "OpResolverType", None)
            else:
                module = __import__(f"{name}.interpreter", fromlist=["Interpreter"])
                resolver = getattr(module, "OpResolverType", None)
            return module.Interpreter, resolver, name, _version(*DISTRIBUTIONS[name])
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
    raise JobFailed("RuntimeMissing", "no TFLite runtime can be imported (" + "; ".join(problems) + ")")


def _percentile(ordered: list[float], q: float) -> float:
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
        "p50": _percentile(ordered, 50),
        "p90": _percentile(ordered, 90),
        "p99": _percentile(ordered, 99),
        "max": ordered[-1],
        "mean": mean,
        "std": variance**0.5,
    }


def _quantize(np: Any, x: Any, detail: dict[str, Any]) -> Any:
    """Float samples -> the input tensor's type, with the model's own scale and zero point."""
    dtype = detail["dtype"]
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    if not scale:
        raise JobFailed("DataMismatch", "the model's integer input has no quantization scale")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _tensor_info(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {
        "name": detail["name"],
        "dtype": detail["dtype"].__name__,
        "shape": [int(d) for d in detail["shape"]],
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def _load_model(job: dict[str, Any], interpreter_class: Any, resolver: Any) -> tuple[Any, int]:
    path = job["model"]
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise JobFailed("InvalidModel", f"cannot read the model file: {exc}") from None
    if len(head) == 0:
        raise JobFailed("InvalidModel", "the model file is empty")
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise JobFailed("InvalidModel", "not a TFLite model: the file identifier 'TFL3' is missing")
    options: dict[str, Any] = {"model_path": path, "num_threads": int(job["threads"])}
    if not job["xnnpack"] and resolver is not None:
        options["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = interpreter_class(**options)
    except (TypeError, OverflowError) as exc:  # e.g. a thread count the runtime's C++ side cannot take
        raise JobFailed(
            "BadJob", f"the runtime refused the settings (threads {job['threads']}): {_clean(exc)}"
        ) from None
    except (ValueError, RuntimeError) as exc:
        raise JobFailed(_refusal_class(str(exc)), f"the runtime refused the model: {_clean(exc)}") from None
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        kind = _refusal_class(str(exc))
        if kind == "InvalidModel" and _tensor_bytes(interpreter) > _headroom(job["memory_limit_mb"]):
            raise JobFailed(
                "ModelOutOfMemory",
                f"allocating tensors failed: they need about {_tensor_bytes(interpreter) / 2**20:.0f} MB and "
                f"{_headroom(job['memory_limit_mb']) / 2**20:.0f} MB of the {job['memory_limit_mb']} MB limit are left",
            ) from None
        raise JobFailed(kind, f"the runtime cannot allocate the model's tensors: {_clean(exc)}") from None
    return interpreter, os.path.getsize(path)


def _refusal_class(text: str) -> str:
    return "UnsupportedOp" if any(m in text for m in UNSUPPORTED_OP_MARKERS) else "InvalidModel"


def _clean(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _tensor_bytes(interpreter: Any) -> int:
    """What the model's tensors need, from their shapes (known before allocation)."""
    total = 0
    for detail in interpreter.get_tensor_details():
        count = 1
        for dim in detail["shape"]:
            count *= max(int(dim), 1)
        total += count * detail["dtype"]().itemsize
    return total


def _headroom(limit_mb: int) -> int:
    """Address space left under the limit (RLIMIT_AS counts VmSize)."""
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmSize:"):
            return int(limit_mb) * 2**20 - int(line.split()[1]) * 1024
    return int(limit_mb) * 2**20


def _invoke(interpreter: Any) -> None:
    try:
        interpreter.invoke()
    except (ValueError, RuntimeError) as exc:
        raise JobFailed("InvokeFailed", f"invoke() failed: {_clean(exc)}") from None


def _time_runs(interpreter: Any, job: dict[str, Any]) -> list[float]:
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
        raise JobFailed("InvokeFailed", f"invoke() failed: {_clean(exc)}") from None
    return [s / 1e6 for s in samples]


def _timed_block(invoke: Any, count: int, samples: list[int]) -> None:
    """``count`` invocations, each timed alone (nothing but invoke() between the clock reads)."""
    clock = time.perf_counter_ns
    for _ in range(count):
        t0 = clock()
        invoke()
        samples.append(clock() - t0)


TASKS = ("classification", "regression", "reconstruction")


def _numbered(archive: Any, key: str) -> list[Any]:
    """``key`` alone, or ``key_0, key_1, ...``: one array per input (x) or output (y)."""
    if key in archive.files:
        return [archive[key]]
    arrays = []
    while f"{key}_{len(arrays)}" in archive.files:
        arrays.append(archive[f"{key}_{len(arrays)}"])
    return arrays


def _read_data(np: Any, path: str) -> tuple[list[Any], list[Any]]:
    with np.load(path, allow_pickle=False) as archive:
        xs, ys = _numbered(archive, "x"), _numbered(archive, "y")
    if not xs:
        raise JobFailed("DataMismatch", "the evaluation data has no x (or x_0, x_1, ...)")
    return xs, ys


def score(np: Any, task: str, outputs: list[Any], targets: list[Any]) -> list[float]:
    """Per output: top-1 accuracy (classification), mean absolute error (regression) or mean squared error
    against the input (reconstruction). The same formulas as edgepipe's tasks.score on the host."""
    values = []
    for out, target in zip(outputs, targets, strict=True):
        flat = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
        if task == "classification":
            values.append(float(np.mean(flat.argmax(axis=1) == np.asarray(target).reshape(-1))))
            continue
        want = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
        if want.shape != flat.shape:
            raise JobFailed(
                "DataMismatch", f"outputs {list(flat.shape)} cannot be compared with targets {list(want.shape)}"
            )
        values.append(float((np.abs(flat - want) if task == "regression" else np.square(flat - want)).mean()))
    return values


def _evaluate(np: Any, interpreter: Any, job: dict[str, Any]) -> dict[str, Any]:
    xs, ys = _read_data(np, job["data"])
    sources = interpreter.get_input_details()
    if len(xs) != len(sources):
        raise JobFailed(
            "DataMismatch", f"the evaluation data has {len(xs)} input arrays, the model {len(sources)} inputs"
        )
    for index, (x, source) in enumerate(zip(xs, sources, strict=True)):
        expected = [int(d) for d in source["shape"][1:]]
        if list(x.shape[1:]) != expected:
            which = "" if len(xs) == 1 else f" (input {index})"
            raise JobFailed(
                "DataMismatch", f"evaluation samples have shape {list(x.shape[1:])}, model wants {expected}{which}"
            )
    task = job["task"] or (
        "reconstruction" if not ys else "classification" if ys[0].dtype.kind in "iub" else "regression"
    )
    count = len(xs[0])
    batch = 256 if all(list(d.get("shape_signature", [1]))[:1] == [-1] for d in sources) else 1
    chunks: list[list[Any]] = [[] for _ in interpreter.get_output_details()]
    for start in range(0, count, batch):
        size = min(batch, count - start)
        if batch > 1:
            for source in sources:
                interpreter.resize_tensor_input(source["index"], [size, *[int(d) for d in source["shape"][1:]]])
            interpreter.allocate_tensors()
        for x, detail in zip(xs, interpreter.get_input_details(), strict=True):
            interpreter.set_tensor(detail["index"], _quantize(np, x[start : start + size], detail))
        _invoke(interpreter)
        for chunk, output in zip(chunks, interpreter.get_output_details(), strict=True):
            chunk.append(interpreter.get_tensor(output["index"]).reshape(size, -1).copy())
    raw = [np.concatenate(chunk) for chunk in chunks]
    dequantized = []
    for values, output in zip(raw, interpreter.get_output_details(), strict=True):
        scale, zero_point = output["quantization"]
        dequantized.append((values.astype(np.float32) - zero_point) * scale if scale else values.astype(np.float32))
    targets = ys if task != "reconstruction" else xs
    if len(targets) != len(raw):
        raise JobFailed("DataMismatch", f"the model has {len(raw)} outputs but the data {len(targets)} target arrays")
    per_output = score(np, task, dequantized, targets)
    value = sum(per_output) / len(per_output)
    metric = {"classification": "accuracy", "regression": "mae", "reconstruction": "mse"}[task]
    report: dict[str, Any] = {
        "samples": count,
        "task": task,
        "metric": metric,
        "value": value,
        "per_output": per_output,
        "accuracy": value if task == "classification" else None,
    }
    if task == "classification":
        report["correct"] = sum(round(v * count) for v in per_output)  # over every output
    if job["outputs"]:
        with open(job["outputs"], "wb") as handle:
            np.savez(handle, **{f"o_{i}": values for i, values in enumerate(raw)})
    if job["reference"]:
        with np.load(job["reference"], allow_pickle=False) as archive:
            reference = [archive[f"o_{i}"].reshape(count, -1) for i in range(len(archive.files))]
        if [r.shape for r in reference] != [r.shape for r in raw]:
            shapes = [list(r.shape) for r in reference], [list(r.shape) for r in raw]
            raise JobFailed("DataMismatch", f"reference outputs {shapes[0]} do not match {shapes[1]}")
        top1 = [float((a.argmax(axis=1) == b.argmax(axis=1)).mean()) for a, b in zip(reference, raw, strict=True)]
        report["agreement"] = {
            "top1": sum(top1) / len(top1) if task == "classification" else None,
            "max_abs_diff": max(
                float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
                for a, b in zip(reference, raw, strict=True)
            ),
        }
    return report


def _prepare_input(np: Any, interpreter: Any, job: dict[str, Any]) -> None:
    """Batch 1, and the first evaluation sample as input when it fits (zeros otherwise) for the timed runs."""
    sources = interpreter.get_input_details()
    if any(list(source["shape"][:1]) != [1] and len(source["shape"]) > 0 for source in sources):
        for source in sources:
            interpreter.resize_tensor_input(source["index"], [1, *source["shape"][1:]])
        interpreter.allocate_tensors()
        sources = interpreter.get_input_details()
    firsts = [None] * len(sources)
    if job["data"]:
        xs, _ = _read_data(np, job["data"])
        firsts = [x[:1] for x in xs] if len(xs) == len(sources) else firsts
    for first, source in zip(firsts, sources, strict=True):
        sample = np.zeros(source["shape"], dtype=source["dtype"])
        if first is not None and list(first.shape[1:]) == [int(d) for d in source["shape"][1:]]:
            sample = _quantize(np, first, source)
        interpreter.set_tensor(source["index"], sample)


def measure_paired(job: dict[str, Any]) -> dict[str, Any]:
    """A paired repeat of a job with a baseline: both models in this one process, timed in alternating blocks.

    Blocks of about 10 ms each, in the order A B B A A B ... (ABBA, ``_first`` says who starts): a slow spell
    of the board (another tenant, a frequency change) lasts far longer than a block, so it lands on both
    models alike instead of on one of them. Both get the same input rule and the same warm-up.
    """
    np = _import_under_limit(job, lambda: __import__("numpy"), "numpy")
    interpreter_class, resolver, _, _ = _import_under_limit(
        job, lambda: _import_runtime(job["runtime"]), "the TFLite runtime"
    )
    model, _ = _load_model(job, interpreter_class, resolver)
    baseline, _ = _load_model({**job, "model": job["baseline"]}, interpreter_class, resolver)
    typical_ns = []
    for interpreter in (model, baseline):
        _prepare_input(np, interpreter, job)
        _invoke(interpreter)
        warmup = []
        for _ in range(max(int(job["warmup_runs"]), 3)):
            t0 = time.perf_counter_ns()
            _invoke(interpreter)
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
                _timed_block(interpreter.invoke, block, samples)
            turn += 1
    except (ValueError, RuntimeError) as exc:
        raise JobFailed("InvokeFailed", f"invoke() failed: {_clean(exc)}") from None
    model_ns, baseline_ns = (ordered[0][1], ordered[1][1]) if first_is_model else (ordered[1][1], ordered[0][1])
    return {
        "first": "model" if first_is_model else "baseline",
        "block_runs": block,
        "model_ms": [s / 1e6 for s in model_ns],
        "baseline_ms": [s / 1e6 for s in baseline_ns],
    }


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
        raise JobFailed(_refusal_class(str(exc)), f"the runtime refused the model: {_clean(exc)}") from None
    _prepare_input(np, reference, job)
    _invoke(reference)
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
    np = _import_under_limit(job, lambda: __import__("numpy"), "numpy")
    interpreter_class, resolver, _, _ = _import_under_limit(
        job, lambda: _import_runtime(job["runtime"]), "the TFLite runtime"
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
    _emit("phase", phase="profile-load", windows=len(windows))
    values = _tensor_values(job, interpreter_class, options, {t for w in windows for t in w[2]}, np)
    whole, _ = _load_model(job, interpreter_class, resolver)  # the model itself, timed in the same rounds
    _prepare_input(np, whole, job)
    for _ in range(2):
        _invoke(whole)
    t0 = time.perf_counter_ns()
    _invoke(whole)
    whole_block = max(1, min(200, int(5e5 / max(time.perf_counter_ns() - t0, 1))))  # a visit: as for the windows
    # every window holds its own copy of the model's bytes: as many as fit in a third of the address space left
    per_group = max(1, int(_headroom(job["memory_limit_mb"]) / 3 / (2 * max(len(content), 1))))
    groups = [list(range(first, min(first + per_group, count))) for first in range(0, count, per_group)]
    differences: list[list[float]] = [[] for _ in range(count)]
    overhead: list[float] = []
    whole_ms: list[float] = []
    clock = time.perf_counter_ns
    min_ns, min_rounds = float(profile["min_seconds"]) * 1e9, int(profile["min_rounds"])
    _emit("phase", phase="profile", operators=count, groups=len(groups), min_seconds=profile["min_seconds"])
    started, fewest_rounds, largest_block = clock(), None, 1
    for group in groups:
        loaded = {index: _window_interpreter(content, profile, index, interpreter_class, options, values)
                  for k in group for index in pairs[k]}  # fmt: skip
        blocks = {}
        for k in group:
            for index in pairs[k]:
                for _ in range(max(int(job["warmup_runs"]) // 4, 2)):
                    _invoke(loaded[index])
            t0 = clock()
            _invoke(loaded[pairs[k][0]])
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
                        _timed_block(loaded[index].invoke, blocks[k], visit)
                        medians[index] = _percentile(sorted(visit), 50) / 1e6
                    differences[k].append(medians[with_k] - medians[without_k])
                    if k == 0:
                        overhead.append(medians[without_k])
                visit = []
                _timed_block(whole.invoke, whole_block, visit)
                whole_ms.append(_percentile(sorted(visit), 50) / 1e6)
                rounds += 1
        except (ValueError, RuntimeError) as exc:
            raise JobFailed("InvokeFailed", f"invoke() of a window failed: {_clean(exc)}") from None
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
        "vmhwm_kb": _vmhwm_kb(),  # the windows of a group are loaded at once: this grows with the group
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
            _refusal_class(str(exc)), f"the window of operators {start}..{start + length - 1}: {_clean(exc)}"
        ) from None
    return interpreter


def _median_and_spread(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    middle = _percentile(ordered, 50)
    return {"median_ms": middle, "mad_ms": _percentile(sorted(abs(v - middle) for v in ordered), 50), "n": len(values)}


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Everything that touches the model; runs only inside the sandboxed child. A repeat (``_repeat``) only
    times: it stays quiet and leaves accuracy to the first child."""
    repeat = bool(job.get("_repeat"))
    emit = (lambda *args, **fields: None) if repeat else _emit
    emit("phase", phase="import-runtime")
    np = _import_under_limit(job, lambda: __import__("numpy"), "numpy")
    interpreter_class, resolver, name, version = _import_under_limit(
        job, lambda: _import_runtime(job["runtime"]), "the TFLite runtime"
    )
    xnnpack = bool(job["xnnpack"]) or resolver is None
    result: dict[str, Any] = {
        "runtime": {"name": name, "version": version, "threads": int(job["threads"]), "xnnpack": xnnpack},
        "memory": {"vmhwm_kb": {"before_load": _vmhwm_kb()}, "limit_mb": job["memory_limit_mb"]},
    }
    emit("phase", phase="load")
    t0 = time.perf_counter()
    interpreter, size = _load_model(job, interpreter_class, resolver)
    load_ms = (time.perf_counter() - t0) * 1000
    _prepare_input(np, interpreter, job)
    result["memory"]["vmhwm_kb"]["after_load"] = _vmhwm_kb()
    result["model"] = {
        "bytes": size,
        "inputs": [_tensor_info(d) for d in interpreter.get_input_details()],
        "outputs": [_tensor_info(d) for d in interpreter.get_output_details()],
    }

    emit("phase", phase="first-inference")
    t0 = time.perf_counter()
    _invoke(interpreter)
    first_ms = (time.perf_counter() - t0) * 1000
    emit("phase", phase="warmup", runs=int(job["warmup_runs"]))
    warmup = []
    for _ in range(int(job["warmup_runs"])):
        t0 = time.perf_counter()
        _invoke(interpreter)
        warmup.append((time.perf_counter() - t0) * 1000)
    emit("phase", phase="measure", runs=job["runs"], min_seconds=job["min_seconds"], max_runs=job["max_runs"])
    samples = _time_runs(interpreter, job)
    result["memory"]["vmhwm_kb"]["after_runs"] = _vmhwm_kb()
    result["timing"] = {
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "warmup_ms": warmup,
        "latency_ms": summarize(samples),
        "samples_ms": samples,
    }
    if job["data"] and not repeat:
        emit("phase", phase="evaluate")
        result["accuracy"] = _evaluate(np, interpreter, job)
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


# ----------------------------------------------------------------------------------------- the supervisor
def _limits(memory_limit_mb: int) -> Any:
    def apply() -> None:
        limit = int(memory_limit_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing model must not fill the disk with cores
        _die_with_parent()

    return apply


def _die_with_parent() -> None:
    """The kernel kills the sandboxed child when the agent dies, even by SIGKILL (Linux; elsewhere the agent's
    SIGTERM/SIGHUP handler is what stops it)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _launcher() -> list[str]:
    """What to put before ``sys.executable`` to start another Python like this one: nothing on a board. Under
    QEMU user-mode emulation without binfmt the kernel cannot run an aarch64 binary by itself, so the host
    sets ``EDGEPIPE_AGENT_LAUNCHER`` to the emulator command (a JSON list, e.g. ``["qemu-aarch64-static",
    "-L", "/image"]``)."""
    launcher = os.environ.get("EDGEPIPE_AGENT_LAUNCHER")
    return [str(part) for part in json.loads(launcher)] if launcher else []


def _relay(stream: Any, tail: list[str]) -> None:
    """Forward the child's JSON events to our stderr; keep its other lines (runtime logs) for the result."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if line.startswith('{"event"'):
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        else:
            tail.append(line)
            del tail[:-20]


def supervise(job: dict[str, Any]) -> dict[str, Any]:
    """Measure in ``repeats`` sandboxed children one after the other; the first also evaluates accuracy.

    Separate processes, because a process can land in a slower state for its whole life (memory layout,
    the core it runs on): samples from one process cannot show that, several processes can. The result is
    the first child's, with every child's timed samples under ``timing.repeats`` and pooled in
    ``timing.samples_ms``. The first child that fails ends the job with its error.

    With a ``baseline``, ``repeats`` more children each load both models and time them in alternating blocks
    (``measure_paired``), the first one starting with the model, the next with the baseline, and so on;
    their samples go to ``timing.baseline``. The baseline's own failure is reported there and does not
    fail the model's result.
    """
    result = sandboxed(job)
    if result["status"] != "ok":
        return result
    repeats = [_repeat(result)]
    light = {**job, "reference": None, "outputs": None, "_repeat": True}
    for index in range(1, int(job["repeats"])):
        _emit("phase", phase="repeat", repeat=index + 1, repeats=job["repeats"])
        again = sandboxed(light)
        if again["status"] != "ok":
            return {**result, "status": "error", "error": again["error"], "sandbox": again["sandbox"]}
        repeats.append(_repeat(again))
    pooled = [sample for repeat in repeats for sample in repeat["samples_ms"]]
    result["timing"].update({"repeats": repeats, "samples_ms": pooled, "latency_ms": summarize(pooled)})
    if job["baseline"]:
        result["timing"]["baseline"] = _paired(job, light)
    if job["profile"]:
        _emit("phase", phase="profile")
        again = sandboxed({**light, "_profile": True})
        # a profile that fails (a window the runtime refuses, the memory of many interpreters) leaves the
        # measurement standing: the error goes with the profile
        result["profile"] = again["profile"] if again["status"] == "ok" else {"error": again["error"]}
    return result


def _paired(job: dict[str, Any], light: dict[str, Any]) -> dict[str, Any]:
    processes: list[dict[str, Any]] = []
    error = None
    for index in range(int(job["repeats"])):
        _emit("phase", phase="paired", repeat=index + 1, repeats=job["repeats"])
        first = "model" if index % 2 == 0 else "baseline"
        again = sandboxed({**light, "_paired": True, "_first": first})
        if again["status"] != "ok":
            error = {**again["error"], "message": f"measuring with the baseline: {again['error']['message']}"}
            break
        fields = ("first", "block_runs", "model_ms", "baseline_ms")
        processes.append({"pid": again["sandbox"]["pid"], **{name: again[name] for name in fields}})
    pooled = [sample for process in processes for sample in process["baseline_ms"]]
    return {
        "model": job["baseline"],
        "processes": processes,
        "latency_ms": summarize(pooled) if pooled else None,
        "error": error,
    }


def _repeat(result: dict[str, Any]) -> dict[str, Any]:
    timing = result["timing"]
    return {"pid": result["sandbox"]["pid"], "latency_ms": timing["latency_ms"], "samples_ms": timing["samples_ms"]}


def sandboxed(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``measure`` in a child with a wall-time and memory limit, and classify however it ends."""
    command = [*_launcher(), sys.executable, "-I", os.path.abspath(__file__), "_sandbox"]
    started = time.monotonic()
    child = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_limits(job["memory_limit_mb"]),
        close_fds=True,
    )
    tail: list[str] = []
    relay = threading.Thread(target=_relay, args=(child.stderr, tail), daemon=True)
    relay.start()
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(child.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    _CHILDREN.append(child)
    assert child.stdin is not None
    try:
        child.stdin.write(json.dumps(job).encode())
        child.stdin.close()
    except BrokenPipeError:
        pass
    timed_out = False
    try:
        child.wait(timeout=float(job["time_limit_s"]))
    except subprocess.TimeoutExpired:
        timed_out = True
        child.kill()
        child.wait()
    reader.join(5)
    relay.join(5)
    wall = time.monotonic() - started
    code = child.returncode
    sandbox = {
        "pid": child.pid,
        "exit": code,
        "signal": signal.Signals(-code).name if code < 0 else None,
        "wall_s": round(wall, 3),
        "stderr_tail": tail[-10:],
    }
    answer = _parse(output[0] if output else b"")
    log = "\n".join(tail)
    if timed_out:
        error = {"class": "ModelTimeout", "message": f"killed after the {job['time_limit_s']} s time limit"}
    elif answer is not None:
        error = answer.get("error")
    elif any(marker in log for marker in OUT_OF_MEMORY_MARKERS) or code == -signal.SIGKILL:
        # A SIGKILL we did not send comes, on Linux, from the kernel's OOM killer.
        error = {"class": "ModelOutOfMemory", "message": f"exceeded the {job['memory_limit_mb']} MB memory limit"}
    elif code < 0 and -code in CRASH_SIGNALS:
        error = {"class": "ModelCrash", "message": f"the interpreter died with {signal.Signals(-code).name}"}
    elif code < 0:
        error = {"class": "ModelCrash", "message": f"the interpreter was killed by {signal.Signals(-code).name}"}
    else:
        last = tail[-1] if tail else "no output"
        error = {"class": "ModelCrash", "message": f"the sandbox exited with status {code} and no result: {last}"}
    result = dict(answer["ok"]) if answer is not None and "ok" in answer else {}
    result.update({"status": "error" if error else "ok", "error": error, "sandbox": sandbox})
    return result


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


_CHILDREN: list[subprocess.Popen[bytes]] = []


def _terminate(signum: int, _frame: Any) -> None:
    """Deadline or hang-up from the host: the child must not outlive us."""
    for child in _CHILDREN:
        if child.poll() is None:
            child.kill()
    sys.exit(128 + signum)


def check_job(raw: str) -> dict[str, Any]:
    try:
        job = json.loads(raw)
    except ValueError as exc:
        raise JobFailed("BadJob", f"the job is not valid JSON: {exc}") from None
    if not isinstance(job, dict):
        raise JobFailed("BadJob", "the job must be a JSON object")
    protocol = job.get("protocol")
    if protocol != JOB_PROTOCOL:
        raise JobFailed(
            "BadJob",
            f"job protocol {protocol!r} is not supported by agent {AGENT_VERSION}, which speaks {JOB_PROTOCOL}; "
            "deploy with a matching edgepipe, or reinstall the agent",
        )
    unknown = sorted(set(job) - set(JOB_DEFAULTS) - {"protocol", "model"})
    if unknown:
        raise JobFailed("BadJob", f"unknown job field(s): {', '.join(unknown)}")
    if not isinstance(job.get("model"), str):
        raise JobFailed("BadJob", "the job needs 'model', the path of a .tflite file")
    if job.get("baseline") is not None and not isinstance(job["baseline"], str):
        raise JobFailed("BadJob", "baseline must be the path of a .tflite file, or null")
    _check_profile(job.get("profile"))
    merged = {**JOB_DEFAULTS, **job}
    if merged["task"] not in (None, *TASKS):
        raise JobFailed("BadJob", f"task {merged['task']!r}: expected null or one of {', '.join(TASKS)}")
    if merged["runtime"] not in ("auto", *RUNTIMES):
        raise JobFailed("BadJob", f"runtime {merged['runtime']!r}: expected auto or one of {', '.join(RUNTIMES)}")
    for field in ("threads", "runs", "max_runs", "memory_limit_mb", "repeats"):
        if not isinstance(merged[field], int) or merged[field] < 1:
            raise JobFailed("BadJob", f"{field} must be a positive integer (got {merged[field]!r})")
    if merged["threads"] > MAX_THREADS:
        raise JobFailed("BadJob", f"threads must be at most {MAX_THREADS} (got {merged['threads']})")
    for field in ("warmup_runs",):
        if not isinstance(merged[field], int) or merged[field] < 0:
            raise JobFailed("BadJob", f"{field} must be a non-negative integer (got {merged[field]!r})")
    for field in ("min_seconds", "time_limit_s"):
        if not isinstance(merged[field], (int, float)) or merged[field] < 0:
            raise JobFailed("BadJob", f"{field} must be a non-negative number (got {merged[field]!r})")
    return merged


def _check_profile(profile: Any) -> None:
    if profile is None:
        return
    fields = {"model", "operators_field_at", "operators_at", "inputs_at", "outputs_at", "windows", "pairs",
              "min_seconds", "min_rounds"}  # fmt: skip
    if not isinstance(profile, dict) or set(profile) != fields:
        raise JobFailed("BadJob", f"profile must be null or an object with exactly: {', '.join(sorted(fields))}")
    if not isinstance(profile["model"], str):
        raise JobFailed("BadJob", "profile.model must be the path of a .tflite file")
    for name in ("operators_field_at", "operators_at", "inputs_at", "outputs_at", "min_rounds"):
        if not isinstance(profile[name], int) or isinstance(profile[name], bool) or profile[name] < 1:
            raise JobFailed("BadJob", f"profile.{name} must be a positive integer (got {profile[name]!r})")
    if not isinstance(profile["min_seconds"], (int, float)) or profile["min_seconds"] < 0:
        raise JobFailed("BadJob", f"profile.min_seconds must be a non-negative number (got {profile['min_seconds']!r})")
    windows, pairs = profile["windows"], profile["pairs"]

    def indices(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(t, int) and t >= 0 for t in value)

    if (
        not isinstance(windows, list)
        or not windows
        or not all(
            isinstance(w, list) and len(w) == 4 and indices(w[:2]) and indices(w[2]) and indices(w[3]) and w[3]
            for w in windows
        )
    ):
        raise JobFailed("BadJob", "profile.windows must be a non-empty list of [start, length, inputs, outputs]")
    if (
        not isinstance(pairs, list)
        or not pairs
        or not all(isinstance(p, list) and len(p) == 2 and indices(p) and max(p) < len(windows) for p in pairs)
    ):
        raise JobFailed("BadJob", "profile.pairs must be a non-empty list of two window indices per operator")


def run(raw_job: str) -> tuple[dict[str, Any], int]:
    base: dict[str, Any] = {"protocol": RESULT_PROTOCOL, "agent_version": AGENT_VERSION}
    try:
        job = check_job(raw_job)
    except JobFailed as exc:
        return {**base, "status": "error", "error": {"class": exc.error_class, "message": exc.message}}, 2
    base["board"] = board_state()
    started = time.time()
    measured = supervise(job)
    # The board's wall clock around the job: a device farm checks that two jobs never overlapped on one board.
    return {**base, **measured, "clock": {"started": started, "finished": time.time()}}, 0


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "help"
    if command == "_sandbox":
        return sandbox_main()
    if command == "version":
        print(json.dumps({"agent_version": AGENT_VERSION, "job": JOB_PROTOCOL, "result": RESULT_PROTOCOL}))
        return 0
    if command == "probe":
        print(json.dumps(probe(argv[2] if len(argv) > 2 else os.getcwd())))
        return 0
    if command == "run":
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGHUP, _terminate)
        source = argv[2] if len(argv) > 2 else "-"
        raw = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()  # noqa: SIM115
        result, code = run(raw)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        return code
    sys.stderr.write(__doc__ or "")
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
