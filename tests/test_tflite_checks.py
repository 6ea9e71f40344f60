"""Reading flatbuffers, conformance findings, and refusing malformed or Keras 3 models with a reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgepipe.convert import conformance
from edgepipe.convert.tflite import to_float_tflite, to_int8_tflite
from edgepipe.errors import ModelError
from edgepipe.tflite_model import TfliteModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def float_content(trained_mlp: Any) -> bytes:
    return to_float_tflite(trained_mlp)


def test_float_model_fails_conformance_naming_ops_and_tensors(float_content: bytes) -> None:
    report = conformance.check(TfliteModel.read(float_content))
    assert not report.passed
    assert report.input_types == ["float32"]
    float_ops = [f for f in report.findings if f.kind == "float_op"]
    assert {f.op for f in float_ops} >= {"FULLY_CONNECTED"}
    assert any("dense_1" in name for f in float_ops for name in f.tensors)
    assert any("input 0 is float32, not int8" in line for line in report.problems())


def test_dequantize_island_is_found(trained_mlp: Any, digits: Any) -> None:
    """Dynamic-range-free float16 weights give DEQUANTIZE ops: an island in an otherwise checked graph."""
    from edgepipe.keras_compat import tf

    converter = tf().lite.TFLiteConverter.from_keras_model(trained_mlp)
    converter.optimizations = [tf().lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf().float16]
    report = conformance.check(TfliteModel.read(converter.convert()))
    islands = [f for f in report.findings if f.kind == "island"]
    assert islands and all(f.op == "DEQUANTIZE" for f in islands)


def test_int8_model_passes(trained_mlp: Any, digits: Any) -> None:
    report = conformance.check(TfliteModel.read(to_int8_tflite(trained_mlp, digits.representative(32, 0))))
    assert report.passed and report.findings == []


@pytest.mark.parametrize("content", [b"", b"\x00" * 16, b"garbage!" * 10, b"1234TFL3" + b"\xff" * 64])
def test_malformed_flatbuffers_raise_model_error(content: bytes) -> None:
    with pytest.raises(ModelError):
        TfliteModel.read(content)


def test_truncated_model_raises_model_error(float_content: bytes) -> None:
    with pytest.raises(ModelError):
        TfliteModel.read(float_content[: len(float_content) // 3])


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_sequential_is_converted_faithfully(tmp_path: Path, digits: Any, suffix: str) -> None:
    from edgepipe.keras_compat import keras
    from edgepipe.models import load_source

    keras()  # Keras 2 selected before Keras 3's import brings TensorFlow in
    import keras as keras3

    original = keras3.Sequential(
        [
            keras3.layers.Input((8, 8, 1)),
            keras3.layers.Flatten(),
            keras3.layers.Dense(12, activation="relu"),
            keras3.layers.Dense(10),
        ]
    )
    path = tmp_path / f"k3{suffix}"
    original.save(path)  # Keras 3 writes HDF5 with its own layer configs, which tf_keras cannot read
    model = load_source(path, digits)
    assert isinstance(model, keras().Model)
    np.testing.assert_allclose(
        model.predict(digits.x_test[0][:20], verbose=0), np.asarray(original(digits.x_test[0][:20])), atol=1e-5
    )


def test_corrupt_keras_file_is_a_model_error(tmp_path: Path, digits: Any) -> None:
    from edgepipe.models import load_source

    path = tmp_path / "broken.keras"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match=r"not a valid \.keras file"):
        load_source(path, digits)


def test_a_model_whose_kernels_fail_in_the_interpreter_is_a_model_error(digits: Any) -> None:
    """A GroupNormalization converted with a free batch fails preparing its BROADCAST_TO: the host's evaluation
    said so with a traceback and "internal error" (exit 70); now it is the model's error, naming the operator."""
    from edgepipe.convert.evaluate import raw_outputs
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.layers.Input((8, 8, 1))
    x = k.layers.GroupNormalization(groups=2)(k.layers.Conv2D(4, 3)(inputs))
    model = k.Model(inputs, k.layers.Dense(10)(k.layers.Flatten()(x)))
    with pytest.raises(ModelError, match=r"fails in the LiteRT interpreter .*BROADCAST_TO"):
        raw_outputs(to_float_tflite(model), [digits.x_test[0][:8]])


