"""Keras -> TFLite: the float reference model and the full-integer (int8 weights and activations) model.

Full-integer means ``TFLITE_BUILTINS_INT8`` only: the converter fails rather than fall back to a float kernel,
and inputs/outputs are int8 (or uint8). The converter's own C++ log goes to a captured file descriptor so the
terminal stays readable; its last lines are put in the error when conversion fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from edgepipe.errors import ConversionError
from edgepipe.keras_compat import all_layers, tf
from edgepipe.native_log import captured_stderr


def _convert(converter: Any, what: str) -> bytes:
    import warnings

    with captured_stderr() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bytes(converter.convert())
        except Exception as exc:
            error = exc
    detail = list(dict.fromkeys(_readable(line) for line in log if "error" in line.lower()))[-3:]
    detail = detail or [_readable(line) for line in log[-3:]]
    first = _readable(str(error).strip().splitlines()[0]) if str(error).strip() else type(error).__name__
    detail = [line for line in detail if line != first]
    raise ConversionError(
        f"{what} conversion failed: {first}" + (f" | converter log: {' | '.join(detail)}" if detail else ""),
        hint="an operator without an int8 kernel cannot be fully quantized; check the layers of the model"
        if what == "full-integer"
        else "the converter cannot turn an operation of this model into a TFLite operator (the message names it); "
        "replace that layer, or convert the model yourself and deploy it with --model",
    )


def _readable(line: str) -> str:
    """The converter's own words: MLIR prefixes each error with the call stack it came from (``loc(callsite(...
    at callsite(...)))``, thousands of characters of Python file names); keep what follows the last "error: "."""
    text = line.strip()
    if "error: " in text:
        text = text.rsplit("error: ", 1)[1]
    return text if len(text) <= 400 else text[:400] + " ..."


def _recurrent_cells(model: Any) -> Iterator[tuple[str, Any]]:
    """(layer name, recurrent layer) for every RNN in ``model``: a Bidirectional's two directions, nested models'."""
    from edgepipe.keras_compat import keras

    layers = keras().layers
    for layer in model.layers:
        if isinstance(layer, layers.Bidirectional):
            yield from ((layer.name, cell) for cell in (layer.forward_layer, layer.backward_layer))
        elif isinstance(layer, layers.RNN):
            yield layer.name, layer
        elif hasattr(layer, "layers"):
            yield from _recurrent_cells(layer)


def is_recurrent(model: Any) -> bool:
    """Whether ``model`` (or a model nested in it) has a recurrent layer: LSTM, GRU, SimpleRNN, Bidirectional."""
    return any(True for _ in _recurrent_cells(model))


def refuse_looped_recurrent(model: Any) -> None:
    """Refuse, by name, the recurrent layers the converter keeps as a loop (every RNN but LSTM, which becomes one
    fused operator, unless built with ``unroll=True``): their full-integer conversion dies with a segmentation
    fault (TF 2.21, GRU and SimpleRNN). The pipeline asks before training, so no time is spent first."""
    from edgepipe.keras_compat import keras

    lstm = keras().layers.LSTM
    looped = [
        f"{name} ({type(cell).__name__})"
        for name, cell in _recurrent_cells(model)
        if not isinstance(cell, lstm) and not cell.unroll
    ]
    if looped:
        raise ConversionError(
            f"full-integer conversion of {', '.join(looped)}: TFLite has no fused operator for it, and the "
            "converter crashes on the loop it would become",
            hint="build the layer with unroll=True (a fixed number of time steps: plain operators, which quantize), "
            "or use an LSTM (one fused UNIDIRECTIONAL_SEQUENCE_LSTM operator)",
        )


# Layers no integer-only model can come out of (TF 2.21's converter): why, and what to use instead.
UNCONVERTIBLE_LAYERS = {
    "GroupNormalization": (
        "its variance becomes a SQUARE, which TFLite has no int8 kernel for (the model would keep DEQUANTIZE -> "
        "SQUARE -> QUANTIZE), and converted with a free batch size its BROADCAST_TO fails in the interpreter",
        "use LayerNormalization (its SQUARED_DIFFERENCE is int8) or BatchNormalization",
    ),
    "Conv3D": (
        "TFLite's CONV_3D kernel is float only (the model would keep DEQUANTIZE -> CONV_3D -> QUANTIZE)",
        "stack the frames on the channel axis and use Conv2D, or run a Conv2D on each frame (TimeDistributed) "
        "and mix the frames with a Conv1D over time ((2+1)-D)",
    ),
    "Conv3DTranspose": (
        "TFLite's CONV_3D_TRANSPOSE kernel is float only",
        "upsample each frame with Conv2DTranspose (TimeDistributed), or stack the frames on the channel axis",
    ),
    "MaxPooling3D": (
        "TFLite has no 3-D pooling operator (the converter fails on tf.MaxPool3D)",
        "pool each frame with MaxPooling2D (TimeDistributed), or use GlobalMaxPooling3D, which converts",
    ),
    "AveragePooling3D": (
        "TFLite has no 3-D pooling operator (the converter fails on tf.AvgPool3D)",
        "pool each frame with AveragePooling2D (TimeDistributed), or use GlobalAveragePooling3D, which converts",
    ),
    "ELU": (
        "the converter keeps ELU in float (DEQUANTIZE -> ELU -> QUANTIZE), after PTQ as after QAT",
        "use selu, leaky_relu or relu instead of elu",
    ),
    "ThresholdedReLU": (
        "its comparison becomes a float CAST (not integer-only)",
        "use ReLU without a threshold (max_value and negative_slope convert: RELU6, LEAKY_RELU)",
    ),
    # Not a class: a ReLU built with threshold != 0 (see _thresholded), which the converter writes the same way.
    "ReLU with a threshold": (
        "its comparison with the threshold becomes GREATER -> float CAST (not integer-only)",
        "use ReLU without a threshold (max_value and negative_slope convert: RELU6, LEAKY_RELU)",
    ),
    **{
        kind: (
            f"TFLite has no operator for its {operation}: even the float model would not convert",
            "encode in the data function instead (one-hot columns, or integer ids read by an Embedding) and give "
            "the model the encoded values",
        )
        for kind, operation in (
            ("IntegerLookup", "lookup table (tf.HashTableV2)"),
            ("StringLookup", "lookup table (tf.HashTableV2)"),
            ("CategoryEncoding", "counting (tf.DenseBincount)"),
            ("Hashing", "string hashing (tf.AsString, tf.StringToHashBucketFast)"),
            ("HashedCrossing", "string hashing"),
            ("TextVectorization", "string operations"),
        )
    },
    "Masking": (
        "TFLite has no masks: the mask becomes float NOT_EQUAL and CAST operators (not integer-only), and an LSTM "
        "reading it the loop the converter crashes on (SIGSEGV, TF 2.21)",
        "remove the Masking layer and train on the padded sequences as they are (the padding is then data the "
        "model learns to ignore), or cut the sequences to a fixed length",
    ),
}


def refuse_unconvertible(model: Any) -> None:
    """Before any training: refuse what no full-integer model can come out of, by name, with the fix."""
    refuse_looped_recurrent(model)
    masked = [layer.name for layer in all_layers(model) if getattr(layer, "mask_zero", False)]
    if masked:
        raise ConversionError(
            f"full-integer conversion of {', '.join(masked)} (Embedding, mask_zero=True): TFLite has no masks: the "
            "mask becomes float CAST operators (not integer-only), and an LSTM reading it the loop the converter "
            "crashes on (SIGSEGV, TF 2.21)",
            hint="build the Embedding with mask_zero=False and train on the padded sequences as they are",
        )
    blocked: dict[str, list[str]] = {}  # kind -> "name (what)"
    for layer in all_layers(model):
        kind = type(layer).__name__
        if kind not in UNCONVERTIBLE_LAYERS and _float_only_activation(layer):
            blocked.setdefault("ELU", []).append(f"{layer.name} ({kind} with activation 'elu')")
        elif _thresholded(layer):
            blocked.setdefault("ReLU with a threshold", []).append(
                f"{layer.name} (ReLU, threshold={layer.threshold:g})"
            )
        elif kind in UNCONVERTIBLE_LAYERS:
            blocked.setdefault(kind, []).append(f"{layer.name} ({kind})")
    if blocked:
        reasons = [f"{', '.join(names)}: {UNCONVERTIBLE_LAYERS[kind][0]}" for kind, names in blocked.items()]
        fixes = dict.fromkeys(UNCONVERTIBLE_LAYERS[kind][1] for kind in blocked)  # in order, once each
        raise ConversionError(f"full-integer conversion of {'; '.join(reasons)}", hint="; ".join(fixes))


def _thresholded(layer: Any) -> bool:
    """A ReLU layer with a threshold other than 0 (``ReLU(threshold=0.2)``)."""
    return type(layer).__name__ == "ReLU" and float(getattr(layer, "threshold", 0.0) or 0.0) != 0.0


def _float_only_activation(layer: Any) -> bool:
    """Whether a layer computes ELU as its activation (``Dense(activation="elu")``, ``Activation("elu")``),
    refused like the ELU layer. A recurrent layer's activations are its gates' and are not checked."""
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "elu" and not hasattr(layer, "cell")


# Layers that multiply along the last axis of a tensor of any rank: on more than two axes (a Dense on a sequence
# or on an image's pixels, attention's projections) with a free batch size, TensorFlow computes the shape of
# their matrix product at run time.
LAST_AXIS_PRODUCTS = ("Dense", "EinsumDense", "MultiHeadAttention")
# Layers whose output shape TensorFlow builds from the batch size at run time when it is free: a Reshape
# (``tf.shape(x)[0]`` and the target shape: squeeze-and-excitation's ``(C,)`` -> ``(1, 1, C)``, QAT's lifted 1-D
# layers) and a transposed convolution's output shape (a U-Net's or an autoencoder's decoder) become SHAPE ->
# STRIDED_SLICE -> PACK at every inference; XNNPACK then leaves such a TRANSPOSE_CONV to TFLite's own kernels.
BATCH_SHAPED = ("Reshape", "Conv1DTranspose", "Conv2DTranspose")


def _shapes_depend_on_the_batch(model: Any) -> bool:
    """Whether a free batch size would leave shape arithmetic in the converted model: a Dense on a rank-3 or
    rank-4 tensor becomes SHAPE -> GATHER -> REDUCE_PROD -> PACK -> RESHAPE -> FULLY_CONNECTED -> RESHAPE, which
    the board runs at every inference, and whose tensors the file records without their sizes (a ConvNeXt-style
    block's MACs then counted one row of its Dense layers). QAT's wrappers are looked through."""
    for layer in all_layers(model):
        inner = getattr(layer, "layer", layer)
        if type(inner).__name__ in BATCH_SHAPED:
            return True
        if type(inner).__name__ not in LAST_AXIS_PRODUCTS:
            continue
        try:
            shape = layer.input_shape
        except (AttributeError, RuntimeError):  # called on several inputs: look no further, convert at batch 1
            return True
        first = shape[0] if isinstance(shape, list) else shape
        if first is not None and len(first) > 2:
            return True
    return False


def _batch_one(model: Any) -> bool:
    """Whether ``converter_for`` converts ``model`` at batch 1 whatever is asked (its docstring says why)."""
    return is_recurrent(model) or _shapes_depend_on_the_batch(model)


def converter_for(model: Any, batch_one: bool = False) -> Any:
    """The converter of ``model``'s inference function, from a tf.function traced at a free batch size or, for a
    model whose converted form would depend on it, at batch 1, the batch a board runs. Those are a recurrent
    model (the converter turns a Keras LSTM into TFLite's fused UNIDIRECTIONAL_SEQUENCE_LSTM only when the batch
    is static; with a dynamic one it leaves TensorList ops it cannot lower, and fails) and one with a Dense on a
    sequence or an image, a Reshape or a transposed convolution (``_shapes_depend_on_the_batch``: a
    ConvNeXt-style block at batch 1 is 53 operators instead of 89, 25 % fewer bytes and 5 % faster on the host; a
    small ViT 111 instead of 196; bench/batch_one.py times a U-Net and a squeeze-and-excitation model). The
    function's signature keeps the Keras input and output names. The fused LSTM keeps its state in variable
    tensors between invocations, so whoever runs it resets them before each one (see ``TfliteModel.stateful``).

    The converter gets the model's variables, not the model: given a Keras model (``from_keras_model``, or as
    the functions' owner) it first exports it as a Keras SavedModel, tracing every layer's call. That was 9.4 s
    of a small QAT CNN's 13.5 s conversion; the variables alone give the same operators and weights (only the
    file's note of what it was converted from differs), a plain CNN's float conversion 0.4 s instead of 2.1 s.

    ``batch_one`` asks for batch 1 whatever the model (see ``_at_batch_one``).
    """
    tensorflow = tf()
    batch = 1 if batch_one or _batch_one(model) else None
    names_in, names_out = list(model.input_names), list(model.output_names)
    specs = [
        tensorflow.TensorSpec([batch, *tensor.shape[1:]], tensor.dtype, name=name)
        for tensor, name in zip(model.inputs, names_in, strict=True)
    ]

    def call(*inputs: Any) -> dict[str, Any]:
        outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        return dict(zip(names_out, outputs, strict=True))

    concrete = tensorflow.function(call).get_concrete_function(*specs)
    variables = tensorflow.Module()  # keeps them tracked (and alive) while the converter saves the function
    variables.held = list(model.variables)
    return tensorflow.lite.TFLiteConverter.from_concrete_functions([concrete], variables)


def _at_batch_one(model: Any, convert: Callable[[Any], bytes], notes: list[str] | None = None) -> bytes:
    """``convert(converter)`` at a free batch size, and again at batch 1, the batch a board runs, when that
    fails. Some TensorFlow operations convert only when every size is known: an in-model spectrogram front end
    (``tf.signal.stft`` then ``[..., None]``) leaves a STRIDED_SLICE with a new axis on a tensor of unknown
    size, which TFLite has no builtin for ("'tf.StridedSlice' op is neither a custom op nor a flex op"), and at
    batch 1 it converts. When batch 1 fails too, its error is the one raised: it is what the board's model
    would meet. ``notes`` gets a line saying why when batch 1 was the way out."""
    if _batch_one(model):  # converted at batch 1 already
        return convert(converter_for(model))
    try:
        return convert(converter_for(model))
    except ConversionError as error:
        at_free_batch = error.message.split(" | ")[0]  # without the converter log
    converted = convert(converter_for(model, batch_one=True))
    if notes is not None:
        notes.append(
            f"converted at batch 1, the batch a board runs: at a free batch size the {at_free_batch} (a new axis "
            "or a slice on a tensor whose size the free batch leaves unknown)"
        )
    return converted


def to_float_tflite(model: Any, notes: list[str] | None = None) -> bytes:
    """The float32 TFLite model: the size and accuracy reference every stage is compared with; ``notes`` gets
    a line when it had to be converted at batch 1."""
    return _at_batch_one(model, lambda converter: _convert(converter, "float TFLite"), notes)


def to_int8_tflite(model: Any, representative: np.ndarray | Sequence[np.ndarray], io_type: str = "int8") -> bytes:
    """Full-integer TFLite; ``representative`` samples (from the training split, one array per input)
    calibrate the activation ranges."""
    refuse_unconvertible(model)
    return _at_batch_one(model, lambda converter: _full_integer(converter, model, representative, io_type))


def _full_integer(converter: Any, model: Any, representative: np.ndarray | Sequence[np.ndarray], io_type: str) -> bytes:
    """``converter`` (of ``model``) set for int8 kernels only, calibrated on ``representative``, and run."""
    tensorflow = tf()
    converter.optimizations = [tensorflow.lite.Optimize.DEFAULT]
    arrays = [representative] if isinstance(representative, np.ndarray) else list(representative)
    # an index input (token ids into an Embedding) is int32 in the model and must be calibrated as such
    dtypes = [np.dtype(getattr(t.dtype, "as_numpy_dtype", np.float32)) for t in model.inputs]
    samples = [np.asarray(a, dtype=dtype) for a, dtype in zip(arrays, dtypes, strict=True)]
    names = list(model.input_names)

    def calibration() -> Iterator[list[np.ndarray] | dict[str, np.ndarray]]:
        for i in range(len(samples[0])):
            if len(samples) == 1:
                yield [samples[0][i : i + 1]]
            else:  # by signature name: the converter's input order need not be Keras'
                yield {name: sample[i : i + 1] for name, sample in zip(names, samples, strict=True)}

    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tensorflow.lite.OpsSet.TFLITE_BUILTINS_INT8]
    io = {"int8": tensorflow.int8, "uint8": tensorflow.uint8}[io_type]
    converter.inference_input_type = io
    converter.inference_output_type = io
    return _convert(converter, "full-integer")
