"""``kind: channel_prune``: remove whole filters (``channels.py``), fine-tune, in one or several steps."""

from __future__ import annotations

import fnmatch
from typing import Any

from edgepipe.config.recipe import ChannelPruneStage
from edgepipe.errors import ModelError
from edgepipe.models import BATCHNORM_SAMPLES, copy_model, reestimate_batchnorm, train
from edgepipe.optimization import channels
from edgepipe.optimization.base import StageContext, StageOutcome


def apply(model: Any, stage: ChannelPruneStage, ctx: StageContext) -> StageOutcome:
    current = copy_model(model)
    before = current.count_params()
    sample = ctx.data.keras_x("train")[:256] if stage.criterion == "activation" else None
    history: dict[str, list[float]] = {}
    first_plan: channels.Plan | None = None
    original: dict[str, int] = {}
    for step in range(1, stage.steps + 1):
        plan = channels.analyze(current)
        if first_plan is None:
            first_plan = plan
            original = {name: row["before"] for name, row in plan.removed().items()}
        scores = channels.importance(current, plan, stage.criterion, sample)
        # Each step keeps original * (1 - ratio) ** (step / steps) channels of every group, so the last step
        # lands on the recipe's ratio (rounding does not compound) and each step removes an equal share.
        fraction = step / stage.steps
        per_layer = {}
        for group in plan.groups:
            name = group.producers[0]
            wanted = next((r for p, r in stage.per_layer.items() if fnmatch.fnmatchcase(name, p)), stage.ratio)
            per_layer[name] = max(
                0.0, 1 - original.get(name, group.channels) * (1 - wanted) ** fraction / group.channels
            )
        ratio = 1 - (1 - stage.ratio) ** (1 / stage.steps)  # global ranking: the same share each step
        plan = channels.decide(
            current, plan, scores, ratio, {} if stage.global_ranking else per_layer, stage.global_ranking,
            stage.min_channels, stage.round_to,
        )  # fmt: skip
        if not plan.keep and step == 1:
            others = channels.not_channel_pruned(current)
            raise ModelError(
                f"{ctx.where}: no channel can be removed: "
                + ("; ".join(f"{k} blocked by {', '.join(v)}" for k, v in plan.blocked().items()) or "every group "
                   "is at min_channels already")
                + (f"; channel pruning does not take {', '.join(others)}" if others else ""),
                hint=_nothing_removable_hint(plan, others),
            )  # fmt: skip
        current = channels.rebuild(current, plan)
        recalibrated = reestimate_batchnorm(current, ctx.data.keras_x("train"), BATCHNORM_SAMPLES)
        label = ctx.label if stage.steps == 1 else f"{ctx.label}: step {step}/{stage.steps}"
        if stage.steps > 1:
            ctx.progress.phase(label)
        for name, values in train(
            current, ctx.data, ctx.train, ctx.progress, label, ctx.task, teacher=ctx.teacher
        ).items():
            history.setdefault(name, []).extend(values)
    final = channels.analyze(current)
    assert first_plan is not None
    return StageOutcome(
        model=current,
        details={
            "criterion": stage.criterion,
            "ratio": stage.ratio,
            "steps": stage.steps,
            "params_before": int(before),
            "params_after": int(current.count_params()),
            "channels": {
                name: {"before": row["before"], "after": _channels(final, name)}
                for name, row in first_plan.removed().items()
            },
            "left_unpruned": first_plan.blocked(),
            "batchnorm_recalibrated_on": recalibrated,
        },
        training=history,
    )


def _channels(plan: channels.Plan, producer: str) -> int | None:
    for group in plan.groups:
        if producer in group.producers:
            return group.channels
    return None


def _nothing_removable_hint(plan: channels.Plan, others: list[str]) -> str:
    """What could let channel pruning remove something, from what stopped it: a group free to shrink but at its
    floor, or a Lambda in the way; otherwise the other stages."""
    reasons = " ".join(reason for blockers in plan.blocked().values() for reason in blockers)
    fixes = []
    if any(not group.blocked_by for group in plan.groups):
        fixes.append("lower min_channels or round_to")
    if "(Lambda:" in reasons:
        fixes.append("write what the Lambda computes with Keras layers (Cropping1D, Reshape, ...)")
    if others or not fixes:
        fixes.append("use prune (magnitude) or low_rank for what channel pruning cannot take")
    return "; ".join(fixes)
