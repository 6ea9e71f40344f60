"""The Python API: ``edgepipe.optimize``, ``deploy``, ``report`` and ``compare``, the CLI's commands as functions.

Each returns a result object and raises the exception tree of ``edgepipe.errors`` (every error an
``EdgepipeError`` with ``message``, ``hint`` and the CLI's ``exit_code``). The CLI is a thin layer over these:
it adds progress output, tables and exit codes. Importing edgepipe imports neither TensorFlow nor paramiko;
``optimize`` trains in a child process (so TensorFlow is loaded there, unless ``isolate=False``), ``deploy``
loads paramiko for SSH targets only.

Example::

    import edgepipe

    run = edgepipe.optimize("prune-qat", out="runs/pq")          # a preset, a file, a dict or a Recipe
    result = edgepipe.deploy(run.directory, target="local", runs=100)
    print(result.latency_ms["p50"], result.score)
    edgepipe.report(run.directory)                                 # report.html, report.md, report.json
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepipe.database import as_location
from edgepipe.errors import ConfigError, Inconclusive, RegressionFound
from edgepipe.tasks import parse_option

if TYPE_CHECKING:
    from edgepipe.config import Recipe
    from edgepipe.config.target import Target
    from edgepipe.deployment.stages import StageDeploy
    from edgepipe.progress import Progress
    from edgepipe.reporting.verdict import Check, VerdictSettings

PathLike = str | Path
# Data in place of a file: {"x_train": ..., "y_train": ..., "x_test": ..., "y_test": ...} (a value may be a list of
# arrays, one per input or output), ((x_train, y_train), (x_test, y_test)) as keras.datasets return it, or the four
# arrays (x_train, y_train, x_test, y_test).
DataArrays = Mapping[str, Any] | tuple[Any, ...]


# ------------------------------------------------------------------------------------------------------ optimize
@dataclass(frozen=True)
class OptimizeResult:
    """A finished ``optimize`` run: its directory and ``optimize.json``."""

    directory: Path
    record: dict[str, Any]

    @property
    def passed(self) -> bool:
        """Conformance and every gate held (a failed gate raises GateFailed; its ``outcome`` has the result)."""
        return bool(self.record["status"] == "passed")

    @property
    def model_path(self) -> Path:
        """The final full-integer model."""
        return self.directory / "model.tflite"

    @property
    def final(self) -> dict[str, Any]:
        """The final model's measurements: accuracy (or the task's metric), sizes, conformance."""
        return dict(self.record["final"])

    @property
    def stages(self) -> list[dict[str, Any]]:
        return list(self.record["stages"])


def optimize(
    recipe: PathLike | Mapping[str, Any] | Recipe,
    *,
    out: PathLike = "runs/latest",
    model: Any = None,
    data: PathLike | DataArrays | None = None,
    progress: Progress | None = None,
    isolate: bool = True,
) -> OptimizeResult:
    """Run a recipe: train the TF-MOT stages, convert to full-integer TFLite, check conformance and the gates.

    ``recipe`` is a YAML file, a preset's name (``"prune-qat"``), a dict with the YAML's structure, or a
    ``Recipe``. ``model`` replaces the recipe's ``model.source``: a Keras model object (built with tf_keras,
    which TF-MOT needs) or a ``.keras``/``.h5`` file; ``data`` replaces ``data.source``: an ``.npz`` file or
    arrays (see ``DataArrays``). Relative paths in a dict or Recipe are read from the current directory.
    ``out`` appears only when the run is complete. Raises ConfigError (bad input; nothing written),
    ModelError or ConversionError (training or converting failed), ConformanceError, GateFailed.
    """
    from edgepipe import shipped
    from edgepipe.optimization import pipeline

    with tempfile.TemporaryDirectory(prefix="edgepipe-api-") as scratch:
        recipe_file, base_dir = _recipe_file(recipe, model, data, Path(scratch))
        prepared = pipeline.prepare(shipped.recipe_path(recipe_file), base_dir)
        outcome = pipeline.run(prepared, Path(out), progress, isolate=isolate)
    return OptimizeResult(outcome.directory, outcome.result)


def _recipe_file(
    recipe: PathLike | Mapping[str, Any] | Recipe, model: Any, data: PathLike | DataArrays | None, scratch: Path
) -> tuple[PathLike, Path | None]:
    """The recipe as a file the optimizing child process can read, and the folder its relative paths start at."""
    import yaml

    from edgepipe.config import Recipe
    from edgepipe.config.loading import substitute_environment, validate

    if isinstance(recipe, str | Path) and model is None and data is None:
        return recipe, None
    if isinstance(recipe, str | Path):
        from edgepipe import shipped
        from edgepipe.config.loading import read_yaml

        path = shipped.recipe_path(recipe)
        document, base_dir = dict(read_yaml(path)), path.resolve().parent
    elif isinstance(recipe, Recipe):
        document, base_dir = recipe.model_dump(mode="json", exclude_unset=True), Path.cwd()
    elif isinstance(recipe, Mapping):
        document, base_dir = dict(recipe), Path.cwd()
    else:
        raise ConfigError(f"recipe must be a path, a preset name, a dict or a Recipe, not {type(recipe).__name__}")
    if model is not None:
        document["model"] = {**dict(document.get("model") or {}), "source": _model_source(model, scratch)}
        own = _class_modules(model)
        if own:  # the model's own layer classes, imported by the optimizing process as a recipe names them
            listed = list(document["model"].get("custom_objects") or [])
            document["model"]["custom_objects"] = listed + [m for m in own if m not in listed]
    if data is not None:
        document["data"] = {"source": _data_source(data, scratch)}
    # Name a wrong field in the caller's terms, before any file is written.
    validate(substitute_environment(document, "recipe"), Recipe, "recipe")
    file = scratch / "recipe.yaml"
    file.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return file, base_dir


def _model_source(model: Any, scratch: Path) -> str:
    if isinstance(model, str | Path):
        return str(Path(model).resolve())
    if not hasattr(model, "save") or not hasattr(model, "layers"):
        raise ConfigError(f"model must be a Keras model or a file, not {type(model).__name__}")
    if not type(model).__module__.startswith("tf_keras"):
        raise ConfigError(
            f"the model is a {type(model).__module__}.{type(model).__name__}; TF-MOT needs a Keras 2 (tf_keras) model",
            hint="build it with edgepipe.keras_compat.keras() (or tf_keras), or pass the saved .keras/.h5 file",
        )
    path = scratch / "model.keras"
    model.save(path)
    return str(path)


def _class_modules(model: Any) -> list[str]:
    """The modules defining the model's own (non-Keras) classes, which the optimizing process must import to
    read the saved model. A class defined in ``__main__`` (a notebook, a script) cannot be imported there."""
    from edgepipe.custom_objects import own_classes

    modules: list[str] = []
    for cls in own_classes(model):
        if cls.__module__ == "__main__":
            raise ConfigError(
                f"the model's layer class {cls.__name__} is defined in __main__ (a notebook or the script itself), "
                "which the optimizing process cannot import",
                hint="move the class into a module (mylayers.py) and import it from there",
            )
        if cls.__module__ not in modules:
            modules.append(cls.__module__)
    return modules


def _data_source(data: PathLike | DataArrays, scratch: Path) -> str:
    import numpy as np

    if isinstance(data, str | Path):
        return str(Path(data).resolve())
    if isinstance(data, Mapping):
        named = dict(data)
    elif isinstance(data, tuple) and len(data) == 2 and all(isinstance(p, tuple) and len(p) == 2 for p in data):
        (x_train, y_train), (x_test, y_test) = data
        named = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    elif isinstance(data, tuple) and len(data) == 4:
        named = dict(zip(("x_train", "y_train", "x_test", "y_test"), data, strict=True))
    else:
        raise ConfigError(
            "data must be an .npz file, a dict of arrays, ((x_train, y_train), (x_test, y_test)) "
            "or (x_train, y_train, x_test, y_test)"
        )
    arrays: dict[str, Any] = {}
    for key, value in named.items():
        if isinstance(value, list | tuple):  # one array per input or output: x_train_0, x_train_1, ...
            arrays.update({f"{key}_{index}": np.asarray(part) for index, part in enumerate(value)})
        elif value is not None:
            arrays[key] = np.asarray(value)
    path = scratch / "data.npz"
    np.savez(path, **arrays)
    return str(path)


# -------------------------------------------------------------------------------------------------------- deploy
@dataclass(frozen=True)
class DeployResult:
    """One model measured on one board: the deploy record (``deploy-TARGET.json``) and where it was written."""

    record: dict[str, Any]
    path: Path
    run_id: int | None = None  # in the results history, when it was recorded
    stages: list[StageDeploy] = field(default_factory=list)  # with ``stages=True``: the run's other models

    @property
    def passed(self) -> bool:
        return bool(self.record["status"] == "passed")

    @property
    def latency_ms(self) -> dict[str, float]:
        """p50, p90, p99, min, max, mean, std and count of the timed runs, in milliseconds."""
        return dict(self.record["device"]["timing"]["latency_ms"])

    @property
    def peak_memory_kb(self) -> int:
        """Peak resident memory (VmHWM) of the measuring process after the runs."""
        return int(self.record["device"]["memory"]["vmhwm_kb"]["after_runs"])

    @property
    def score(self) -> float | None:
        """The model's metric on the board (accuracy, or the error of a regression/reconstruction model)."""
        return (self.record["device"].get("accuracy") or {}).get("value")


