"""The recipe: which model, which data, which TF-MOT stages in which order, and which gates must hold.

A recipe is validated data (pydantic, unknown fields refused). Its resolved form — defaults filled in, stage
fine-tuning settings merged — is copied into every result so that a run can be reproduced from its JSON alone.

Field names are the recipe's YAML keys; see ``recipes/*.yaml`` for documented presets.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A Python entry point such as ``edgepipe.examples.digits:load``.
ENTRY_POINT_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class _Strict(BaseModel):
    """Refuse unknown fields: a typo in a recipe must be an error, never a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DistillSettings(_Strict):
    """Fine-tune against a teacher: ``alpha`` weighs the labels' loss, ``1 - alpha`` the teacher's (softened by
    ``temperature`` for a classifier). The teacher is the recipe's float model unless a file is named."""

    temperature: float = Field(default=4.0, gt=0, le=100)
    alpha: float = Field(default=0.5, ge=0, le=1)
    teacher: str | None = Field(default=None, description="a .keras/.h5 file; default: the float model")


class TrainSettings(_Strict):
    """How long and how hard to train; used for baseline training and for each stage's fine-tuning."""

    epochs: int = Field(default=2, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=1, le=65536)
    learning_rate: float = Field(default=1e-4, gt=0, le=10)
    # constant: Adam at learning_rate throughout (TF-MOT's guides); cosine: decayed to zero by the last step,
    # which ends a short fine-tune in a settled place instead of wherever the last batches left it.
    learning_rate_schedule: Literal["constant", "cosine"] = "constant"
    distill: DistillSettings | None = None  # fine-tune against a teacher instead of the labels alone


class FineTuneOverride(_Strict):
    """Per-stage override of the recipe-wide ``fine_tune`` settings; unset fields inherit."""

    epochs: int | None = Field(default=None, ge=1, le=1000)
    batch_size: int | None = Field(default=None, ge=1, le=65536)
    learning_rate: float | None = Field(default=None, gt=0, le=10)
    learning_rate_schedule: Literal["constant", "cosine"] | None = None
    distill: DistillSettings | None = None

    def over(self, base: TrainSettings) -> TrainSettings:
        update = {name: getattr(self, name) for name in self.model_fields_set if getattr(self, name) is not None}
        return base.model_copy(update=update)


