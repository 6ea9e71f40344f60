"""Validated configuration: recipes (and, later, targets), loaded from YAML with one-line errors."""

from edgepipe.config.loading import load_model, read_yaml, substitute_environment, validate
from edgepipe.config.recipe import (
    ChannelPruneStage,
    ClusterStage,
    ConvertSettings,
    DataSource,
    DistillSettings,
    DistillStage,
    Gates,
    LayerSelection,
    ModelSource,
    PruneStage,
    PtqStage,
    QatStage,
    Recipe,
    Stage,
    TrainSettings,
    stage_name,
)

__all__ = [
    "ChannelPruneStage",
    "ClusterStage",
    "ConvertSettings",
    "DataSource",
    "DistillSettings",
    "DistillStage",
    "Gates",
    "LayerSelection",
    "ModelSource",
    "PruneStage",
    "PtqStage",
    "QatStage",
    "Recipe",
    "Stage",
    "TrainSettings",
    "load_model",
    "read_yaml",
    "stage_name",
    "substitute_environment",
    "validate",
]