def test_a_dense_on_pixels_converts_at_batch_one_without_shape_arithmetic_and_its_macs_count_every_row() -> None:
    """With a free batch the converter computed each such Dense's shape at run time (SHAPE -> GATHER ->
    REDUCE_PROD -> PACK -> RESHAPE around the FULLY_CONNECTED) and recorded its tensors as one row: the static
    analysis counted 16 x fewer MACs than the layer does."""
    from edgepipe.analyze import analyze
    from edgepipe.convert.evaluate import run
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.Input((8, 8, 1))
    x = k.layers.Conv2D(16, 2, strides=2)(inputs)  # 4 x 4 pixels of 16 channels
    x = k.layers.Dense(64, activation="relu")(x)  # on every pixel
    outputs = k.layers.Dense(10)(k.layers.GlobalAveragePooling2D()(x))
    model = k.Model(inputs, outputs)
    x = np.random.default_rng(0).random((32, 8, 8, 1), dtype=np.float32)
    for content in (to_float_tflite(model), to_int8_tflite(model, x)):
        tflite = TfliteModel.read(content)
        names = [op.name for op in tflite.ops]
        assert "SHAPE" not in names and "PACK" not in names, names
        total = analyze(tflite)["total"]["macs"]
        assert total == 16 * (2 * 2 * 16) + 16 * 16 * 64 + 64 * 10, total
    float_outputs = run(to_float_tflite(model), [x])[0]  # the host evaluates a batch-1 model sample by sample
    assert np.abs(float_outputs - model.predict(x, verbose=0)).max() < 1e-4


def test_a_reshape_or_a_transposed_convolution_converts_at_batch_one_without_shape_arithmetic() -> None:
    """With a free batch a Reshape (squeeze-and-excitation's (C,) -> (1, 1, C)) and a transposed convolution's
    output shape became SHAPE -> STRIDED_SLICE -> PACK at every inference, and XNNPACK left those TRANSPOSE_CONVs
    to TFLite's own kernels: a small U-Net is 1.19x faster at batch 1, paired on the local target
    (bench/batch_one.py)."""
    from edgepipe.convert.evaluate import io_order, run
    from edgepipe.keras_compat import keras

    k = keras()
    image = k.Input((8, 8, 2))
    x = k.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(image)
    gate = k.layers.Reshape((1, 1, 8))(k.layers.GlobalAveragePooling2D()(x))
    x = k.layers.Multiply()([x, k.layers.Conv2D(8, 1, activation="sigmoid")(gate)])
    mask = k.layers.Conv2DTranspose(1, 2, strides=2, name="mask")(x)
    steps = k.Input((8, 3))
    series = k.layers.Conv1DTranspose(2, 2, strides=2, name="series")(k.layers.Conv1D(4, 2, strides=2)(steps))
    model = k.Model([image, steps], [mask, series])
    rng = np.random.default_rng(0)
    x = [rng.random((16, 8, 8, 2), dtype=np.float32), rng.random((16, 8, 3), dtype=np.float32)]
    for content in (to_float_tflite(model), to_int8_tflite(model, x)):
        names = [op.name for op in TfliteModel.read(content).ops]
        assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(names), names
        assert names.count("TRANSPOSE_CONV") == 2, names
    expected = model.predict(x, verbose=0)
    content = to_float_tflite(model)
    got = run(content, x, io_order(content, model.input_names, model.output_names))  # a sample at a time
    for outputs, want in zip(got, expected, strict=True):
        assert np.abs(outputs - want.reshape(len(want), -1)).max() < 1e-4


def test_qat_starts_from_the_activation_ranges_the_data_gives_not_tf_mots_six() -> None:
    """TF-MOT starts every activation range at [-6, 6] and moves it 0.1 % per step: a short fine-tune left a
    regression output of 0 .. 20 clipped near 6, in training and in the converted model."""
    from edgepipe.keras_compat import keras, tfmot
    from edgepipe.optimization import qat_ranges

    k = keras()
    model = k.Sequential([k.Input((8,)), k.layers.Dense(1, kernel_initializer=k.initializers.Constant(2.5))])
    x = np.random.default_rng(0).random((600, 8), dtype=np.float32)
    highest = float(model.predict(x[:512], verbose=0).max())  # the calibration uses the first 512 samples
    assert highest > 15
    quantized = tfmot().quantization.keras.quantize_model(model)
    ranges = {w.name.split("/")[-1]: w for w in quantized.layers[-1].weights if "post_activation" in w.name}
    assert float(ranges["post_activation_max:0"].numpy()) == 6.0  # TF-MOT's start
    assert qat_ranges.calibrate(quantized, x) == 512
    assert float(ranges["post_activation_max:0"].numpy()) == pytest.approx(highest, rel=2e-3)  # inputs fake-quantized
    assert float(ranges["post_activation_min:0"].numpy()) == 0.0  # the outputs are positive; 0 stays in range
    converted = TfliteModel.read(to_int8_tflite(quantized, x[:64]))
    output = converted.tensors[converted.outputs[0]]
    top = (127 - int(output.zero_point[0])) * float(output.scale[0])
    assert top == pytest.approx(highest, rel=0.02), top  # the int8 output reaches what the float one does