class ModelSource(_Strict):
    """Where the float model comes from.

    ``source`` is a ``.keras`` / ``.h5`` file, a SavedModel directory written by Keras, or a Python factory
    ``module:function`` returning a Keras model. Set ``train`` when the model still has to be trained (a factory
    that returns a fresh architecture); a model that is already trained needs no ``train`` section.
    """

    source: str = Field(min_length=1)
    train: TrainSettings | None = None
    # Split every SeparableConv2D into DepthwiseConv2D + Conv2D 1x1 (exact) before any stage, so that pruning
    # and clustering see the two kernels as the separate layers they are on the board.
    split_separable_conv: bool = False
    # Modules defining the custom layers (activations, constraints, ...) a saved model file uses, imported from
    # the recipe's folder before it is loaded; "module:name" registers one object. A factory needs none.
    custom_objects: list[str] = Field(default_factory=list)

    @field_validator("custom_objects")
    @classmethod
    def _module_names(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            if not re.fullmatch(r"[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?", entry):
                raise ValueError(f"{entry!r} is not a module name (mylayers) or module:name (mylayers:mish)")
        return entries


class DataSource(_Strict):
    """Where the data comes from: an ``.npz`` with ``x_train, y_train, x_test, y_test``, or ``module:function``."""

    source: str = Field(min_length=1)


class LayerSelection(_Strict):
    """Which layers a stage touches. Patterns are shell globs matched against layer names and class names.

    An empty ``include`` means every layer the technique supports. ``exclude`` wins over ``include``.
    """

    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class _StageBase(_Strict):
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    fine_tune: FineTuneOverride = Field(default_factory=FineTuneOverride)


class PruneStage(_StageBase):
    """Magnitude pruning: the smallest weights are set to zero while fine-tuning, then the wrappers are removed."""

    kind: Literal["prune"]
    target_sparsity: float = Field(default=0.8, gt=0.0, lt=1.0)
    schedule: Literal["polynomial_decay", "constant"] = "polynomial_decay"
    initial_sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Fraction of the fine-tuning steps over which a polynomial schedule ramps up to the target; the rest of the
    # epochs let accuracy recover at the final sparsity.
    ramp_fraction: float = Field(default=0.7, gt=0.0, le=1.0)
    frequency_steps: int | None = Field(default=None, ge=1)
    block_size: tuple[int, int] = (1, 1)
    # "2:4" structured sparsity (2 zeros in every 4 consecutive weights), as TF-MOT's sparsity_m_by_n.
    structure: Literal["unstructured", "2:4"] = "unstructured"
    layers: LayerSelection = Field(default_factory=LayerSelection)

    @field_validator("block_size")
    @classmethod
    def _positive_block(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError("block_size must be two positive integers, e.g. [1, 4]")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PruneStage:
        if self.structure == "2:4" and self.block_size != (1, 1):
            raise ValueError("structure '2:4' cannot be combined with block_size; use one or the other")
        if self.initial_sparsity >= self.target_sparsity:
            raise ValueError("initial_sparsity must be below target_sparsity")
        return self


class ClusterStage(_StageBase):
    """Weight clustering: each layer's weights share ``clusters`` values (per channel with ``per_channel``)."""

    kind: Literal["cluster"]
    clusters: int = Field(default=16, ge=2, le=256)
    init: Literal["kmeans_plus_plus", "density_based", "linear", "random"] = "kmeans_plus_plus"
    per_channel: bool = False
    # "auto": keep the zeros of an earlier prune stage (sparsity-preserving clustering) when there was one.
    preserve_sparsity: Literal["auto"] | bool = "auto"
    layers: LayerSelection = Field(default_factory=LayerSelection)


class ChannelPruneStage(_StageBase):
    """Structured pruning: whole filters are removed and a smaller model is built (fewer MACs on the board).

    ``ratio`` is the share of each prunable group's channels removed; ``per_layer`` (glob -> ratio, matched
    against a group's convolutions/dense layers) overrides it; ``global_ranking`` instead removes the least
    important ``ratio`` of all channels, wherever they are. ``steps`` reaches the ratio in that many prune +
    fine-tune rounds (iterative pruning).
    """

    kind: Literal["channel_prune"]
    ratio: float = Field(default=0.5, gt=0.0, lt=1.0)
    criterion: Literal["l1", "l2", "bn_gamma", "activation"] = "l1"
    per_layer: dict[str, Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(default_factory=dict)
    global_ranking: bool = False
    min_channels: int = Field(default=4, ge=1)
    round_to: int = Field(default=1, ge=1, le=64)
    steps: int = Field(default=1, ge=1, le=20)


class LowRankStage(_StageBase):
    """Truncated SVD of Dense and Conv2D kernels into two layers each; the rank keeps ``energy`` of the squared
    singular values, or is ``rank_ratio`` of the full rank (give one). Layers it would not make cheaper are left."""

    kind: Literal["low_rank"]
    energy: float | None = Field(default=None, gt=0.0, le=1.0)
    rank_ratio: float | None = Field(default=None, gt=0.0, lt=1.0)
    min_rank: int = Field(default=1, ge=1)
    layers: LayerSelection = Field(default_factory=LayerSelection)

    @model_validator(mode="after")
    def _one_rule(self) -> LowRankStage:
        if self.energy is not None and self.rank_ratio is not None:
            raise ValueError("give energy or rank_ratio, not both")
        if self.energy is None and self.rank_ratio is None:
            object.__setattr__(self, "energy", 0.9)
        return self


class DistillStage(_StageBase):
    """Fine-tune the current model against the teacher only (no compression), e.g. after channel_prune."""

    kind: Literal["distill"]
    distill: DistillSettings = Field(default_factory=DistillSettings)


class QatStage(_StageBase):
    """Quantization-aware training. ``scheme: auto`` picks TF-MOT's collaborative scheme from the earlier stages:
    PQAT after prune, CQAT after cluster, PCQAT after both, plain 8-bit QAT otherwise."""

    kind: Literal["qat"]
    scheme: Literal["auto", "default", "prune_preserve", "cluster_preserve", "prune_cluster_preserve"] = "auto"
    # Layers left un-annotated; the converter still quantizes them from the representative data set.
    layers: LayerSelection = Field(default_factory=LayerSelection)


class PtqStage(_StageBase):
    """Post-training full-integer quantization only: the no-training baseline."""

    kind: Literal["ptq"]


Stage = Annotated[
    ChannelPruneStage | LowRankStage | DistillStage | PruneStage | ClusterStage | QatStage | PtqStage,
    Field(discriminator="kind"),
]


class ConvertSettings(_Strict):
    """Full-integer conversion: calibration samples drawn from the training split, and the I/O type."""

    representative_samples: int = Field(default=256, ge=1, le=100_000)
    io_type: Literal["int8", "uint8"] = "int8"


class Gates(_Strict):
    """Limits the final model must meet; a failed gate fails ``edgepipe optimize`` (exit code 6).

    ``max_accuracy_drop`` and ``min_agreement`` are for classifiers; ``max_error_increase`` for regression and
    reconstruction, whose metric is an error (lower is better).
    """

    # Percentage points: float Keras accuracy minus final int8 TFLite accuracy, on the test split.
    max_accuracy_drop: float | None = Field(default=1.0, ge=0)
    # Fraction: (final int8 TFLite error - float Keras error) / float Keras error, e.g. 0.1 for at most +10 %.
    max_error_increase: float | None = Field(default=None, ge=0)
    max_tflite_bytes: int | None = Field(default=None, ge=1)
    max_gzip_bytes: int | None = Field(default=None, ge=1)
    # Float TFLite gzip bytes divided by final gzip bytes must reach this.
    min_gzip_ratio: float | None = Field(default=None, gt=0)
    # Fraction of test samples on which the float Keras model and the final model give the same top-1 answer.
    min_agreement: float | None = Field(default=None, ge=0, le=1)


class Recipe(_Strict):
    """A whole optimization recipe, as written in YAML."""

    name: str = Field(min_length=1, max_length=80)
    description: str = ""
    seed: int = 0
    # What the model is for: the loss it is fine-tuned with, its metric, and the gates that apply (see tasks.py).
    # A model whose outputs do different jobs (a class head next to a value head) lists one task per output, in
    # the model's output order: [classification, regression].
    # By output name instead ({digit: classification, ink: regression}) for a model built with dicts of outputs.
    task: (
        Literal["classification", "regression", "reconstruction"]
        | list[Literal["classification", "regression"]]
        | dict[str, Literal["classification", "regression"]]
    ) = "classification"
    # The training loss of a regression or reconstruction model (a classifier's follows from its head: softmax,
    # logits or one sigmoid unit). mae and huber (delta 1) weigh outliers less than mse.
    loss: Literal["auto", "mse", "mae", "huber"] = "auto"
    model: ModelSource
    data: DataSource
    fine_tune: TrainSettings = Field(default_factory=TrainSettings)
    stages: list[Stage] = Field(min_length=1)
    convert: ConvertSettings = Field(default_factory=ConvertSettings)
    gates: Gates = Field(default_factory=Gates)

    @field_validator("task", mode="before")
    @classmethod
    def _task_per_output(cls, task: Any) -> Any:
        """A list (or a mapping by output name) of tasks is a mixed model's; one task repeated is that task
        (nothing is mixed)."""
        if not isinstance(task, list | dict):
            return task
        kinds = list(task.values()) if isinstance(task, dict) else task
        if not kinds:
            raise ValueError("empty; give one task, or one per output: [classification, regression]")
        if "reconstruction" in kinds:
            raise ValueError(
                "reconstruction cannot be one output's task among others (its targets are the inputs); "
                "give that output its targets (the input) in the data and list it as regression"
            )
        return kinds[0] if len(set(map(str, kinds))) == 1 else task

    @property
    def mixed(self) -> bool:
        """Whether the outputs have different tasks (``task`` is a list or a mapping)."""
        return isinstance(self.task, list | dict)

    def task_per_output(self, output_names: list[str]) -> str | list[str]:
        """``task`` as one task, or a list in the order of ``output_names`` (a mapping is matched by name)."""
        if not isinstance(self.task, dict):
            return self.task
        unknown = sorted(set(self.task) - set(output_names))
        missing = [name for name in output_names if name not in self.task]
        if unknown or missing:
            named = f"names {', '.join(unknown)}, which the model does not have" if unknown else ""
            left = f"leaves out {', '.join(missing)}" if missing else ""
            said = " and ".join(filter(None, (named, left)))
            raise ValueError(f"{said} (the model's outputs: {', '.join(output_names)})")
        return [self.task[name] for name in output_names]

    @field_validator("stages")
    @classmethod
    def _stage_order(cls, stages: list[Stage]) -> list[Stage]:
        kinds = [s.kind for s in stages]
        quantizing = [i for i, k in enumerate(kinds) if k in ("qat", "ptq")]
        if len(quantizing) > 1:
            raise ValueError("at most one quantization stage (qat or ptq) per recipe")
        if quantizing and quantizing[0] != len(kinds) - 1:
            raise ValueError(f"the {kinds[quantizing[0]]} stage must be the last stage: quantization ends the chain")
        for rebuilding in ("channel_prune", "low_rank"):
            if rebuilding in kinds:
                last = len(kinds) - 1 - kinds[::-1].index(rebuilding)
                earlier = [k for k in kinds[:last] if k in ("prune", "cluster")]
                if earlier:
                    raise ValueError(
                        f"{rebuilding} must come before {earlier[0]}: rebuilding the model drops its zeros and clusters"
                    )
        if "prune" in kinds and "cluster" in kinds and kinds.index("prune") > kinds.index("cluster"):
            raise ValueError("prune must come before cluster (pruning after clustering destroys the clusters)")
        names = [stage_name(s) for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}: give repeated stages a distinct 'name'")
        return stages

    @model_validator(mode="after")
    def _gates_fit_the_task(self) -> Recipe:
        if self.mixed:  # the accuracy gates judge the class outputs, the error gate the value outputs
            if "max_error_increase" not in self.gates.model_fields_set:
                object.__setattr__(self, "gates", self.gates.model_copy(update={"max_error_increase": 0.1}))
            return self
        if self.task == "classification":
            if self.loss != "auto":
                raise ValueError(
                    f"loss: {self.loss} is for regression and reconstruction; a classifier is trained with the "
                    "cross-entropy its head asks for (set task: regression for float targets)"
                )
            if self.gates.max_error_increase is not None:
                raise ValueError("gates.max_error_increase is for regression and reconstruction; use max_accuracy_drop")
            return self
        named = [g for g in ("max_accuracy_drop", "min_agreement") if g in self.gates.model_fields_set]
        if named:
            raise ValueError(
                f"gates.{named[0]} is for classification; a {self.task} model's metric is an error: use "
                "gates.max_error_increase"
            )
        # The classifier's default drop limit does not apply; the error gate defaults to +10 %.
        defaults = {"max_accuracy_drop": None}
        if "max_error_increase" not in self.gates.model_fields_set:
            defaults["max_error_increase"] = 0.1
        object.__setattr__(self, "gates", self.gates.model_copy(update=defaults))
        return self

    def fine_tune_for(self, stage: Stage) -> TrainSettings:
        settings = stage.fine_tune.over(self.fine_tune)
        if isinstance(stage, DistillStage):
            settings = settings.model_copy(update={"distill": stage.distill})
        return settings


def stage_name(stage: Stage) -> str:
    """The name a stage is reported and stored under: its ``name``, or its ``kind``."""
    return stage.name or stage.kind
