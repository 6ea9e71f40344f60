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
    model_file: Path, data_file: Path | None, run_dir: Path | None, staging: Path, eval_samples: int | None
) -> DeployInputs:
    """Stage the files to upload in ``staging`` and evaluate the model on the host first.

    The host evaluation runs the same agent, sandboxed, with the host's own runtime (a model from elsewhere
    never runs inside edgepipe's process). If the host cannot run the model either, it is still sent: how the
    board's runtime reacts is what the user asked for, and the agent classifies it there.
    """
    model = Staged(model_file, sha256_file(model_file), ".tflite")
    _refuse_broken_quantization(model_file)
    source: dict[str, Any] = {"model": str(model_file), "run_dir": str(run_dir) if run_dir else None}
    task = None
    if run_dir is not None:
        optimize = read_optimize_record(run_dir)
        source["recipe"] = optimize.get("recipe", {}).get("name")
        source["optimize_accuracy"] = optimize.get("final", {}).get("accuracy")
        task = optimize.get("recipe", {}).get("task", "classification")
        task = None if isinstance(task, dict) else task  # by output name: the agent infers it per output
        if data_file is not None and data_file.resolve() == (run_dir / EVAL_DATA).resolve():
            task = optimize.get("eval_data", {}).get("task", task)  # per output in the interpreter's order
    if data_file is None:
        return DeployInputs(model, None, None, 0, None, None, run_dir, source, task)
    x, y = read_eval_data(data_file)
    if eval_samples is not None:
        x, y = tuple(a[:eval_samples] for a in x), tuple(a[:eval_samples] for a in y)
    task = task or infer_task(y)
    data_path = staging / "eval.npz"
    info = write_eval_data(data_path, x, y)
    data = Staged(data_path, info["sha256"], ".npz")
    source["data"] = str(data_file)
    host = _host_run(model_file, data_path, staging / "reference.npz", task)
    samples = len(x[0])
    if host["status"] != "ok":
        source["host_problem"] = f"{host['error']['class']}: {host['error']['message']}"
        return DeployInputs(model, data, None, samples, None, host, run_dir, source, task)
    reference = Staged(staging / "reference.npz", sha256_file(staging / "reference.npz"), ".npz")
    score = host["accuracy"]
    return DeployInputs(model, data, reference, samples, score.get("accuracy"), host, run_dir, source, task, score)


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
