"""What a deploy sends: the model, the evaluation data and the host's reference outputs, staged as files.

From a run directory of ``edgepipe optimize`` it takes ``model.tflite`` and ``eval.npz``; from files it takes
any ``.tflite`` and an ``.npz`` (``x``/``y``, ``x_test``/``y_test``, or ``x_0``/``y_0``... for several inputs and
outputs, in the interpreter's order; no ``y`` for reconstruction). The host runs the same model on the same
data with its own LiteRT interpreter first: that accuracy is what the board's must equal, and the raw outputs
go to the board so the agent can report agreement output by output.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe.data import EVAL_DATA, infer_task, read_eval_data, write_eval_data
from edgepipe.errors import ConfigError, ConformanceError
from edgepipe.labels import check_targets
from edgepipe.provenance import sha256_file
from edgepipe.run_models import read_optimize_record
from edgepipe.rundir import MARKER


@dataclass(frozen=True)
class Staged:
    path: Path
    sha256: str
    suffix: str

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass(frozen=True)
class DeployInputs:
    model: Staged
    data: Staged | None
    reference: Staged | None
    samples: int
    host_accuracy: float | None  # classifiers only
    host: dict[str, Any] | None  # the agent's result on this machine
    run_dir: Path | None
    source: dict[str, Any]
    task: str | list[str] | None = None  # from the run's recipe, or inferred from the data; a list: per output
    host_score: dict[str, Any] | None = None  # the host agent's "accuracy" block: metric, value, per_output ...
    notes: tuple[str, ...] = ()  # what the user should know about how the data is read (an inferred task)


def resolve_sources(
    run_dir: Path | None, model: Path | None, data: Path | None
) -> tuple[Path, Path | None, Path | None]:
    """(model file, data file, run directory) from the command line's choices, with clear errors."""
    if run_dir is not None and model is not None:
        raise ConfigError("give either a run directory or --model, not both")
    if run_dir is None and model is None:
        raise ConfigError(
            "nothing to deploy", hint="pass a run directory of 'edgepipe optimize', or --model m.tflite --data eval.npz"
        )
    if run_dir is not None:
        if not (run_dir / MARKER).is_file():
            raise ConfigError(
                f"{run_dir} is not a run directory of 'edgepipe optimize' (no {MARKER})",
                hint="pass the --out directory of an optimize run, or use --model",
            )
        read_optimize_record(run_dir)  # a damaged or foreign optimize.json is a clear error, not a traceback
        if not (run_dir / "model.tflite").is_file():
            raise ConfigError(f"{run_dir} has no model.tflite", hint="re-run edgepipe optimize into it")
        eval_file = run_dir / EVAL_DATA
        if data is None and not eval_file.is_file():
            raise ConfigError(
                f"{run_dir} has no {EVAL_DATA} (written by edgepipe optimize since the deploy release)",
                hint="re-run edgepipe optimize, or pass --data eval.npz",
            )
        return run_dir / "model.tflite", data or eval_file, run_dir
    assert model is not None
    if not model.is_file():
        raise ConfigError(f"--model {model}: file not found")
    if data is not None and not data.is_file():
        raise ConfigError(f"--data {data}: file not found")
    return model, data, None


