"""What a farm job does on the board it leased: deploy the model (and, with a baseline, the baseline first and
then the candidate timed against it in the same processes), and judge the pair.

Each model is staged once per farm run (``StagedModels``): the host's reference run, which evaluates the model
with this machine's interpreter, does not depend on the board, so a model measured on eight boards is evaluated
here once, not eight times.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepipe.config.target import Target
from edgepipe.database import Location
from edgepipe.deployment.inputs import DeployInputs, resolve_sources, stage
from edgepipe.errors import ConfigError, DeviceModelError, EdgepipeError, InfrastructureError
from edgepipe.progress import Progress
from edgepipe.provenance import sha256_file
from edgepipe.reporting.resolve import BaselineModel
from edgepipe.rundir import MARKER


@dataclass(frozen=True)
class FarmModel:
    """A model the farm measures: its label in the results (the run directory's or file's name), its files."""

    label: str
    model: Path
    data: Path | None
    run_dir: Path | None
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "model": str(self.model),
            "data": str(self.data) if self.data else None,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FarmModel:
        model = cls(
            raw["label"],
            Path(raw["model"]),
            Path(raw["data"]) if raw.get("data") else None,
            Path(raw["run_dir"]) if raw.get("run_dir") else None,
            raw["sha256"],
        )
        if not model.model.is_file() or sha256_file(model.model) != model.sha256:
            raise ConfigError(
                f"{model.model}: the model of {model.label!r} is missing or changed since the farm run started",
                hint="resume needs the same files; start a new farm run for a new model",
            )
        return model


def resolve_models(names: list[str], data: Path | None) -> list[FarmModel]:
    """Run directories of ``optimize`` or ``.tflite`` files (with ``--data``), each a row of the farm report."""
    if not names:
        raise ConfigError("no model to measure", hint="name run directories of 'edgepipe optimize' or .tflite files")
    models: list[FarmModel] = []
    for name in names:
        path = Path(name)
        is_run = path.is_dir() and (path / MARKER).is_file()
        model_file, data_file, run_dir = resolve_sources(path if is_run else None, None if is_run else path, data)
        label = path.name if is_run else path.stem
        if any(m.label == label for m in models):
            label = f"{label}-{len(models) + 1}"
        models.append(FarmModel(label, model_file.resolve(), data_file.resolve() if data_file else None,
                                run_dir.resolve() if run_dir else None, sha256_file(model_file)))  # fmt: skip
    return models


def resolve_baseline(name: str, history: Location | None) -> FarmModel:
    """The baseline's bytes must be on this machine: every board of every pool measures it next to the candidate.
    A run directory or .tflite file, or a tag or run id of the history whose model file is still here. It is
    evaluated on each candidate's data, so their accuracies compare."""
    from edgepipe.reporting.resolve import baseline_model

    found = baseline_model(name, "", history)
    if found.path is None:
        raise ConfigError(
            f"--baseline {name}: its model ({found.source}) is no longer on this machine",
            hint="name the baseline by its run directory or .tflite file (--baseline runs/main)",
        )
    run_dir = found.path.parent if (found.path.parent / MARKER).is_file() else None
    return FarmModel("baseline", found.path.resolve(), None, run_dir, found.sha256)