def deploy(
    run: PathLike | None = None,
    *,
    target: str | Target = "local",
    model: PathLike | None = None,
    data: PathLike | None = None,
    out: PathLike | None = None,
    runs: int | None = None,
    min_seconds: float | None = None,
    repeats: int | None = None,
    eval_samples: int | None = None,
    deadline_s: float | None = None,
    history: PathLike | None = None,
    record: bool = True,
    tags: Sequence[str] = (),
    baseline: str | None = None,
    stages: bool = False,
    profile: bool = False,
    profile_seconds: float | None = None,
    progress: Progress | None = None,
    on_stage: Callable[[Any], None] | None = None,
    task: str | Sequence[str] | None = None,
) -> DeployResult:
    """Send a model to a board, measure latency, memory and accuracy there, and write the deploy record.

    ``run`` is a run directory of ``optimize`` (or give ``model``, any .tflite, with optional ``data``, an
    evaluation .npz). ``target`` is a target name, a target file or a ``Target``. ``runs``, ``min_seconds``,
    ``repeats`` and ``eval_samples`` override the target's measure settings. The run is recorded in the results
    history (``history``, default ``$EDGEPIPE_HISTORY``) unless ``record=False``. ``baseline`` (a tag, run id,
    result file or run directory) is timed in the same processes, for ``compare``. ``stages=True`` also measures
    the run's float and stage models (``DeployResult.stages``). ``profile=True`` measures every operator's time
    on the board too (``record["profile"]``: time, share, MACs, bytes, roofline bound), for at least
    ``profile_seconds`` (default: the target's ``measure.profile_seconds``; longer resolves faster operators).
    ``task`` scores the outputs by that task (``"regression"``, or one per output: ``"classification,regression"``)
    instead of the run's recipe or, for ``data`` given alone, the data's types (integer targets: class labels).
    Raises ConfigError, InfrastructureError (exit 10-17: the board, the link, the agent) or DeviceModelError (exit
    20-26: the model on the board).
    """
    from edgepipe.deployment import deploy as run_deploy
    from edgepipe.reporting.resolve import baseline_model
    from edgepipe.store import History

    chosen, measure = _board_settings(target, runs, min_seconds, repeats, eval_samples, deadline_s, profile_seconds)
    if stages and run is None:
        raise ConfigError("stages=True (--stages) needs a run directory of 'edgepipe optimize', not a model file")
    scored_as = parse_option(task) if task is not None else None
    history_path = as_location(history)
    paired = baseline_model(baseline, chosen.name, history_path) if baseline is not None else None
    store = History(history_path) if record else None
    try:
        outcome = run_deploy(
            chosen,
            run_dir=Path(run) if run is not None else None,
            model=Path(model) if model is not None else None,
            data=Path(data) if data is not None else None,
            out=Path(out) if out is not None else None,
            measure=measure,
            deadline_s=deadline_s,
            progress=progress,
            history=store,
            tags=tags,
            baseline=paired,
            profile=profile,
            task=scored_as,
        )
    finally:
        if store is not None:
            store.close()
    done: list[StageDeploy] = []
    if stages:
        assert run is not None
        done = deploy_stages(
            run, target=chosen, runs=runs, min_seconds=min_seconds, repeats=repeats, eval_samples=eval_samples,
            deadline_s=deadline_s, history=history, record=record, tags=tags, on_stage=on_stage, profile=profile,
            profile_seconds=profile_seconds,
        )  # fmt: skip
    return DeployResult(outcome.result, outcome.path, outcome.run_id, done)


