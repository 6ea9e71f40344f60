"""Audio models that compute their features inside the model, from the raw waveform (a Lambda on TensorFlow's
signal functions), as keyword-spotting and vibration models often do.

Both ended after training before: the float model's conversion failed on "'tf.StridedSlice' op is neither a
custom op nor a flex op" (a new axis on a tensor whose size the free batch left unknown; at batch 1 it
converts), and an in-model spectrogram, once converted at batch 1, trained every stage and then failed the
integer-only check on RFFT2D and COMPLEX_ABS, which TFLite runs in float only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ai_edge_litert.interpreter import Interpreter
from conftest import run_cli, write_recipe

pytestmark = pytest.mark.slow

AUDIO = '''
import numpy as np
import tensorflow as tf
import tf_keras as k

SAMPLES = 480


def waves():
    """Noisy tones whose loudness rises, falls or stays (three classes), 480 samples each."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 360)
    ramp = np.linspace(0.1, 1.0, SAMPLES)
    envelope = np.stack([ramp, ramp[::-1], np.full(SAMPLES, 0.55)])[labels]
    t = np.arange(SAMPLES) / 4000
    tone = np.sin(2 * np.pi * rng.uniform(300, 900, (360, 1)) * t)
    x = (envelope * tone + rng.normal(0, 0.05, (360, SAMPLES))).astype(np.float32)
    return {"x_train": x[:300], "y_train": labels[:300], "x_test": x[300:], "y_test": labels[300:]}


def frame_energy(audio):
    """The loudness of each 64-sample frame, as a sequence of one channel."""
    return tf.reduce_mean(tf.abs(tf.signal.frame(audio, 64, 32)), axis=-1)[..., None]


def spectrogram(audio):
    return tf.math.log(tf.abs(tf.signal.stft(audio, frame_length=64, frame_step=32)) + 1e-3)[..., None]


def head(x):
    convolution = k.layers.Conv1D if len(x.shape) == 3 else k.layers.Conv2D
    x = convolution(8, 3, activation="relu")(x)
    return k.layers.Dense(3, activation="softmax")(k.layers.Flatten()(x))


def envelope_cnn():
    inputs = k.Input((SAMPLES,))
    return k.Model(inputs, head(k.layers.Lambda(frame_energy, name="energy")(inputs)))


def spectrogram_cnn():
    inputs = k.Input((SAMPLES,))
    return k.Model(inputs, head(k.layers.Lambda(spectrogram, name="features")(inputs)))
'''


def test_a_front_end_that_converts_only_at_batch_one_is_converted_at_batch_one(tmp_path: Path) -> None:
    (tmp_path / "audio.py").write_text(AUDIO)
    recipe = write_recipe(tmp_path, """
    name: envelope
    model: {source: "audio:envelope_cnn", train: {epochs: 8, learning_rate: 0.01}}
    data: {source: "audio:waves"}
    stages: [{kind: ptq}]
    """)  # fmt: skip
    run = tmp_path / "run"
    done = run_cli("optimize", str(recipe), "--out", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "note: converted at batch 1, the batch a board runs: at a free batch size the float TFLite conversion "
        "failed: 'tf.StridedSlice' op is neither a custom op nor a flex op" in " ".join(done.stderr.split())
    )
    record = json.loads((run / "optimize.json").read_text())
    assert record["final"]["conformance"]["passed"] and record["final"]["accuracy"] > 0.8
    for model in (run / "float" / "model.tflite", run / "model.tflite"):  # at batch 1, not a free one (-1)
        (given,) = Interpreter(model_path=str(model)).get_input_details()
        assert list(given["shape_signature"]) == [1, 480]
    deployed = run_cli("deploy", "--target", "local", str(run), "--no-history", "--repeats", "1")
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    checks = json.loads((run / "deploy-local.json").read_text())["checks"]
    assert checks["accuracy_matches_host"] and checks["device_accuracy"] == record["final"]["accuracy"]


def test_an_in_model_spectrogram_is_refused_before_training_naming_its_float_operators(tmp_path: Path) -> None:
    (tmp_path / "audio.py").write_text(AUDIO)
    recipe = write_recipe(tmp_path, """
    name: spectrogram
    model: {source: "audio:spectrogram_cnn", train: {epochs: 8}}
    data: {source: "audio:waves"}
    stages: [{kind: qat}]
    """)  # fmt: skip
    done = run_cli("optimize", str(recipe), "--out", str(tmp_path / "run"))
    assert done.returncode == 5, done.stderr[-3000:]
    words = " ".join(done.stderr.split())
    assert (
        "error: no full-integer model can come out of this one: TFLite runs RFFT2D #" in words
        and "(layer features), COMPLEX_ABS #" in words
        and "hint: TFLite's FFT has float kernels only, so an in-model spectrogram (tf.signal.stft) stays in "
        "float: compute the spectrogram in the data function"
        in words
    ), words
    assert "checking what the untrained model converts to" in words and "training the float model" not in words
    assert "Traceback" not in words and not (tmp_path / "run").exists()
