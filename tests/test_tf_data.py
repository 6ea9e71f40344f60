"""A data function returning tf.data pipelines (``image_dataset_from_directory``, ``from_tensor_slices``).

Before: refused with "has no array 'x_train' ... (found: test, train)". Now each pipeline is read to its end
into the arrays every other source gives, checked the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli, write_recipe

from edgepipe.errors import ConfigError
from edgepipe.keras_compat import tf as tensorflow

pytestmark = pytest.mark.slow

FOLDER_DATA = """
from pathlib import Path

import tf_keras as k


def load():
    return k.utils.image_dataset_from_directory(
        Path(__file__).parent / "pngs", image_size=(8, 8), color_mode="grayscale",
        validation_split=0.25, subset="both", seed=0,
    )
"""

BROKEN_DATA = """
import numpy as np
import tensorflow as tf

x, y = np.zeros((20, 8, 8, 1), np.float32), np.zeros(20, np.int64)


def forever():
    pipeline = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    return {"train": pipeline.repeat(), "test": pipeline}


def single():
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)


def ragged():
    sizes = tf.data.Dataset.range(1, 6).map(lambda n: (tf.zeros((n, 8)), n))
    return sizes, sizes
"""


def _words(text: str) -> str:
    return " ".join(text.split())


def test_batched_and_unbatched_pipelines_give_the_arrays_back_in_order(digits: Any) -> None:
    from edgepipe.tf_data import arrays_from_pipelines

    tf = tensorflow()

    x, y = digits.x_train[0][:100], digits.y_train[0][:100]
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # the last batch has 4
    two_inputs = tf.data.Dataset.from_tensor_slices(((x, x[:, :, :, 0]), y))  # unbatched, several inputs
    arrays, notes = arrays_from_pipelines(batched, two_inputs, "data:load", None, "data.source")
    np.testing.assert_array_equal(arrays["x_train"][0], x)
    np.testing.assert_array_equal(arrays["y_train"][0], y)
    np.testing.assert_array_equal(arrays["x_test"][1], x[:, :, :, 0])
    assert len(arrays["x_test"]) == 2 and "batches unbatched" in notes[0] and "samples stacked" in notes[1]


def test_a_folder_of_images_read_by_keras_trains_through_the_cli(tmp_path: Path, digits: Any) -> None:
    tf = tensorflow()
    counts = np.zeros(10, int)
    images = np.concatenate([digits.x_train[0], digits.x_test[0]])
    labels = np.concatenate([digits.y_train[0], digits.y_test[0]])
    for index, (image, label) in enumerate(zip(images[:600], labels[:600], strict=True)):
        folder = tmp_path / "pngs" / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = tf.cast(tf.round(image / images.max() * 255), tf.uint8)
        (folder / f"{index}.png").write_bytes(tf.io.encode_png(pixels).numpy())
        counts[label] += 1
    (tmp_path / "folder_data.py").write_text(FOLDER_DATA)
    recipe = write_recipe(
        tmp_path,
        """
        name: folder
        model: {source: edgepipe.examples.cnns:softmax_cnn, train: {epochs: 2}}
        data: {source: folder_data:load}
        stages: [{kind: ptq}]
        convert: {representative_samples: 64}
        gates: {max_accuracy_drop: null}
        """,
    )
    out = tmp_path / "run"
    done = run_cli("optimize", str(recipe), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    said = _words(done.stderr)
    assert "tf.data train pipeline read to its end: 450 samples" in said and "0 = digit0" in said, said
    with np.load(out / "eval.npz") as archive:  # what the board evaluates: the validation subset's 150 images
        x, y = archive["x"], archive["y"]
    assert x.shape[1:] == (8, 8, 1) and len(y) == 150 and x.max() > 200  # pixels as read, 0..255
    assert np.bincount(y, minlength=10).sum() == 150 and set(np.unique(y)) <= set(range(10))
    record = json.loads((out / "optimize.json").read_text())
    assert record["final"]["conformance"]["passed"]


@pytest.mark.parametrize(
    ("function", "said"),
    [
        ("forever", "the train tf.data pipeline repeats forever"),
        ("single", "cannot tell apart (one pipeline): it needs a train and a test split"),
        ("ragged", "the train tf.data pipeline's samples differ in shape"),
    ],
)
def test_a_pipeline_that_cannot_become_arrays_is_one_line(tmp_path: Path, function: str, said: str) -> None:
    (tmp_path / "broken_data.py").write_text(BROKEN_DATA)
    recipe = write_recipe(
        tmp_path,
        f"""
        name: broken
        model: {{source: edgepipe.examples.cnns:softmax_cnn, train: {{epochs: 1}}}}
        data: {{source: "broken_data:{function}"}}
        stages: [{{kind: ptq}}]
        """,
    )
    done = run_cli("optimize", str(recipe), "--out", str(tmp_path / "run"))
    assert done.returncode == ConfigError.exit_code, done.stderr[-2000:]
    assert said in _words(done.stderr) and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
