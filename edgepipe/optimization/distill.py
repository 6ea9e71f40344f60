"""Knowledge distillation: fine-tune a compressed student against a teacher (the float model, or a file).

Classification: ``alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))``
(Hinton et al.); the T^2 keeps the soft term's gradients at the scale of the hard one. Regression and
reconstruction: ``alpha * MSE(targets, student) + (1 - alpha) * MSE(teacher, student)``; a mixed model's
outputs each take the loss of their own task.

The teacher runs once, in inference mode, over the training split; its outputs travel with the labels as one
packed target array per output (``[labels | teacher outputs]``), so training stays a plain ``model.fit``: TF-MOT's
wrappers and callbacks (pruning steps, QAT) work unchanged. A softmax head's probabilities are turned into logits
with a log, for student and teacher alike; a model with several outputs distills each output from the teacher's
output of the same place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.config.recipe import DistillSettings
from edgepipe.data import Dataset
from edgepipe.errors import ConfigError
from edgepipe.keras_compat import keras, tf
from edgepipe.models import load_file
from edgepipe.tasks import Task


def output_shapes(model: Any) -> list[tuple[int | None, ...]]:
    """Each output's shape without the batch axis, in output order."""
    return [tuple(None if d is None else int(d) for d in tuple(output.shape)[1:]) for output in model.outputs]


def check_teacher(teacher: Any, student: Any, name: str) -> None:
    """A teacher must give what the student gives: the same number of outputs, each of the same shape.

    Checked when the teacher is loaded, so a teacher for another task fails with its shapes named instead of
    deep inside the first training step.
    """
    want, got = output_shapes(student), output_shapes(teacher)
    if want != got:
        raise ConfigError(
            f"distill.teacher: {name} gives outputs {_shapes(got)} but the model gives {_shapes(want)}",
            hint="name a teacher trained for the same task (one output per model output, of the same shape)",
        )


def _shapes(shapes: list[tuple[int | None, ...]]) -> str:
    return ", ".join("(" + ", ".join(str(d) for d in shape) + ")" for shape in shapes)


def packed_targets(teacher: Any, data: Dataset, task: Task, teacher_task: Task) -> list[np.ndarray]:
    """One ``[targets | teacher outputs]`` array per output, for the training split (teacher logits for a
    classifier: a softmax head's probabilities go through a log)."""
    produced = teacher.predict(data.keras_x("train"), batch_size=512, verbose=0)
    produced = produced if isinstance(produced, list | tuple) else [produced]
    targets = data.targets("train")
    samples = data.train_samples
    packed = []
    for index, (target, output) in enumerate(zip(targets, produced, strict=True)):
        output = np.asarray(output, dtype=np.float32)
        if task.classifies(index) and teacher_task.probabilities[index]:
            output = np.log(np.clip(output, 1e-7, 1.0))
        target = np.asarray(target, dtype=np.float32).reshape(samples, -1)
        packed.append(np.concatenate([target, output.reshape(samples, -1)], axis=1))
    return packed


def compile_distilled(model: Any, task: Task, settings: DistillSettings, learning_rate: Any) -> None:
    """Adam, the distillation loss of each output on its packed targets, and the task's metric read from the
    label columns."""
    k = keras()
    temperature, alpha = float(settings.temperature), float(settings.alpha)

    def accuracy(packed: Any, student: Any) -> Any:
        return k.metrics.sparse_categorical_accuracy(packed[:, :1], student)

    widths = [int(np.prod(shape)) for shape in output_shapes(model)]
    losses, metrics = [], []
    for index, (probabilities, width) in enumerate(zip(task.probabilities, widths, strict=True)):
        if task.classifies(index):
            losses.append(_classification_loss(temperature, alpha, probabilities))
            metrics.append([accuracy])
        else:
            losses.append(_regression_loss(width, alpha, task.error_loss))
            metrics.append([])
    if len(losses) == 1:
        model.compile(optimizer=k.optimizers.Adam(learning_rate), loss=losses[0], metrics=metrics[0])
    else:
        model.compile(optimizer=k.optimizers.Adam(learning_rate), loss=losses, metrics=metrics)


def _classification_loss(temperature: float, alpha: float, student_probabilities: bool) -> Any:
    """Hinton's loss for one output whose packed targets are ``[label | teacher logits]``."""
    k, t = keras(), tf()

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

    return loss


def _regression_loss(width: int, alpha: float, error: str = "mse") -> Any:
    """The recipe's error (mse, mae or huber) against the targets and the mean squared error against the
    teacher, for one output of ``width`` values."""
    t = tf()

    def against_targets(difference: Any) -> Any:
        if error == "mae":
            return t.abs(difference)
        if error == "huber":  # delta 1, as keras.losses.Huber
            size = t.abs(difference)
            return t.where(size <= 1.0, 0.5 * t.square(difference), size - 0.5)
        return t.square(difference)

    def loss(packed: Any, student: Any) -> Any:
        flat = t.reshape(student, (-1, width))
        targets, teacher = packed[:, :width], packed[:, width:]
        return alpha * t.reduce_mean(against_targets(targets - flat), axis=-1) + (1 - alpha) * t.reduce_mean(
            t.square(teacher - flat), axis=-1
        )

    return loss


def teacher_path(source: str, base_dir: Any) -> Path:
    """Where a recipe's ``distill.teacher`` file is: relative paths start at the recipe's folder."""
    path = Path(source).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def load_teacher(source: str, base_dir: Any, student: Any) -> Any:
    """A teacher from a .keras/.h5 file (relative paths from the recipe's folder) whose outputs match ``student``'s."""
    path = teacher_path(source, base_dir)
    if not path.exists():
        raise ConfigError(
            f"distill.teacher: {path} does not exist", hint="name a .keras or .h5 file of a trained model"
        )
    teacher = load_file(path)
    check_teacher(teacher, student, str(path))
    return teacher
