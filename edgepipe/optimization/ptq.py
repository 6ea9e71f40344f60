"""Post-training quantization: no training at all; the full-integer converter calibrates from representative data.

The stage exists so that a recipe can say "just quantize" and so that every other recipe has a no-training
baseline to be compared with. The conversion itself happens in ``edgepipe.convert`` like for every stage.
"""

from __future__ import annotations

from typing import Any

from edgepipe.config.recipe import PtqStage
from edgepipe.models import copy_model
from edgepipe.optimization.base import StageContext, StageOutcome


def apply(model: Any, stage: PtqStage, ctx: StageContext) -> StageOutcome:
    return StageOutcome(model=copy_model(model), details={"scheme": "PTQ"})