def stage(
    model_file: Path,
    data_file: Path | None,
    run_dir: Path | None,
    staging: Path,
    eval_samples: int | None,
    task: str | list[str] | None = None,
) -> DeployInputs:
    """Stage the files to upload in ``staging`` and evaluate the model on the host first.

    The host evaluation runs the same agent, sandboxed, with the host's own runtime (a model from elsewhere
    never runs inside edgepipe's process). If the host cannot run the model either, it is still sent: how the
    board's runtime reacts is what the user asked for, and the agent classifies it there.

    ``task`` (``deploy --task``): how to score each output, instead of the run's recipe or the data's types.
    """
    model = Staged(model_file, sha256_file(model_file), ".tflite")
    _refuse_broken_quantization(model_file)
    source: dict[str, Any] = {"model": str(model_file), "run_dir": str(run_dir) if run_dir else None}
    given, notes = task, []
    if run_dir is not None:
        optimize = read_optimize_record(run_dir)
        source["recipe"] = optimize.get("recipe", {}).get("name")
        source["optimize_accuracy"] = optimize.get("final", {}).get("accuracy")
        task = optimize.get("recipe", {}).get("task", "classification")
        task = None if isinstance(task, dict) else task  # by output name: the agent infers it per output
        if data_file is not None and data_file.resolve() == (run_dir / EVAL_DATA).resolve():
            task = optimize.get("eval_data", {}).get("task", task)  # per output in the interpreter's order
    if given is not None:
        task, source["task_from"] = given, "--task"
    if data_file is None:
        return DeployInputs(model, None, None, 0, None, None, run_dir, source, task)
    x, y = read_eval_data(data_file)
    if eval_samples is not None:
        x, y = tuple(a[:eval_samples] for a in x), tuple(a[:eval_samples] for a in y)
    if given is not None:
        y, checked = _as_tasks(given, y, data_file, _output_widths(model_file))
        notes += checked
    elif task is None:
        widths = _output_widths(model_file)
        task = infer_task(y, widths)
        source["task_from"] = "data types"
        notes.append(_inferred(task, y, widths))
    else:
        source["task_from"] = "recipe"
    data_path = staging / "eval.npz"
    info = write_eval_data(data_path, x, y)
    data = Staged(data_path, info["sha256"], ".npz")
    source["data"] = str(data_file)
    host = _host_run(model_file, data_path, staging / "reference.npz", task)
    samples = len(x[0])
    if host["status"] != "ok":
        source["host_problem"] = f"{host['error']['class']}: {host['error']['message']}"
        return DeployInputs(model, data, None, samples, None, host, run_dir, source, task, None, tuple(notes))
    reference = Staged(staging / "reference.npz", sha256_file(staging / "reference.npz"), ".npz")
    score = host["accuracy"]
    return DeployInputs(
        model, data, reference, samples, score.get("accuracy"), host, run_dir, source, task, score, tuple(notes)
    )


def _output_widths(model_file: Path) -> list[int | None]:
    """The last axis of each of the model's outputs (its classes, for a classifier); none if unreadable."""
    from edgepipe.tflite_model import TfliteModel

    try:
        model = TfliteModel.read(model_file)
    except Exception:  # the host run names what is wrong with the file
        return []
    return [model.tensors[i].shape[-1] if model.tensors[i].shape else None for i in model.outputs]


def _inferred(task: str | list[str], y: tuple[Any, ...], widths: list[int | None]) -> str:
    """Say how the data set the task, and how to say otherwise: integer targets that are values (a count, an
    age) and fit the output's classes would be scored as class labels."""
    if not y:
        return "scored as reconstruction: the data has no y (each output against the input)"
    kinds = [task] * len(y) if isinstance(task, str) else task
    read = []
    for index, (target, kind) in enumerate(zip(y, kinds, strict=True)):
        label = "y" if len(y) == 1 else f"y_{index}"
        if target.dtype.kind not in "iub":
            read.append(f"{label} (floats) as {kind}")
        elif kind == "regression":  # integers read as values: they do not fit the output (infer_task)
            width = widths[index] if index < len(widths) else None
            read.append(
                f"{label} (integers {int(target.min())} to {int(target.max())}, not class indices of an output "
                f"{width} wide) as regression"
            )
        else:
            read.append(f"{label} (integers) as {kind}")
    other = "regression" if "classification" in kinds else "classification"
    return f"scored by the data: {', '.join(read)}; --task says otherwise (e.g. --task {other})"


