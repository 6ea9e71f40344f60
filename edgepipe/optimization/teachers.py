"""Distillation's teachers for a recipe: checked before anything trains, loaded once the model is known.

A teacher is the float model (trained by the recipe) or a ``.keras``/``.h5`` file named in a stage's
``distill.teacher``; a missing file, or a model whose outputs distillation cannot soften, fails before the
float model trains rather than after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepipe.config import DistillSettings, Recipe, stage_name
from edgepipe.data import Dataset
from edgepipe.errors import ConfigError, ModelError
from edgepipe.optimization import distill
from edgepipe.tasks import Task


def check_files(recipe: Recipe, base: Path, file: str) -> None:
    """A teacher file that does not exist fails now, not after the float model and earlier stages trained."""
    for index, stage in enumerate(recipe.stages):
        settings = settings_of(recipe, stage)
        if settings is None or not settings.teacher:
            continue
        path = distill.teacher_path(settings.teacher, base)
        if not path.exists():
            raise ConfigError(
                f"{file}: stages[{index}] ({stage_name(stage)}): distill.teacher: {path} does not exist",
                hint="name a .keras or .h5 file of a trained model (relative paths start at the recipe's folder), "
                "or leave teacher out to distill from the float model",
            )


def settings_of(recipe: Recipe, stage: Any) -> DistillSettings | None:
    """The distillation a stage fine-tunes with, if any (a ptq stage does not fine-tune)."""
    return recipe.fine_tune_for(stage).distill if stage.kind != "ptq" else None


def refuse_unsupported(task: Task, data: Dataset, recipe: Recipe, file: str) -> None:
    """Distillation matches softened class distributions of one answer per sample: a one-unit (binary) head or
    a multi-label one has none to soften, and a per-position output (segmentation) has one per position, which
    its packed targets (``distill.packed_targets``) do not carry."""
    per_position = any(task.classifies(i) and labels.ndim > 1 for i, labels in enumerate(data.y_train))
    if not task.binary and not per_position:
        return
    for index, stage in enumerate(recipe.stages):
        if settings_of(recipe, stage) is None:
            continue
        where = f"{file}: stages[{index}] ({stage_name(stage)})"
        if task.binary:
            raise ConfigError(
                f"{where}: distillation takes classifiers with a unit per class; this model has a one-unit (binary) "
                "output or a yes/no answer per unit (multi-label)",
                hint="fine-tune without distill, or give a binary head two units (softmax or logits over 2 classes)",
            )
        raise ConfigError(
            f"{where}: distillation takes one answer per sample; this model answers per position "
            f"(labels of shape {data.y_train[0].shape[1:]} per sample)",
            hint="fine-tune without distill",
        )


def load(recipe: Recipe, recipe_path: Path, base_dir: Path, model: Any) -> dict[int, Any]:
    """Each distilling stage's teacher, by stage index: a named file (loaded and checked against ``model``'s
    outputs now, before the float model trains) or ``model`` itself, the float model once trained."""
    teachers: dict[int, Any] = {}
    for index, stage in enumerate(recipe.stages):
        settings = settings_of(recipe, stage)
        if settings is None:
            continue
        if not settings.teacher:
            teachers[index] = model
            continue
        try:
            teachers[index] = distill.load_teacher(settings.teacher, base_dir, model)
        except (ConfigError, ModelError) as exc:
            where = f"{recipe_path}: stages[{index}] ({stage_name(stage)})"
            raise type(exc)(f"{where}: {exc.message}", hint=exc.hint) from None
    return teachers
