"""``edgepipe optimize``: recipe -> float baseline -> stages in order -> full-integer model -> checks -> result.

Two phases, so that bad input costs a second and leaves nothing behind:

1. ``prepare`` reads and validates the recipe, resolves the model and data sources and loads and checks the
   data. Every problem here is a ConfigError naming the file and the field; no directory is created.
2. ``run`` trains and converts inside a ``RunDirectory``: ``--out`` appears only when the run is complete.

The result (``optimize.json``, schema ``edgepipe.optimize/1``) holds every stage's measurements, the recipe as
resolved, and the provenance of the tools and inputs.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe import models
from edgepipe.compiled_loss import canonical, compiled_loss
from edgepipe.config import Recipe, load_model, stage_name
from edgepipe.convert import conformance, weights
from edgepipe.convert.evaluate import IoOrder
from edgepipe.convert.tflite import refuse_unconvertible, to_float_tflite, to_int8_tflite
from edgepipe.data import EVAL_DATA, Dataset, load_dataset, write_checked, write_eval_data
from edgepipe.errors import ConfigError, ConformanceError, ConversionError, GateFailed, ModelError
from edgepipe.keras_compat import keras
from edgepipe.optimization import (
    channel_prune,
    cluster,
    distill_stage,
    gates,
    low_rank,
    measure,
    prune,
    ptq,
    qat,
    rewrite,
    saving,
    teachers,
    tf_functions,
)
from edgepipe.optimization.base import History, StageContext, StageOutcome
from edgepipe.optimization.one_pixel_pooling import flatten_one_pixel_pooling
from edgepipe.progress import Progress
from edgepipe.provenance import host, now, sha256_file, tool_versions
from edgepipe.rundir import MARKER, RunDirectory
from edgepipe.sources import EntryPoint, check_importable, resolve
from edgepipe.tasks import Task
from edgepipe.tflite_model import TfliteModel

SCHEMA = "edgepipe.optimize/1"
CHECKED_DATA = ".checked-data.npz"  # handed to the optimizing child inside the partial run directory
FINAL_MODEL = "model.tflite"

TECHNIQUES: dict[str, Callable[[Any, Any, StageContext], StageOutcome]] = {
    "channel_prune": channel_prune.apply,
    "distill": distill_stage.apply,
    "low_rank": low_rank.apply,
    "prune": prune.apply,
    "cluster": cluster.apply,
    "qat": qat.apply,
    "ptq": ptq.apply,
}


@dataclass(frozen=True)
class Prepared:
    """A recipe whose every input has been checked; nothing has been trained or written yet."""

    recipe: Recipe
    recipe_path: Path
    model_source: Path | EntryPoint
    data: Dataset
    base_dir: Path  # relative sources are read from here (the recipe's folder, unless the API says otherwise)


@dataclass(frozen=True)
class Outcome:
    result: dict[str, Any]
    directory: Path

    @property
    def passed(self) -> bool:
        return self.result["status"] == "passed"


def prepare(recipe_path: Path, base_dir: Path | None = None, data: Dataset | None = None) -> Prepared:
    """``base_dir``: where relative paths and factory modules of the recipe are found (default: its folder);
    ``data``: the data set as an earlier ``prepare`` checked it (the optimizing child gets it that way)."""
    file = str(recipe_path)
    recipe = load_model(recipe_path, Recipe)
    base = (base_dir or recipe_path.parent).resolve()
    model_source = resolve(
        recipe.model.source,
        base,
        file,
        "model.source",
        "a .keras or .h5 file, a Keras SavedModel directory, or module:function",
    )
    data_source = resolve(recipe.data.source, base, file, "data.source", "an .npz file or module:function")
    if isinstance(model_source, EntryPoint):
        model_source.check(file, "model.source")  # a wrong factory name fails now, without importing TF here
    for index, entry in enumerate(recipe.model.custom_objects):
        module, _, name = entry.partition(":")
        check_importable(module, name or None, base, file, f"model.custom_objects[{index}]", kind="object")
    teachers.check_files(recipe, base, file)
    if data is None:
        data = load_dataset(data_source, file, task=recipe.task)
    return Prepared(recipe, recipe_path, model_source, data, base)


def _loss_name(task: Task) -> str | list[str]:
    """The loss each output fine-tunes with, as optimize.json records it: one name, or one per output."""
    names = ["cross-entropy" if kind == "classification" else task.error_loss for kind in task.kinds]
    return names[0] if len(set(names)) == 1 else names


def _inline_nested_models(model: Any, sample: Any, recipe: Recipe, progress: Progress) -> tuple[Any, list[str]]:
    """The model with nested models' layers in its own graph (``rewrite.inline_nested_models``): TF-MOT's
    wrappers and channel pruning work on one flat graph. One that cannot be inlined stays nested when every
    stage is ptq (the converter takes nested models); otherwise it is an error naming it."""
    try:
        flat, lines = rewrite.inline_nested_models(model, sample)
    except Exception as exc:  # a custom layer without get_config, or a mismatch: the model's own code speaks
        nested = [layer.name for layer in model.layers if isinstance(layer, keras().Model)]
        reason = exc.message if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
        if all(stage.kind == "ptq" for stage in recipe.stages):
            progress.note(f"the nested model(s) {nested} stay nested ({reason}); ptq converts them as they are")
            return model, []
        raise ModelError(
            f"model.source: the nested model(s) {nested} cannot be inlined into one graph, which the stages "
            f"need: {reason}",
            hint="build the model flat (keras.applications take input_tensor=...), or use only ptq stages",
        ) from None
    for line in lines:
        progress.note(line)
    return flat, lines


def resolved_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe with defaults filled in and each stage's effective fine-tuning settings."""
    document = recipe.model_dump(mode="json")
    for stage, raw in zip(recipe.stages, document["stages"], strict=True):
        raw["name"] = stage_name(stage)
        raw["fine_tune"] = recipe.fine_tune_for(stage).model_dump(mode="json") if stage.kind != "ptq" else None
    return document