def _as_tasks(
    task: str | list[str], y: tuple[Any, ...], data_file: Path, widths: list[int | None]
) -> tuple[tuple[Any, ...], list[str]]:
    """The targets checked for the tasks ``deploy --task`` gave: one task for every output or one per target
    array; class labels must be integers (one-hot rows are read as indices, with a note) that the output can
    answer (below its width; 0 or 1 for a one-unit head), values finite."""
    kinds = [task] * max(len(y), 1) if isinstance(task, str) else list(task)
    if "reconstruction" in kinds:
        if kinds != ["reconstruction"] * len(kinds) or y:
            raise ConfigError(
                f"--task reconstruction scores each output against the model's input, but {data_file.name} has "
                f"{len(y)} target array{'s' if len(y) != 1 else ''} (y)",
                hint="drop y from the file for an autoencoder, or give the task its targets are for",
            )
        return y, []
    if not y:
        raise ConfigError(
            f"--task {','.join(kinds)} needs targets, but {data_file.name} has no y",
            hint="add y (or y_0, y_1, ... per output) to the file, or use --task reconstruction for an autoencoder",
        )
    if len(kinds) != len(y):
        raise ConfigError(
            f"--task lists {len(kinds)} tasks but {data_file.name} has {len(y)} target "
            f"array{'s' if len(y) != 1 else ''}",
            hint="give one task for every output, or one per target array in the interpreter's output order",
        )
    checked, notes = [], []
    for index, (target, kind) in enumerate(zip(y, kinds, strict=True)):
        label = "y" if len(y) == 1 else f"y_{index}"
        array, note = check_targets(target, label, kind, f"--data {data_file.name}", None, label, len(y) > 1)
        width = widths[index] if index < len(widths) else None
        if kind == "classification" and width is not None and array.size and int(array.max()) >= max(width, 2):
            raise ConfigError(
                f"--task classification: {label} holds labels up to {int(array.max())}, but the model's output "
                f"{index} is {width} wide" + (" (a yes/no head answers 0 or 1)" if width == 1 else ""),
                hint="if these are values (a count, a score), use --task regression",
            )
        checked.append(array)
        notes += [note] if note else []
    return tuple(checked), notes


def _host_run(model_file: Path, data_file: Path, outputs: Path, task: str) -> dict[str, Any]:
    """Accuracy and raw outputs on this machine, through the agent (one timed run: only outputs matter)."""
    from edgepipe.config.target import MeasureSettings, Target
    from edgepipe.deployment.agent import AGENT_SOURCE
    from edgepipe.deployment.job import binary_thresholds, build_job, run_job, stateful
    from edgepipe.transport.local import LocalTransport

    host = Target(name="host", transport="local")
    measure = MeasureSettings(warmup_runs=0, runs=1, min_seconds=0, max_runs=1, time_limit_s=600)
    model = str(model_file.resolve())
    job = build_job(
        host, measure, model, str(data_file.resolve()), None, str(outputs.resolve()), task=task,
        stateful=stateful([(model_file, model)]), thresholds=binary_thresholds(model_file),
    )  # fmt: skip
    result = run_job(LocalTransport(), sys.executable, str(AGENT_SOURCE), job, deadline_s=900)
    result.pop("timing", None)  # one run says nothing about speed
    return result


def _refuse_broken_quantization(model_file: Path) -> None:
    """A NaN, infinite, zero or negative quantization scale makes a model run, and be equally wrong on the host
    and the board: no check downstream can see it. Refuse it before anything is sent (exit 5)."""
    from edgepipe.convert import conformance
    from edgepipe.tflite_model import TfliteModel

    try:
        parsed = TfliteModel.read(model_file)
    except Exception:
        return
    bad = conformance.check(parsed).bad_scales
    if bad:
        where = "; ".join(f"{f.tensors[0]} (op #{f.op_index} {f.op}): {f.detail}" for f in bad[:3])
        raise ConformanceError(
            f"{model_file}: {len(bad)} tensor(s) with an unusable quantization scale: {where}",
            hint="the converter or a tool that edited the file broke its quantization; convert the model again",
        )
