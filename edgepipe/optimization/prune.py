"""Magnitude pruning (TF-MOT ``prune_low_magnitude``): wrap -> fine-tune with UpdatePruningStep -> strip."""

from __future__ import annotations

from typing import Any

from edgepipe.config.recipe import PruneStage
from edgepipe.errors import ModelError
from edgepipe.keras_compat import tfmot
from edgepipe.models import copy_model, steps_per_epoch, train
from edgepipe.optimization.base import StageContext, StageOutcome, choose_layers, wrap_layers


def schedule_for(stage: PruneStage, total_steps: int, per_epoch: int) -> tuple[Any, dict[str, Any]]:
    """The TF-MOT pruning schedule and a plain description of it for the result.

    Sparsity only changes on steps that are multiples of ``frequency`` after ``begin_step``; the ramp's end is
    rounded to such a step so that the target is actually reached.
    """
    sparsity = tfmot().sparsity.keras
    frequency = stage.frequency_steps or max(1, min(100, per_epoch // 2))
    if stage.structure == "2:4":
        # The m-by-n mask fixes the pattern (50 %); the schedule only says when masks are updated.
        return sparsity.ConstantSparsity(0.5, begin_step=0, frequency=frequency), {
            "schedule": "constant",
            "target_sparsity": 0.5,
            "frequency_steps": frequency,
        }
    if stage.schedule == "constant":
        return sparsity.ConstantSparsity(stage.target_sparsity, begin_step=0, frequency=frequency), {
            "schedule": "constant",
            "target_sparsity": stage.target_sparsity,
            "frequency_steps": frequency,
        }
    ramp = max(frequency, int(total_steps * stage.ramp_fraction) // frequency * frequency)
    if ramp > total_steps:
        frequency = ramp = max(1, total_steps)
    return sparsity.PolynomialDecay(
        initial_sparsity=stage.initial_sparsity,
        final_sparsity=stage.target_sparsity,
        begin_step=0,
        end_step=ramp,
        frequency=frequency,
    ), {
        "schedule": "polynomial_decay",
        "initial_sparsity": stage.initial_sparsity,
        "target_sparsity": stage.target_sparsity,
        "end_step": ramp,
        "frequency_steps": frequency,
        "total_steps": total_steps,
    }


def apply(model: Any, stage: PruneStage, ctx: StageContext) -> StageOutcome:
    sparsity = tfmot().sparsity.keras
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    per_epoch = steps_per_epoch(ctx.data, ctx.train.batch_size)
    schedule, schedule_info = schedule_for(stage, per_epoch * ctx.train.epochs, per_epoch)
    work = copy_model(model)
    chosen, unsupported = choose_layers(work, stage.layers, PruneRegistry.supports, "pruned", ctx.where)
    params: dict[str, Any] = {"pruning_schedule": schedule, "block_size": stage.block_size}
    if stage.structure == "2:4":
        params["sparsity_m_by_n"] = (2, 4)

    def wrap(layer: Any) -> Any | None:
        if layer.name not in chosen:
            return None
        try:
            return sparsity.prune_low_magnitude(layer, **params)
        except ValueError as exc:
            raise ModelError(
                f"{ctx.where}: layer {layer.name!r} ({type(layer).__name__}) cannot be pruned this way: {exc}",
                hint=f"add {layer.name!r} to {ctx.where}.layers.exclude",
            ) from None

    try:
        wrapped = wrap_layers(work, wrap)
    except ModelError:
        raise
    except ValueError as exc:  # TF-MOT checks some layers (e.g. m-by-n on conv) only when the model is built
        raise ModelError(f"{ctx.where}: TF-MOT cannot prune this model: {exc}") from None
    history = train(
        wrapped,
        ctx.data,
        ctx.train,
        ctx.progress,
        ctx.label,
        ctx.task,
        callbacks=[sparsity.UpdatePruningStep()],
        teacher=ctx.teacher,
    )
    stripped = sparsity.strip_pruning(wrapped)
    ctx.history.pruned = True
    return StageOutcome(
        model=stripped,
        details={
            **schedule_info,
            "structure": stage.structure,
            "block_size": list(stage.block_size),
            "layers": chosen,
            "skipped_unsupported": unsupported,
        },
        training=history,
    )