def run(prepared: Prepared, out: Path, progress: Progress | None = None, isolate: bool = True) -> Outcome:
    """Optimize into ``out`` (which appears only when the run is complete) and check conformance and gates.

    With ``isolate`` (the default) training and conversion run in a child process (``isolation.py``): a crash
    in native code is then a ModelError or ConversionError naming the phase and the signal, and this process
    never imports TensorFlow. ``isolate=False`` runs them here (faster to start; a crash kills the caller).
    """
    progress = progress or Progress()
    directory = RunDirectory(out)
    with directory as work:
        if isolate:
            from edgepipe.optimization.isolation import run_isolated

            checked = work / CHECKED_DATA  # the child reads the data from here rather than loading it again
            write_checked(checked, prepared.data)
            try:
                result = run_isolated(prepared.recipe_path, work, progress, prepared.base_dir, checked)
            finally:
                checked.unlink(missing_ok=True)
        else:
            result = optimize_into(prepared, work, progress)
        report = result["final"]["conformance"]
        gate_rows = result["gates"]
        suffix = "" if result["status"] == "passed" else ".failed"
        (work / MARKER).write_text(json.dumps(result, indent=2) + "\n")
        final_dir = directory.commit(suffix)
    if not report["passed"]:
        float_ops = {finding["op"] for finding in report["float_ops"]}
        advice = [conformance.FLOAT_ONLY_OPS[op] for op in sorted(float_ops) if op in conformance.FLOAT_ONLY_OPS]
        raise ConformanceError(
            "the final model is not integer-only: " + "; ".join(_problems(report)[:5]),
            hint="; ".join([*advice, f"the run was kept in {final_dir} for inspection"]),
        )
    if result["status"] != "passed":
        failed = GateFailed(
            f"{prepared.recipe_path}: gates failed: {gates.describe_failures(gate_rows)}",
            hint=f"the run was kept in {final_dir} for inspection; "
            + gates.advice(gate_rows, prepared.data.test_samples),
        )
        failed.outcome = Outcome(result, final_dir)  # so that the CLI can still print what was measured
        raise failed
    return Outcome(result, final_dir)


