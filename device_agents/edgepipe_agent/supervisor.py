"""The supervisor: runs the job in sandboxed children, one after the other, each with a wall-time and address-space
limit, and classifies however each ended (a result, a crash, a timeout, the memory limit)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from edgepipe_agent.runtime import emit
from edgepipe_agent.timing import summarize

OUT_OF_MEMORY_MARKERS = ("std::bad_alloc", "MemoryError", "out of memory")
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}
# What Python runs to start the child: the agent's .pyz (this module is at <agent>.pyz/edgepipe_agent/), or in a
# source checkout the device_agents/ folder, which runs the same way.
AGENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        emit("phase", phase="repeat", repeat=index + 1, repeats=job["repeats"])
        again = sandboxed(light)
        if again["status"] != "ok":
            return {**result, "status": "error", "error": again["error"], "sandbox": again["sandbox"]}
        repeats.append(_repeat(again))
    pooled = [sample for repeat in repeats for sample in repeat["samples_ms"]]
    result["timing"].update({"repeats": repeats, "samples_ms": pooled, "latency_ms": summarize(pooled)})
    if job["baseline"]:
        result["timing"]["baseline"] = _paired(job, light)
    if job["profile"]:
        emit("phase", phase="profile")
        again = sandboxed({**light, "_profile": True})
        # a profile that fails (a window the runtime refuses, the memory of many interpreters) leaves the
        # measurement standing: the error goes with the profile
        result["profile"] = again["profile"] if again["status"] == "ok" else {"error": again["error"]}
    return result


def _paired(job: dict[str, Any], light: dict[str, Any]) -> dict[str, Any]:
    processes: list[dict[str, Any]] = []
    error = None
    for index in range(int(job["repeats"])):
        emit("phase", phase="paired", repeat=index + 1, repeats=job["repeats"])
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
    command = [*_launcher(), sys.executable, "-I", AGENT, "_sandbox"]
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


def terminate(signum: int, _frame: Any) -> None:
    """Deadline or hang-up from the host: the child must not outlive us."""
    for child in _CHILDREN:
        if child.poll() is None:
            child.kill()
    sys.exit(128 + signum)