def test_the_activation_ranges_are_measured_without_dropout_as_the_int8_model_runs() -> None:
    """Measured with Dropout(0.5) active, a range started about twice as wide as the converted model needs."""
    from edgepipe.keras_compat import keras, tfmot
    from edgepipe.optimization import qat_ranges

    k = keras()
    model = k.Sequential([k.Input((8,)), k.layers.Dense(16, activation="relu"), k.layers.Dropout(0.5),
                          k.layers.Dense(1, kernel_initializer=k.initializers.Constant(0.5))])  # fmt: skip
    x = np.random.default_rng(0).random((512, 8), dtype=np.float32)
    highest = float(model.predict(x, verbose=0).max())  # inference: no dropout
    quantized = tfmot().quantization.keras.quantize_model(model)
    qat_ranges.calibrate(quantized, x)
    top = next(w for w in quantized.layers[-1].weights if "post_activation_max" in w.name)
    assert float(top.numpy()) == pytest.approx(highest, rel=0.02)
    inner = [getattr(layer, "layer", layer) for layer in quantized.layers]
    dropout = next(layer for layer in inner if type(layer).__name__ == "Dropout")
    assert dropout.rate == 0.5  # switched back on for the fine-tune


def test_weights_folded_with_a_batchnorm_are_named_after_the_layer_that_owns_them() -> None:
    """A BatchNormalization folded into a Dense or a depthwise convolution names the folded kernel
    ("model/batch_normalization_3/batchnorm/mul_1"): the weights column, the report's layers and the profile
    called those operators after the BatchNorm."""
    from edgepipe.analyze.static import analyze
    from edgepipe.convert.weights import kernel_layers, weight_stats
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.Input((8, 8, 2))
    x = k.layers.BatchNormalization(name="input_bn")(inputs)  # folded into nothing: MUL and ADD of its own
    x = k.layers.ReLU()(k.layers.BatchNormalization()(k.layers.Conv2D(4, 3, use_bias=False, name="conv")(x)))
    x = k.layers.ReLU()(k.layers.BatchNormalization()(k.layers.DepthwiseConv2D(3, use_bias=False, name="dw")(x)))
    x = k.layers.Flatten(name="flat")(k.layers.BatchNormalization()(k.layers.Conv2D(4, 1, name="pw")(x)))
    x = k.layers.ReLU()(k.layers.BatchNormalization()(k.layers.Dense(8, use_bias=False, name="fc")(x)))
    model = k.Model(inputs, k.layers.Dense(3, name="out")(x))
    rng = np.random.default_rng(0)
    for layer in model.layers:  # statistics that change the kernels when folded
        if isinstance(layer, k.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])
    names = kernel_layers(model)
    assert names == ["conv", "dw", "pw", "fc", "out"]  # no normalization
    for content in (to_float_tflite(model), to_int8_tflite(model, rng.random((16, 8, 8, 2), dtype=np.float32))):
        converted = TfliteModel.read(content)
        rows = weight_stats(converted, names)
        assert [(row["op"], row["layer"]) for row in rows] == [
            ("CONV_2D", "conv"), ("DEPTHWISE_CONV_2D", "dw"), ("CONV_2D", "pw"),
            ("FULLY_CONNECTED", "fc"), ("FULLY_CONNECTED", "out"),
        ]  # fmt: skip
        assert "batch_normalization" in rows[1]["tensor"] and "batch_normalization" in rows[3]["tensor"]
        operators = [(row["op"], row["layer"]) for row in analyze(converted)["layers"]]
        assert operators == [
            ("MUL", "input_bn"), ("ADD", "input_bn"), ("CONV_2D", "conv"), ("DEPTHWISE_CONV_2D", "dw"),
            ("CONV_2D", "pw"), ("RESHAPE", "flat"), ("FULLY_CONNECTED", "fc"), ("FULLY_CONNECTED", "out"),
        ]  # fmt: skip
