"""A Fashion-MNIST teacher that generalizes instead of memorizing: the preset's CNN trained with augmentation.

    .venv/bin/python bench/augmented_teacher.py /tmp/fashion-teacher.keras   # 30 epochs, about 8 minutes
    .venv/bin/python bench/structured.py --ratios-only --models fashion --float-model /tmp/fashion-teacher.keras \\
        --channel-ratios 0.75 --seeds 0 1 2 --epochs 8 --learning-rate 0.003 --schedule cosine \\
        --temperature 2 --alpha 0.5

Distillation passes on what the teacher outputs on the training images. A teacher trained long on the plain
images fits them exactly (the 25-epoch cosine-decayed CNN: 100 % training accuracy), so its outputs there are
the labels again and distilling from it adds nothing. Random horizontal flips and shifts of up to 2 pixels keep
this one from memorizing (training accuracy stays a few points above test), so its outputs on the training
images carry the similarities between classes that distillation is meant to transfer. edgepipe's recipes do not
augment (a data set is arrays), which is why this teacher is trained here and handed to the sweep as a file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from edgepipe.errors import EdgepipeError
from edgepipe.examples.fashion import conv_bn, load
from edgepipe.keras_compat import keras, tf


def augmented(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> object:
    """Shuffled batches, each image flipped left-right at random and shifted by up to 2 pixels (pad + crop)."""
    t = tf()

    def jitter(image: object, label: object) -> tuple[object, object]:
        image = t.image.random_flip_left_right(image)
        image = t.image.random_crop(t.pad(image, [[2, 2], [2, 2], [0, 0]]), [28, 28, 1])
        return image, label

    data = t.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    return data.map(jitter, num_parallel_calls=t.data.AUTOTUNE).batch(batch_size).prefetch(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the trained .keras")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    k, t = keras(), tf()
    data = load()
    x, y = data.x_train[0], data.y_train[0]
    t.random.set_seed(args.seed)
    model = conv_bn(width=32)
    steps = args.epochs * -(-len(x) // 128)
    model.compile(
        optimizer=k.optimizers.Adam(k.optimizers.schedules.CosineDecay(0.002, steps)),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(augmented(x, y, 128, args.seed), epochs=args.epochs, verbose=2)
    test = model.evaluate(data.x_test[0], data.y_test[0], verbose=0, batch_size=512)[1]
    logits = model.predict(x, batch_size=512, verbose=0)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    train = float((logits.argmax(axis=1) == y).mean())
    print(f"test accuracy {test:.4f}, training accuracy {train:.4f}, "
          f"mean top probability on the training images {probabilities.max(axis=1).mean():.3f}")  # fmt: skip
    partial = args.out.with_name(f".{args.out.name}.partial.keras")
    model.save(partial)
    os.replace(partial, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except EdgepipeError as exc:  # Fashion-MNIST not installed: say what to do, as the CLI does
        sys.exit(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""))
