"""The agent's wire protocol: the job it reads and the result it answers with, versioned, and the job's checks.

Job, protocol ``edgepipe.job/1``::

    protocol        "edgepipe.job/1" (required; any other value is refused with error class BadJob)
    model           path of the .tflite file on the board (required)
    data            path of an .npz with the evaluation samples, or null: ``x`` (float32 samples) and ``y``
                    (targets) for a model with one input and one output, else ``x_0, x_1, ...`` and ``y_0, ...``
                    in the order of the interpreter's input and output details; no ``y`` for reconstruction
    task            "classification" | "regression" | "reconstruction", a list of "classification" and
                    "regression" with one per output (a mixed model; agent 1.10), or null to infer it from the
                    data (integer targets: classification, float: regression, none: reconstruction)
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
    stateful        paths of the models (the model, the baseline, a profile's) whose variable tensors are reset
                    before each invoke, inside the timed region: a model converted from a Keras LSTM keeps its
                    state in them, and each inference starts from the zero state             (default [])
    thresholds      per output of the model, for a classifier with one unit (a binary one): it answers 1 above
                    this value (0.5 after a sigmoid, 0 for a logit); null for outputs of one unit per class
                    (argmax)                                                             (default null)
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
    accuracy        {samples, task, metric, value, per_output [...], accuracy, agreement: {top1,
                    top1_changed_margins, top1_discordant, max_abs_diff}}:
                    metric "accuracy" (top-1, classification), "mae" (mean absolute error, regression) or "mse"
                    (mean squared error of each output against its input, reconstruction); ``value`` is the
                    mean over the outputs; ``accuracy`` is ``value`` for a classifier, else null. A mixed model
                    (task per output) adds per_output_metric, one metric per output; its metric is "accuracy"
                    and its value the mean over its class outputs (agreement's lists: those outputs); agreement
                    (only with a reference): top1 (classifiers; else null), top1_changed_margins (classifiers:
                    per output, the host's margin for its answer over the board's, raw units, for each sample
                    whose answer changed, ascending; else null), top1_discordant (classifiers: per output,
                    [host right and board wrong, host wrong and board right]; else null),
                    top1_discordant_samples (classifiers, agent 1.11: [samples the host got more answers of right
                    than the board, fewer]; else null) and the largest difference of the raw output values
    sandbox         {pid, exit, signal, wall_s, stderr_tail}

"""

from __future__ import annotations

import json
from typing import Any

AGENT_VERSION = "1.11.0"
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
    "stateful": [],  # paths of models whose variable tensors are reset before each invoke (a fused LSTM's)
    "thresholds": None,  # per output: a binary classifier's threshold, or null (agent 1.8)
    "time_limit_s": 300.0,
    "memory_limit_mb": 2048,
}
MAX_THREADS = 1024  # the same bound as the host's target settings


class JobFailed(Exception):
    """A classified failure; becomes the result's ``error``."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message


TASKS = ("classification", "regression", "reconstruction")


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
    stateful = job.get("stateful", [])
    if not isinstance(stateful, list) or not all(isinstance(path, str) for path in stateful):
        raise JobFailed("BadJob", "stateful must be a list of model paths")
    thresholds = job.get("thresholds")
    if thresholds is not None and (
        not isinstance(thresholds, list)
        or not all(t is None or (isinstance(t, (int, float)) and not isinstance(t, bool)) for t in thresholds)
    ):
        raise JobFailed("BadJob", "thresholds must be a list of numbers or nulls, one per output, or null")
    merged = {**JOB_DEFAULTS, **job}
    task = merged["task"]
    mixed = isinstance(task, list) and task and all(kind in TASKS[:2] for kind in task)
    if task not in (None, *TASKS) and not mixed:
        raise JobFailed(
            "BadJob",
            f"task {task!r}: expected null, one of {', '.join(TASKS)}, or a list of classification and "
            "regression (one per output)",
        )
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
