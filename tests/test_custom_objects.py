"""Models with their own Keras classes: a custom layer in a saved file, an unregistered one in a factory's model.

Before: a saved model with a custom layer failed with tf_keras' "'str' object is not callable" (exit 3, no
hint), and a factory model with an unregistered Layer subclass trained its prune stage and then crashed inside
TF-MOT's QAT clone (exit 70, internal error). Now the recipe names the modules (``model.custom_objects``), a
factory's classes are registered from its model, and the QAT stage names the custom layers it cannot wrap.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli, write_recipe

pytestmark = pytest.mark.slow

# Written next to the recipe. Scale registers itself under a package name; Offset is unregistered (saved under
# its class name), as most users' layers are.
ACME_LAYERS = """
import tf_keras as k


@k.saving.register_keras_serializable(package="acme")
class Scale(k.layers.Layer):
    def build(self, shape):
        self.gamma = self.add_weight(name="gamma", shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.gamma


class Offset(k.layers.Layer):
    def build(self, shape):
        self.beta = self.add_weight(name="beta", shape=(shape[-1],), initializer="zeros")

    def call(self, x):
        return x + self.beta


def build():
    i = k.layers.Input((8, 8, 1))
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(i)
    x = Scale(name="scale")(x)
    x = Offset(name="offset")(x)
    x = k.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = k.layers.Flatten()(x)
    return k.Model(i, k.layers.Dense(10)(x))
"""


def _words(text: str) -> str:
    return " ".join(text.split())  # CI's terminal wraps at 80 columns


def _acme(folder: Path) -> Any:
    (folder / "acme_layers.py").write_text(ACME_LAYERS)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("acme_layers")
    finally:
        sys.path.remove(str(folder))


def _saved_model(folder: Path, digits: Any) -> float:
    """Saves acme.keras, trained; returns its test accuracy."""
    from edgepipe.keras_compat import keras

    keras()  # Keras 2 selected before the module imports tf_keras
    model = _acme(folder).build()
    model.compile("adam", keras().losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train[0], digits.y_train[0], epochs=10, verbose=0)
    model.save(folder / "acme.keras")
    scores = model.predict(digits.x_test[0], verbose=0)
    return float(np.mean(scores.argmax(axis=1) == digits.y_test[0]))


def _load_and_predict(saved: Path, inputs: Path) -> np.ndarray:
    """The saved model loaded as a user would (tf_keras inside TF-MOT's quantize scope), in a fresh process whose
    path has no acme_layers, predicting ``inputs`` into predicted.npy next to them; returns the same model's
    outputs computed here, by edgepipe's loader."""
    script = (
        "import os, sys, numpy as np; os.environ['TF_USE_LEGACY_KERAS'] = '1'\n"
        "import tf_keras, tensorflow_model_optimization as tfmot\n"
        "with tfmot.quantization.keras.quantize_scope():\n"
        f"    model = tf_keras.models.load_model({str(saved)!r}, compile=False)\n"
        f"np.save({str(inputs.parent / 'predicted.npy')!r}, model.predict(np.load({str(inputs)!r}), verbose=0))\n"
    )
    elsewhere = inputs.parent / "elsewhere"  # not the folder acme_layers.py is in
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    from edgepipe.optimization import saving

    return saving.load(saved).predict(np.load(inputs), verbose=0)


def _recipe(folder: Path, model: str, extra: str, stages: str, name: str = "recipe.yaml") -> Path:
    body = f"""
        name: acme
        model: {{source: {model}{extra}}}
        data: {{source: edgepipe.examples.digits:load}}
        fine_tune: {{epochs: 1, learning_rate: 0.0005}}
        stages: {stages}
        convert: {{representative_samples: 64}}
        gates: {{max_accuracy_drop: null}}
        """
    return write_recipe(folder, body, name=name)


def test_a_saved_model_with_custom_layers_loads_from_the_modules_the_recipe_names(tmp_path: Path, digits: Any) -> None:
    accuracy = _saved_model(tmp_path, digits)

    unnamed = _recipe(tmp_path, "acme.keras", "", "[{kind: ptq}]", name="unnamed.yaml")
    refused = run_cli("optimize", str(unnamed), "--out", str(tmp_path / "unnamed"))
    assert refused.returncode == 3, refused.stderr[-2000:]
    said = _words(refused.stderr)
    assert "not part of Keras" in said and "Scale (module 'acme_layers')" in said and "Offset" in said, said
    assert "model.custom_objects: [acme_layers]" in said  # the fix, printed as written (not eaten as markup)
    assert "Traceback" not in said and not (tmp_path / "unnamed").exists()

    # QAT refused them ("does not support 'scale' (Scale), 'offset' (Offset)", layers.exclude the fix): TF-MOT has
    # no quantize config for a class of the user's own. They are left to the converter, as an exclude would.
    extra = ", custom_objects: [acme_layers]"
    plain_qat = _recipe(tmp_path, "acme.keras", extra, "[{kind: qat}]", name="qat.yaml")
    done = run_cli("optimize", str(plain_qat), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered" in done.stderr and "Scale" in done.stderr
    said = _words(done.stderr)
    assert "scale, offset: a layer class of your own is one TF-MOT's QAT cannot quantize; left out of QAT" in said
    record = json.loads((tmp_path / "run" / "optimize.json").read_text())
    assert record["stages"][0]["details"]["left_to_converter"] == ["scale", "offset"]
    assert record["baseline"]["keras_accuracy"] == pytest.approx(accuracy, abs=1e-6)  # the file's own weights
    assert record["final"]["conformance"]["passed"]  # the converter quantized the custom layers' arithmetic
    assert accuracy > 0.8 and record["final"]["agreement"]["accuracy_drop_points"] < 3

    # The QAT stage's SavedModel keeps its traced functions for a class of the user's own: a process that has
    # never seen acme_layers loads it (as generic layers) and gets the stage's outputs.
    saved = tmp_path / "run" / record["stages"][0]["keras_model"]
    np.save(tmp_path / "x.npy", digits.x_test[0][:32])
    expected = _load_and_predict(saved, tmp_path / "x.npy")
    assert not list(saved.glob("**/acme*"))  # no copy of the module rode along
    assert np.array_equal(expected, np.load(tmp_path / "predicted.npy")), "the stage's model, loaded elsewhere"


def test_a_factory_model_with_an_unregistered_layer_is_copied_by_every_stage(tmp_path: Path) -> None:
    _acme(tmp_path)
    recipe = _recipe(
        tmp_path,
        "acme_layers:build, train: {epochs: 3}",
        "",
        "[{kind: prune, target_sparsity: 0.5}, {kind: qat, layers: {exclude: [scale, offset]}}]",
    )
    done = run_cli("optimize", str(recipe), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]  # was exit 70 inside TF-MOT's QAT clone
    record = json.loads((tmp_path / "run" / "optimize.json").read_text())
    assert record["final"]["conformance"]["passed"]
    assert [stage["kind"] for stage in record["stages"]] == ["prune", "qat"]


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("no_such_module", "model.custom_objects[0]: cannot import module 'no_such_module'"),
        ("acme_layers:Missing", "model.custom_objects[0]: module 'acme_layers' has no object 'Missing'"),
        ("acme-layers", "model.custom_objects: 'acme-layers' is not a module name (mylayers) or module:name"),
    ],
)
def test_a_wrong_custom_objects_entry_is_one_line_before_tensorflow_starts(
    tmp_path: Path, entry: str, said: str
) -> None:
    (tmp_path / "acme_layers.py").write_text(ACME_LAYERS)
    np.savez(tmp_path / "tiny.npz", x_train=np.zeros((4, 8, 8, 1)), y_train=np.zeros(4, int),
             x_test=np.zeros((4, 8, 8, 1)), y_test=np.zeros(4, int))  # fmt: skip
    recipe = write_recipe(
        tmp_path,
        f"""
        name: wrong
        model: {{source: acme_layers:build, custom_objects: ["{entry}"]}}
        data: {{source: tiny.npz}}
        stages: [{{kind: ptq}}]
        """,
    )
    done = run_cli("optimize", str(recipe), "--out", str(tmp_path / "run"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert said in _words(done.stderr) and "Traceback" not in done.stderr
    assert "starting TensorFlow" not in done.stderr and not (tmp_path / "run").exists()


def test_only_classes_outside_keras_are_reported_unknown(tmp_path: Path) -> None:
    """Keras 3 records tensor arguments as "__keras_tensor__" entries, and HDF5 keeps a registered class as
    "package>Class": neither may be mistaken for (or hide) the user's class in the message."""
    from edgepipe.custom_objects import unknown_classes
    from edgepipe.keras_compat import keras

    keras()
    import keras as keras3

    inputs = keras3.Input((8, 8, 1))
    x = keras3.layers.Conv2D(4, 3, padding="same")(inputs)
    keras3.Model(inputs, keras3.layers.Add()([x, x])).save(tmp_path / "builtin.keras")
    assert unknown_classes(tmp_path / "builtin.keras") == []

    layers = _acme(tmp_path)  # Scale registers itself on import (as "acme>Scale"); Offset never does
    layers.build().save(tmp_path / "acme.h5")
    assert [str(u) for u in unknown_classes(tmp_path / "acme.h5")] == ["Offset"]
    keras().saving.get_custom_objects().pop("acme>Scale")
    assert [str(u) for u in unknown_classes(tmp_path / "acme.h5")] == ["Scale", "Offset"]


API_SCRIPT = """
import edgepipe
from edgepipe.errors import ConfigError
from edgepipe.keras_compat import keras

keras()
import acme_layers
import tf_keras as k

recipe = {"name": "api-acme", "model": {"train": {"epochs": 2}}, "stages": [{"kind": "ptq"}],
          "data": {"source": "edgepipe.examples.digits:load"}, "gates": {"max_accuracy_drop": None}}
run = edgepipe.optimize(recipe, model=acme_layers.build(), out="run")
print("custom_objects", run.record["recipe"]["model"]["custom_objects"], run.passed)


class Local(k.layers.Layer):
    def call(self, x):
        return x


i = k.layers.Input((8, 8, 1))
try:
    edgepipe.optimize(recipe, model=k.Model(i, k.layers.Dense(10)(k.layers.Flatten()(Local()(i)))), out="local")
except ConfigError as exc:
    print("refused:", exc.message, "|", exc.hint)
"""


def test_the_python_api_passes_a_models_own_layer_modules_on(tmp_path: Path) -> None:
    """edgepipe.optimize(model=...) saves the model for the optimizing process, which could not read its custom
    layers back; their module is now named for it, and a class defined in __main__ is refused with the fix."""
    import os
    import subprocess

    (tmp_path / "acme_layers.py").write_text(ACME_LAYERS)
    (tmp_path / "api_run.py").write_text(API_SCRIPT)
    done = subprocess.run([sys.executable, "api_run.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "custom_objects ['acme_layers'] True" in done.stdout, done.stdout
    assert "refused: the model's layer class Local is defined in __main__" in done.stdout
    assert "move the class into a module" in done.stdout and not (tmp_path / "local").exists()