@dataclass
class StagedModels:
    """Each (model, evaluation subset) staged and evaluated on the host once, on first use, for all boards."""

    directory: Path
    _staged: dict[tuple[str, int | None, str | None], DeployInputs] = field(default_factory=dict)
    _locks: dict[tuple[str, int | None, str | None], threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def get(self, model: FarmModel, eval_samples: int | None, data: Path | None = None) -> DeployInputs:
        """``data`` evaluates the model on another model's data (a baseline on its candidate's)."""
        data = data or model.data
        key = (model.sha256, eval_samples, str(data) if data else None)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._staged:
                folder = self.directory / f"{model.sha256[:12]}-{eval_samples or 'all'}-{len(self._staged)}"
                folder.mkdir(parents=True, exist_ok=True)
                self._staged[key] = stage(model.model, data, model.run_dir, folder, eval_samples)
            return self._staged[key]


@dataclass(frozen=True)
class JobResult:
    outcome: str  # pass | regression | inconclusive | model-error
    exit_code: int
    summary: dict[str, Any]
    records: dict[str, dict[str, Any]]  # "candidate", and "baseline" when one was measured


def run_job(
    target: Target,
    model: FarmModel,
    baseline: FarmModel | None,
    staged: StagedModels,
    folder: Path,
    progress: Progress,
    thresholds: dict[str, float],
) -> JobResult:
    """Measure one model on one board. InfrastructureError propagates (the caller retries elsewhere); a model
    that fails on the board is a result (outcome model-error), never retried."""
    from edgepipe.deployment.runner import deploy_staged

    measure = target.measure
    records: dict[str, dict[str, Any]] = {}
    paired: BaselineModel | None = None
    try:
        if baseline is not None:
            progress.phase(f"baseline on {target.name}")
            base_inputs = staged.get(baseline, measure.eval_samples, model.data)
            base = deploy_staged(target, base_inputs, folder / f"baseline-{target.name}.json", progress=progress)
            records["baseline"] = base.result
            paired = BaselineModel(baseline.sha256, baseline.model, baseline.label)
        progress.phase(f"{model.label} on {target.name}")
        inputs = staged.get(model, measure.eval_samples)
        done = deploy_staged(target, inputs, folder / f"deploy-{target.name}.json", progress=progress, baseline=paired)
        records["candidate"] = done.result
    except InfrastructureError:
        raise
    except (DeviceModelError, ConfigError) as exc:  # the model (or the baseline) on this board, not the board
        role = "candidate" if "baseline" in records or baseline is None else "baseline"
        record = _failed_record(exc, folder, target)
        if record is not None:
            records[role] = record
        summary = {"message": exc.message, "error_class": type(exc).__name__, "failed": role}
        return JobResult("model-error", exc.exit_code, summary, records)
    summary = _summary(records["candidate"])
    if baseline is None:
        return JobResult("pass", 0, summary, records)
    return _judged(records, summary, thresholds)


def _failed_record(exc: EdgepipeError, folder: Path, target: Target) -> dict[str, Any] | None:
    """The deploy's failed record, when it wrote one (a model that failed on the board): kept with the job."""
    import json

    for name in (f"deploy-{target.name}.failed.json", f"baseline-{target.name}.failed.json"):
        file = folder / name
        if file.is_file():
            return dict(json.loads(file.read_text()))
    return None


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    from edgepipe.score_parts import error_metric, part

    device = record.get("device") or {}
    latency = (device.get("timing") or {}).get("latency_ms") or {}
    scored = device.get("accuracy") or {}
    error = error_metric(scored) if scored.get("per_output_metric") else None  # a mixed model's value outputs
    return {
        "p50_ms": latency.get("p50"),
        "peak_rss_kb": ((device.get("memory") or {}).get("vmhwm_kb") or {}).get("after_runs"),
        "accuracy": scored.get("accuracy"),
        "metric": scored.get("metric"),
        "value": scored.get("value"),
        "error_metric": error,
        "value_error": part(scored, error) if error else None,
        "model_bytes": (record.get("model") or {}).get("bytes"),
        "emulated": (device.get("board") or {}).get("emulated"),
    }


def _judged(records: dict[str, dict[str, Any]], summary: dict[str, Any], thresholds: dict[str, float]) -> JobResult:
    from edgepipe.config.loading import validate
    from edgepipe.errors import Inconclusive, RegressionFound
    from edgepipe.reporting.verdict import VerdictSettings, compare

    settings = validate(thresholds, VerdictSettings, "farm compare settings")
    verdict = compare(records["baseline"], records["candidate"], settings, ("baseline", "candidate"))
    summary = {**summary, "verdict": verdict.to_dict()}
    failed = [c for c in verdict.checks if c.status in ("fail", "inconclusive")]
    summary["message"] = "; ".join(f"{c.name}: {c.message}" for c in failed) or "no regression"
    code = {"pass": 0, "regression": RegressionFound.exit_code, "inconclusive": Inconclusive.exit_code}
    return JobResult(verdict.status, code[verdict.status], summary, records)