def _problems(report: dict[str, Any]) -> list[str]:
    index = set(report.get("index_inputs", []))
    inputs = [t for i, t in enumerate(report["input_types"]) if i not in index]
    lines = [
        f"{kind} types {types}"
        for kind, types in (("input", inputs), ("output", report["output_types"]))
        if any(t != report["io_type"] for t in types)
    ]
    for finding in [*report["float_ops"], *report["islands"], *report.get("bad_scales", [])]:
        lines.append(f"{finding['op']} #{finding['op_index']} ({', '.join(finding['tensors'][:2])})")
    return lines


def optimize_into(prepared: Prepared, work: Path, progress: Progress) -> dict[str, Any]:
    """Train, convert and measure every stage into the directory ``work``; returns optimize.json's content."""
    recipe, data = prepared.recipe, prepared.data
    started = time.perf_counter()
    progress.phase("starting TensorFlow")
    keras().utils.set_random_seed(recipe.seed)
    shutil.copyfile(prepared.recipe_path, work / "recipe.yaml")

    progress.phase("loading the model")
    for note in data.notes:
        progress.note(note)
    loaded: list[str] = []
    model = models.load_source(
        prepared.model_source,
        data,
        str(prepared.recipe_path),
        notes=loaded,
        custom_objects=recipe.model.custom_objects,
        search_dir=prepared.base_dir,
    )
    for line in loaded:
        progress.note(line)
    data = models.in_model_order(model, data)  # arrays given by name, in the model's order of inputs and outputs
    for line in models.unmatched_names(model, data):
        progress.note(line)
    try:
        task_spec = recipe.task_per_output(list(model.output_names))  # a mapping by output name, in model order
    except ValueError as exc:
        raise ConfigError.at(str(prepared.recipe_path), "task", str(exc)) from None
    if recipe.mixed:  # each output's targets, checked as its task asks now that they are in the model's order
        data = data.for_tasks(task_spec, str(prepared.recipe_path))
        models.check_fits(model, data, str(prepared.recipe_path))
    compiled_with = compiled_loss(prepared.model_source, model)  # before any rewrite drops the compile state
    head = data.head(64)
    sample = head[0] if len(head) == 1 else list(head)
    model, rewrites = _inline_nested_models(model, sample, recipe, progress)
    rewrites = loaded + rewrites
    model, functions = tf_functions.keras_layers_for_tf_functions(model, sample)
    for line in functions:
        progress.note(line)
    rewrites += functions
    model, unwrapped = rewrite.unwrap_time_distributed(model, sample)
    if unwrapped:
        progress.note(
            f"{'; '.join(unwrapped)}: the layer on the whole sequence computes the same (it acts on the last axis), "
            "and the stages can take it"
        )
        rewrites += unwrapped
    if recipe.model.split_separable_conv:
        model, split = rewrite.split_separable_conv(model, sample)
        for line in split:
            progress.note(f"split {line}")
        rewrites += split
    task = Task.of(model, task_spec, data.y_train, recipe.loss)
    error_model = task.kind in ("regression", "reconstruction")
    if compiled_with and error_model and recipe.loss == "auto" and canonical(compiled_with) != "mse":
        progress.note(
            f"the model was compiled with loss {compiled_with}; edgepipe trains a {task.kind} model with "
            f"{task.error_loss} unless the recipe sets loss: mae or loss: huber"
        )
    teachers.refuse_unsupported(task, data, recipe, str(prepared.recipe_path))
    refuse_unconvertible(model)  # before training: no full-integer model could come out of it
    if recipe.model.train and saving.python_layers(model):  # what they compute shows only once converted
        progress.phase("checking what the untrained model converts to")
        try:
            converted = TfliteModel.read(to_float_tflite(model))
        except ConversionError:
            converted = None  # the trained model may yet convert (rewrites follow training): that conversion says
        if converted is not None:
            conformance.refuse_float_only_ops(converted, [layer.name for layer in model.layers])
    teacher_models = teachers.load(recipe, prepared.recipe_path, prepared.base_dir, model)
    baseline_training: dict[str, list[float]] = {}
    reestimated = 0
    if recipe.model.train:
        progress.phase("training the float model")
        baseline_training = models.train(model, data, recipe.model.train, progress, "training the float model", task)
        reestimated = models.reestimate_batchnorm(model, data.keras_x("train"), models.BATCHNORM_SAMPLES)
        if reestimated:
            progress.note(f"BatchNorm statistics re-estimated on {reestimated:,} training samples (precise BN)")
    model, steadied = rewrite.steady_constant_features(model, sample)
    for line in steadied:
        progress.note(line)
    rewrites += steadied
    model, folded = rewrite.fold_input_rescaling(model, sample)
    for line in folded:
        progress.note(line)
    rewrites += folded
    model, dropped = rewrite.drop_training_only_layers(model, sample)
    if dropped:
        progress.note(
            f"removed {', '.join(dropped)}: they act only while training (augmentation, noise), so the stages "
            "fine-tune and convert the model without them"
        )
        rewrites += [f"{line} removed (training only)" for line in dropped]
    model, flattened = flatten_one_pixel_pooling(model, sample)
    if flattened:
        progress.note(f"{'; '.join(flattened)}: the same values, without a MEAN over one pixel on the board")
        rewrites += flattened
    layer_names = weights.kernel_layers(model)  # the float model's, for every stage's weights
    representative = data.representative(recipe.convert.representative_samples, recipe.seed)

    progress.phase("measuring the float model")
    reference = models.outputs(model, data.keras_x("test"))
    float_keras = measure.keras_entry(model, data, task)
    converted_notes: list[str] = []
    float_bytes = to_float_tflite(model, converted_notes)
    for line in converted_notes:
        progress.note(line)
    conformance.refuse_float_only_ops(TfliteModel.read(float_bytes), [layer.name for layer in model.layers])
    float_tflite = measure.measure_tflite(
        float_bytes, work / "float" / "model.tflite", work, data, task, model, layer_names
    )
    baseline = {
        **float_keras,
        **_keras_model_entry(saving.save(model, work / "float", work)),
        "training": baseline_training,
        "rewrites": rewrites,
        "loss": _loss_name(task),
        "output_names": list(model.output_names),
        "batchnorm_recalibrated_on": reestimated,  # after model.train: the moving averages lag short trainings
        "tflite": measure.public(float_tflite),
        "totals": measure.analysis(float_tflite)["total"],
    }
    float_gzip = float_tflite["gzip_bytes"]

    history = History()
    stages: list[dict[str, Any]] = []
    current = model
    final_entry: dict[str, Any] = {}
    for index, stage in enumerate(recipe.stages):
        name = stage_name(stage)
        label = f"stage {index + 1}/{len(recipe.stages)}: {name}"
        progress.phase(label)
        stage_started = time.perf_counter()
        train_settings = recipe.fine_tune_for(stage) if stage.kind != "ptq" else recipe.fine_tune
        teacher = teacher_models.get(index)
        ctx = StageContext(
            data=data,
            train=train_settings,
            seed=recipe.seed,
            progress=progress,
            history=history,
            where=f"{prepared.recipe_path}: stages[{index}]",
            label=label,
            task=task,
            teacher=teacher,
        )
        outcome = TECHNIQUES[stage.kind](current, stage, ctx)
        if train_settings.distill is not None and stage.kind != "ptq":
            outcome.details["distilled_from"] = {
                "teacher": train_settings.distill.teacher or "the float model",
                "temperature": train_settings.distill.temperature,
                "alpha": train_settings.distill.alpha,
            }
        folder = work / "stages" / f"{index + 1}-{name}"
        progress.phase(f"{label}: converting to full-integer TFLite")
        content = to_int8_tflite(outcome.model, representative, recipe.convert.io_type)
        final_entry = measure.measure_tflite(
            content, folder / "model.tflite", work, data, task, outcome.model, layer_names, reference
        )
        stages.append(
            {
                "index": index + 1,
                "name": name,
                "kind": stage.kind,
                "details": outcome.details,
                **measure.keras_entry(outcome.model, data, task),
                **_keras_model_entry(saving.save(outcome.model, folder, work)),
                "training": outcome.training,
                "tflite": measure.public(final_entry),
                "totals": measure.analysis(final_entry)["total"],  # params, MACs, peak activations: what it bought
                "gzip_ratio_vs_float": round(float_gzip / final_entry["gzip_bytes"], 4),
                "seconds": round(time.perf_counter() - stage_started, 2),
            }
        )
        current = outcome.model

    progress.phase("verifying the final model")
    final_content = (work / final_entry["path"]).read_bytes()
    (work / FINAL_MODEL).write_bytes(final_content)
    eval_data = _write_eval_data(work / EVAL_DATA, data, final_entry["_order"], task)
    report = conformance.check(final_entry["_model"], recipe.convert.io_type)
    final = {
        **measure.public(final_entry),
        "path": FINAL_MODEL,
        "from_stage": stages[-1]["name"],
        "gzip_ratio_vs_float": stages[-1]["gzip_ratio_vs_float"],
        "conformance": report.to_dict(),
        "agreement": _agreement(float_keras["keras_metric"], final_entry, data.test_samples),
    }
    gate_rows = gates.check(recipe.gates, float_keras["keras_metric"], final_entry, float_gzip)
    passed = report.passed and all(row["passed"] for row in gate_rows)
    return {
        "schema": SCHEMA,
        "status": "passed" if passed else ("not_integer_only" if not report.passed else "gate_failed"),
        "created": now(),
        "seconds": round(time.perf_counter() - started, 2),
        "recipe": resolved_recipe(recipe),
        "provenance": {
            "recipe_file": str(prepared.recipe_path),
            "recipe_sha256": sha256_file(prepared.recipe_path),
            "model_source": str(prepared.model_source),
            "model_source_sha256": sha256_file(prepared.model_source)
            if isinstance(prepared.model_source, Path) and prepared.model_source.is_file()
            else None,
            "data": data.summary(task.spec),
            "tools": tool_versions(),
            "host": host(),
        },
        "baseline": baseline,
        "stages": stages,
        "final": final,
        "analysis": {"float": measure.analysis(float_tflite), "final": measure.analysis(final_entry)},
        "gates": gate_rows,
        "eval_data": {"path": EVAL_DATA, **eval_data},
    }


