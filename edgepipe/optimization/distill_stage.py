"""``kind: distill``: fine-tune the current model against the teacher, changing nothing else (typically right
after ``channel_prune``, to win back what removing filters cost)."""

from __future__ import annotations

from typing import Any

from edgepipe.config.recipe import DistillStage
from edgepipe.models import copy_model, train
from edgepipe.optimization.base import StageContext, StageOutcome


def apply(model: Any, stage: DistillStage, ctx: StageContext) -> StageOutcome:
    student = copy_model(model)
    history = train(student, ctx.data, ctx.train, ctx.progress, ctx.label, ctx.task, teacher=ctx.teacher)
    return StageOutcome(model=student, details={}, training=history)
