"""Knowledge distillation: fine-tune a compressed student against a teacher (the float model, or a file).

Classification: ``alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))``
(Hinton et al.); the T^2 keeps the soft term's gradients at the scale of the hard one. Regression and
reconstruction: ``alpha * MSE(targets, student) + (1 - alpha) * MSE(teacher, student)``.

The teacher runs once, in inference mode, over the training split; its outputs travel with the labels as one
packed target array (``[labels | teacher outputs]``), so training stays a plain ``model.fit``: TF-MOT's wrappers
and callbacks (pruning steps, QAT) work unchanged. A softmax head's probabilities are turned into logits with a
log, for student and teacher alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.config.recipe import DistillSettings
from edgepipe.data import Dataset
from edgepipe.errors import ConfigError
from edgepipe.keras_compat import keras, tf
from edgepipe.tasks import Task


def packed_targets(teacher: Any, data: Dataset, task: Task, teacher_task: Task) -> np.ndarray:
    """``[labels | teacher outputs]`` for the training split (teacher logits for a classifier)."""
    if task.outputs != 1:
        raise ConfigError("distillation supports models with one output for now; remove fine_tune.distill")
    produced = np.asarray(teacher.predict(data.keras_x("train"), batch_size=512, verbose=0), dtype=np.float32)
    if task.kind == "classification" and teacher_task.probabilities[0]:
        produced = np.log(np.clip(produced, 1e-7, 1.0))
    targets = np.asarray(data.keras_y("train"), dtype=np.float32)
    samples = len(produced)
    return np.concatenate([targets.reshape(samples, -1), produced.reshape(samples, -1)], axis=1)


def compile_distilled(model: Any, task: Task, settings: DistillSettings, learning_rate: Any) -> None:
    """Adam, the distillation loss on packed targets, and the task's metric read from the label columns."""
    k, t = keras(), tf()
    temperature, alpha = float(settings.temperature), float(settings.alpha)
    student_probabilities = task.probabilities[0]

    if task.kind == "classification":

        def loss(packed: Any, student: Any) -> Any:
            labels, teacher = packed[:, 0], packed[:, 1:]
            logits = t.math.log(t.clip_by_value(student, 1e-7, 1.0)) if student_probabilities else student
            hard = k.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            soft_teacher = t.nn.softmax(teacher / temperature)
            kl = t.reduce_sum(
                soft_teacher * (t.nn.log_softmax(teacher / temperature) - t.nn.log_softmax(logits / temperature)),
                axis=-1,
            )
            return alpha * hard + (1 - alpha) * temperature**2 * kl

        def accuracy(packed: Any, student: Any) -> Any:
            return k.metrics.sparse_categorical_accuracy(packed[:, :1], student)

        metrics = [accuracy]
    else:
        width = int(np.prod(model.output_shape[1:]))

        def loss(packed: Any, student: Any) -> Any:
            flat = t.reshape(student, (-1, width))
            targets, teacher = packed[:, :width], packed[:, width:]
            return alpha * t.reduce_mean(t.square(targets - flat), axis=-1) + (1 - alpha) * t.reduce_mean(
                t.square(teacher - flat), axis=-1
            )

        metrics = []
    model.compile(optimizer=k.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)


def teacher_path(source: str, base_dir: Any) -> Path:
    """Where a recipe's ``distill.teacher`` file is: relative paths start at the recipe's folder."""
    path = Path(source).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def load_teacher(source: str, base_dir: Any) -> Any:
    """A teacher from a .keras/.h5 file (relative paths from the recipe's folder)."""
    path = teacher_path(source, base_dir)
    if not path.exists():
        raise ConfigError(
            f"distill.teacher: {path} does not exist", hint="name a .keras or .h5 file of a trained model"
        )
    return keras().models.load_model(path, compile=False)
