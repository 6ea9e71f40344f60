"""The TFLite runtime and the model inside the sandboxed child: importing them under the memory limit, loading
and invoking the model, and classifying how each can fail (the ``error.class`` of the result)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from edgepipe_agent.board import installed_version, read_file
from edgepipe_agent.protocol import DISTRIBUTIONS, RUNTIMES, JobFailed

# The interpreter's messages are the only signal these runtimes give for an unknown operator.
UNSUPPORTED_OP_MARKERS = ("Didn't find op for builtin opcode", "unresolved custom op", "Op builtin_code out of range")


def vmhwm_kb() -> int | None:
    for line in (read_file("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def emit(event: str, **fields: Any) -> None:
    sys.stderr.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stderr.flush()


LOAD_FAILURE_MARKERS = ("failed to map segment", "cannot allocate memory", "Cannot allocate memory")


def import_under_limit(job: dict[str, Any], load: Any, what: str) -> Any:
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


def import_runtime(preference: str) -> tuple[Any, Any, str, str | None]:
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
            return module.Interpreter, resolver, name, installed_version(*DISTRIBUTIONS[name])
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
    raise JobFailed("RuntimeMissing", "no TFLite runtime can be imported (" + "; ".join(problems) + ")")


def quantize(np: Any, x: Any, detail: dict[str, Any]) -> Any:
    """Float samples -> the input tensor's type, with the model's own scale and zero point; an integer input
    without a scale takes index values (token ids into an Embedding) as they are."""
    dtype = detail["dtype"]
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    if not scale:
        return np.rint(x).astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def fits(detail: dict[str, Any], shape: Any) -> bool:
    """Samples of ``shape`` (batch first) fit the input: every dimension but the batch equal to the model's, or
    free (-1 in its signature: a sequence of any length)."""
    signature = [int(d) for d in detail.get("shape_signature", detail["shape"])]
    given = [int(d) for d in shape]
    if len(given) != len(signature):
        return False
    return all(s in (-1, g) for s, g in zip(signature[1:], given[1:], strict=True))


def tensor_info(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {
        "name": detail["name"],
        "dtype": detail["dtype"].__name__,
        "shape": [int(d) for d in detail["shape"]],
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def load_model(job: dict[str, Any], interpreter_class: Any, resolver: Any) -> tuple[Any, int]:
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
            "BadJob", f"the runtime refused the settings (threads {job['threads']}): {one_line(exc)}"
        ) from None
    except (ValueError, RuntimeError) as exc:
        raise JobFailed(refusal_class(str(exc)), f"the runtime refused the model: {one_line(exc)}") from None
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        kind = refusal_class(str(exc))
        if kind == "InvalidModel" and _tensor_bytes(interpreter) > headroom(job["memory_limit_mb"]):
            raise JobFailed(
                "ModelOutOfMemory",
                f"allocating tensors failed: they need about {_tensor_bytes(interpreter) / 2**20:.0f} MB and "
                f"{headroom(job['memory_limit_mb']) / 2**20:.0f} MB of the {job['memory_limit_mb']} MB limit are left",
            ) from None
        raise JobFailed(kind, f"the runtime cannot allocate the model's tensors: {one_line(exc)}") from None
    if path in job["stateful"]:
        interpreter = StatelessRun(interpreter)
    return interpreter, os.path.getsize(path)


class StatelessRun:
    """An interpreter whose ``invoke()`` first resets the model's variable tensors (a fused LSTM keeps its
    hidden and cell state in them between invocations): each inference starts from the zero state, as the
    Keras model computed it. The reset is part of what is timed, as it is part of every inference an
    application runs. Everything else is the interpreter's."""

    def __init__(self, interpreter: Any) -> None:
        self._interpreter = interpreter
        self._reset = interpreter.reset_all_variables
        self._run = interpreter.invoke

    def invoke(self) -> None:
        self._reset()
        self._run()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._interpreter, name)


def refusal_class(text: str) -> str:
    return "UnsupportedOp" if any(m in text for m in UNSUPPORTED_OP_MARKERS) else "InvalidModel"


def one_line(exc: Exception) -> str:
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


def headroom(limit_mb: int) -> int:
    """Address space left under the limit (RLIMIT_AS counts VmSize)."""
    for line in (read_file("/proc/self/status") or "").splitlines():
        if line.startswith("VmSize:"):
            return int(limit_mb) * 2**20 - int(line.split()[1]) * 1024
    return int(limit_mb) * 2**20


def invoke_or_fail(interpreter: Any) -> None:
    try:
        interpreter.invoke()
    except (ValueError, RuntimeError) as exc:
        raise JobFailed("InvokeFailed", f"invoke() failed: {one_line(exc)}") from None
