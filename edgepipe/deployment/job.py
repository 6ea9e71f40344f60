"""One agent job: build it (protocol ``edgepipe.job/1``), run it through a transport, read its result.

The job goes to the agent on stdin; its result comes back on stdout and its progress events on stderr, read
line by line while it runs. A result the agent could not produce (no JSON, a foreign protocol) is an
AgentError: the board or the agent is broken, not the model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edgepipe.config.target import MeasureSettings, Target
from edgepipe.errors import AgentError
from edgepipe.progress import Progress
from edgepipe.transport.base import Transport

JOB_PROTOCOL = "edgepipe.job/1"
RESULT_PROTOCOL = "edgepipe.result/1"


def build_job(
    target: Target,
    measure: MeasureSettings,
    model: str,
    data: str | None = None,
    reference: str | None = None,
    outputs: str | None = None,
    *,
    baseline: str | None = None,
    task: str | list[str] | None = None,
    profile: dict[str, Any] | None = None,
    stateful: list[str] | None = None,
    thresholds: list[float | None] | None = None,
) -> dict[str, Any]:
    job = {
        "protocol": JOB_PROTOCOL,
        "model": model,
        "data": data,
        "reference": reference,
        "outputs": outputs,
        "runtime": target.runtime,
        "threads": target.threads,
        "xnnpack": target.xnnpack,
        "warmup_runs": measure.warmup_runs,
        "runs": measure.runs,
        "min_seconds": measure.min_seconds,
        "max_runs": measure.max_runs,
        "repeats": measure.repeats,
        "time_limit_s": measure.time_limit_s,
        "memory_limit_mb": measure.memory_limit_mb,
    }
    if baseline is not None:  # only then: an older agent on the board would refuse the field
        job["baseline"] = baseline
    if task is not None:
        job["task"] = task
    if profile is not None:
        job["profile"] = {**profile, "min_seconds": measure.profile_seconds, "min_rounds": 20}
    if stateful:  # models whose variable tensors the agent resets before each invoke (agent 1.7)
        job["stateful"] = stateful
    if isinstance(task, list) and thresholds:  # a mixed model's: only its class outputs answer yes or no
        thresholds = [t if kind == "classification" else None for t, kind in zip(thresholds, task, strict=False)]
    classifier = task == "classification" or isinstance(task, list)
    if classifier and thresholds and any(t is not None for t in thresholds):  # binary outputs (agent 1.8)
        job["thresholds"] = thresholds
    return job


# Operators that pass an output through without changing which side of a threshold it is on.
_PASSING = frozenset({"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE"})


def binary_thresholds(local: Path | bytes | None) -> list[float | None] | None:
    """Per output of a classifier model, the value above which a yes/no answer is yes: 0.5 where a LOGISTIC
    (sigmoid) produces the output and 0 for logits; None after a SOFTMAX. The agent uses it where an answer is
    one value (``answer_width`` 1: a binary classifier or mask, a multi-label head with multi-hot labels), which
    only the labels tell. None when no output could have one, or this machine cannot read the model (the agent
    classifies it)."""
    from edgepipe.errors import ModelError
    from edgepipe.tflite_model import TfliteModel

    if local is None:
        return None
    try:
        model = TfliteModel.read(local)
    except (ModelError, OSError):
        return None
    producers = {tensor: op for op in model.ops for tensor in op.outputs}
    found: list[float | None] = []
    for index in model.outputs:
        op = producers.get(index)
        while op is not None and op.name in _PASSING and op.inputs:
            op = producers.get(op.inputs[0])
        name = op.name if op is not None else ""
        found.append(None if name == "SOFTMAX" else 0.5 if name == "LOGISTIC" else 0.0)
    return found if any(t is not None for t in found) else None


def stateful(models: Iterable[tuple[Path | bytes | None, str]]) -> list[str]:
    """Of (local copy, path on the board) pairs, the board paths of the models with variable tensors, which the
    agent resets before each invoke. A model this machine cannot read is the agent's to classify."""
    from edgepipe.errors import ModelError
    from edgepipe.tflite_model import TfliteModel

    found = []
    for local, remote in models:
        try:
            if local is not None and TfliteModel.read(local).stateful:
                found.append(remote)
        except (ModelError, OSError):
            continue
    return found


def run_job(
    transport: Transport,
    python: str,
    agent_path: str,
    job: Mapping[str, Any],
    deadline_s: float,
    progress: Progress | None = None,
) -> dict[str, Any]:
    progress = progress or Progress()

    def on_line(line: str) -> None:
        if line.startswith('{"event"'):
            with contextlib.suppress(ValueError):
                progress.agent_event(json.loads(line))

    outcome = transport.run(
        [python, agent_path, "run", "-"],
        timeout=deadline_s,
        stdin=json.dumps(job).encode(),
        on_stderr_line=on_line,
    )
    try:
        result = json.loads(outcome.stdout.strip().splitlines()[-1]) if outcome.stdout.strip() else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        tail = [ln for ln in outcome.stderr.strip().splitlines() if not ln.startswith('{"event"')][-3:]
        raise AgentError(
            f"the agent on {transport.describe()} gave no result (exit {outcome.returncode}): "
            + (" | ".join(tail) or "no output"),
            hint="run 'edgepipe targets check' for this target; 'edgepipe agent install' prepares a fresh board",
        )
    if result.get("protocol") != RESULT_PROTOCOL:
        raise AgentError(
            f"the agent answered with protocol {result.get('protocol')!r}; this edgepipe reads {RESULT_PROTOCOL}"
        )
    error = result.get("error") or {}
    if error.get("class") == "BadJob":
        raise AgentError(f"the agent refused the job: {error.get('message')}")
    return result
