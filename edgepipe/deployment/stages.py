"""``deploy --stages``: measure every model of an optimize run on the board, not only the final one.

Each stage's result goes next to its model (``stages/2-cluster/deploy-TARGET.json``) so the report can show
accuracy, latency and memory per stage. A stage whose bytes are the final model's is not measured twice.
A model failure on one stage (an unsupported op, a crash) is recorded and the other stages still run;
infrastructure trouble stops the whole run at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgepipe.config.target import MeasureSettings, Target
from edgepipe.data import EVAL_DATA
from edgepipe.deployment.runner import DeployOutcome, deploy
from edgepipe.errors import DeviceModelError
from edgepipe.progress import Progress
from edgepipe.run_models import RunModel, run_models
from edgepipe.store import History


@dataclass(frozen=True)
class StageDeploy:
    model: RunModel
    outcome: DeployOutcome | None
    error: DeviceModelError | None


def deploy_stages(
    target: Target,
    run_dir: Path,
    *,
    measure: MeasureSettings,
    deadline_s: float | None,
    history: History | None,
    tags: Sequence[str] = (),
    on_stage: Callable[[RunModel], None] | None = None,
    profile: bool = False,
) -> list[StageDeploy]:
    """Deploy every non-final model of ``run_dir``; ``tags`` are suffixed with ``:stage-NAME`` in the history.
    With ``profile``, each stage is profiled operator by operator too (the report diffs the float model's
    profile against the final one's)."""
    done = []
    for model in run_models(run_dir):
        if model.final:
            continue
        if on_stage is not None:
            on_stage(model)
        stage_tags = [f"stage:{model.name}", *(f"{tag}:stage-{model.name}" for tag in tags)]
        try:
            outcome = deploy(
                target,
                model=model.path,
                data=run_dir / EVAL_DATA,
                out=model.path.parent / f"deploy-{target.name}.json",
                measure=measure,
                deadline_s=deadline_s,
                progress=Progress(),
                history=history,
                tags=stage_tags,
                profile=profile,
            )
        except DeviceModelError as exc:
            done.append(StageDeploy(model, None, exc))
            continue
        done.append(StageDeploy(model, outcome, None))
    return done