def deploy_stages(
    run: PathLike,
    *,
    target: str | Target = "local",
    runs: int | None = None,
    min_seconds: float | None = None,
    repeats: int | None = None,
    eval_samples: int | None = None,
    deadline_s: float | None = None,
    history: PathLike | None = None,
    record: bool = True,
    tags: Sequence[str] = (),
    on_stage: Callable[[Any], None] | None = None,
    profile: bool = False,
    profile_seconds: float | None = None,
) -> list[StageDeploy]:
    """Measure the float model and every stage's model of a run (what ``deploy(stages=True)`` adds), each into
    ``deploy-TARGET.json`` next to its model. A stage whose model fails on the board is returned with its
    ``error``; the others still run. ``on_stage`` is called with each stage before it is measured. With
    ``profile``, every stage is profiled operator by operator too."""
    from edgepipe.deployment.stages import deploy_stages as run_stages
    from edgepipe.store import History

    chosen, measure = _board_settings(target, runs, min_seconds, repeats, eval_samples, deadline_s, profile_seconds)
    store = History(as_location(history)) if record else None
    try:
        return run_stages(chosen, Path(run), measure=measure, deadline_s=deadline_s, history=store, tags=tags,
                          on_stage=on_stage, profile=profile)  # fmt: skip
    finally:
        if store is not None:
            store.close()