def _keras_model_entry(saved: dict[str, Any]) -> dict[str, Any]:
    """``keras_model`` (the saved model's path) and, only when saving failed, ``keras_model_error``."""
    entry: dict[str, Any] = {"keras_model": saved["path"]}
    if saved["error"]:
        entry["keras_model_error"] = saved["error"]
    return entry


def _agreement(float_metric: dict[str, Any], final: dict[str, Any], samples: int) -> dict[str, Any]:
    """The final int8 model against the float Keras model: the metric's change, and top-1 agreement for a
    classifier. ``*_accuracy`` and ``accuracy_drop_points`` are there for classifiers only (else null)."""
    metric = final["metric"]
    classifier = metric["metric"] == "accuracy"
    change = metric["value"] - float_metric["value"]
    return {
        "metric": metric["metric"],
        "float_keras": float_metric["value"],
        "tflite": metric["value"],
        "change": round(change, 6),
        "relative_change": round(change / float_metric["value"], 6) if float_metric["value"] else None,
        "float_keras_accuracy": float_metric["value"] if classifier else None,
        "tflite_accuracy": metric["value"] if classifier else None,
        "accuracy_drop_points": round(-change * 100, 4) + 0.0 if classifier else None,
        "top1_agreement": final.get("agreement_with_float_keras"),
        "test_samples": samples,
    }


def _write_eval_data(path: Path, data: Dataset, order: IoOrder, task: Task) -> dict[str, Any]:
    """The test split for the board, inputs and outputs in the order the interpreter lists them; ``task`` for
    the board in that order too (a mixed model's tasks per output)."""
    x = [data.x_test[keras_index] for keras_index in _inverse(order.inputs)]
    y = [data.y_test[keras_index] for keras_index in _inverse(order.outputs)] if data.y_test else []
    spec = [task.kind_of(i) for i in _inverse(order.outputs)] if task.output_kinds else task.kind
    return {**write_eval_data(path, tuple(x), tuple(y)), "layout": "interpreter order", "task": spec}


def _inverse(positions: tuple[int, ...]) -> list[int]:
    """``positions[k]`` is where Keras item ``k`` sits in the interpreter's list; return, for each interpreter
    position, the Keras index."""
    inverse = [0] * len(positions)
    for keras_index, position in enumerate(positions):
        inverse[position] = keras_index
    return inverse