def _board_settings(
    target: str | Target,
    runs: int | None,
    min_seconds: float | None,
    repeats: int | None,
    eval_samples: int | None,
    deadline_s: float | None,
    profile_seconds: float | None = None,
) -> tuple[Target, Any]:
    """The target, and its measure settings with the caller's overrides, validated like the target file."""
    import math

    from edgepipe.config.loading import validate
    from edgepipe.config.target import MeasureSettings
    from edgepipe.config.target import Target as TargetModel
    from edgepipe.targets import load_target

    chosen = target if isinstance(target, TargetModel) else load_target(str(target))
    if deadline_s is not None and not (math.isfinite(deadline_s) and deadline_s > 0):
        raise ConfigError(f"deadline {deadline_s} is not a positive number of seconds")
    overrides = {"runs": runs, "min_seconds": min_seconds, "eval_samples": eval_samples, "repeats": repeats,
                 "profile_seconds": profile_seconds}  # fmt: skip
    settings = {name: value for name, value in overrides.items() if value is not None}
    return chosen, validate({**chosen.measure.model_dump(), **settings}, MeasureSettings, "measure settings")


# -------------------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class ReportResult:
    """The report's document (schema ``edgepipe.report/5``) and the files written."""

    document: dict[str, Any]
    json: Path
    html: Path | None
    markdown: Path | None


def report(
    run: PathLike, *, html: PathLike | None = None, markdown: PathLike | None = None, json: PathLike | None = None
) -> ReportResult:
    """Report a run and every deploy of its models. With no path given, writes report.html, report.md and
    report.json into the run directory; otherwise the JSON (always: ``json`` or RUN/report.json) and what is
    asked for. All files are replaced, or none (ConfigError names the path that could not be written)."""
    from edgepipe.reporting.build import build_report

    run_dir = Path(run)
    if html is None and markdown is None and json is None:
        html, markdown = run_dir / "report.html", run_dir / "report.md"
    files = build_report(
        run_dir,
        json_out=Path(json) if json is not None else run_dir / "report.json",
        html=Path(html) if html is not None else None,
        markdown=Path(markdown) if markdown is not None else None,
    )
    return ReportResult(files.document, files.json, files.html, files.markdown)


# ------------------------------------------------------------------------------------------------------- compare
@dataclass(frozen=True)
class Comparison:
    """The regression verdict of a candidate against a baseline on one target."""

    status: str  # "pass" | "regression" | "inconclusive"
    checks: list[Check]
    changed: list[tuple[str, Any, Any]]  # what differs besides the numbers (runtime, board state, recipe ...)
    target: str
    baseline: str  # how each side was found: "tag main -> run 12", "runs/x/deploy-local.json" ...
    candidate: str
    settings: VerdictSettings
    candidate_record: dict[str, Any]
    layers: dict[str, Any] | None = None  # both sides deployed with --profile: the per-operator diff

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "edgepipe.verdict/1",
            "target": self.target,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "settings": self.settings.model_dump(),
            "status": self.status,
            "checks": [check.__dict__ for check in self.checks],
            "changed": [{"field": f, "baseline": b, "candidate": c} for f, b, c in self.changed],
            "layers": self.layers,
        }

    def raise_for_status(self) -> None:
        """RegressionFound (exit 7) for a regression, Inconclusive (exit 17) for no verdict; nothing on a pass."""
        if self.status == "regression":
            failed = [c for c in self.checks if c.status == "fail"]
            raise RegressionFound(
                "regression in " + ", ".join(f"{c.name} ({c.message})" for c in failed),
                hint="the candidate is worse than the baseline on this board; see the checks",
            )
        if self.status == "inconclusive":
            reasons = "; ".join(c.message for c in self.checks if c.status == "inconclusive")
            raise Inconclusive(
                f"no verdict: {reasons}",
                hint="measure both on the same board state (cooled, same governor and versions)",
            )


def compare(
    baseline: str,
    candidate: str,
    *,
    target: str | None = None,
    history: PathLike | None = None,
    junit: PathLike | None = None,
    json: PathLike | None = None,
    **thresholds: float,
) -> Comparison:
    """Judge a candidate deploy against a baseline on the same target (a latency test on paired or pooled
    samples, accuracy or error, size and memory growth, board state). Each side is a tag, a run id, a deploy
    result file or a run directory. ``thresholds`` are VerdictSettings fields (``alpha``, ``min_effect``,
    ``max_accuracy_drop``, ``max_error_increase``, ``max_size_growth``, ``max_memory_growth``). Returns the
    verdict without raising on a regression: call ``raise_for_status()`` for the CLI's behaviour."""
    from edgepipe.config.loading import validate
    from edgepipe.files import write_json
    from edgepipe.reporting.junit import write_junit
    from edgepipe.reporting.resolve import resolve_run
    from edgepipe.reporting.verdict import VerdictSettings
    from edgepipe.reporting.verdict import compare as judge

    settings = validate(thresholds, VerdictSettings, "compare settings")
    history_path = as_location(history)
    candidate_record, candidate_from = resolve_run(candidate, target, history_path)
    target = target or candidate_record["target"]["name"]
    baseline_record, baseline_from = resolve_run(baseline, target, history_path)
    verdict = judge(baseline_record, candidate_record, settings, (baseline_from, candidate_from))
    comparison = Comparison(
        verdict.status,
        verdict.checks,
        verdict.changed,
        target,
        baseline_from,
        candidate_from,
        settings,
        candidate_record,
        verdict.layers,
    )
    if junit is not None:
        write_junit(verdict, target, Path(junit))
    if json is not None:
        write_json(Path(json), comparison.to_dict())
    return comparison
