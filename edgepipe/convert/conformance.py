"""Is the converted model integer-only? Read from the flatbuffer, op by op.

A model passes when its inputs and outputs have the integer type asked for and no operator touches a float
tensor. An input of type int32 or int64 without quantization parameters is an index input (token ids into an
Embedding, which becomes GATHER): it holds integers already and is taken as it is (``index_inputs``).
Findings are listed by operator and tensor name:

- ``float_op``: an operator with a float input, output or weight — it would run a float kernel on the board;
- ``island``: a DEQUANTIZE (integer -> float) or a QUANTIZE from float, the edges of a float region inside
  an otherwise integer graph. (A QUANTIZE from int8 to uint8 or back is a requantization and is fine.)
- ``bad_scale``: a quantized tensor whose scale is NaN, infinite, zero or negative. Such a model still loads
  and runs everywhere, identically wrong on host and board (every value maps to one integer), so no accuracy
  comparison catches it; only the file itself can. ``bad_scales`` lists any model's, float or not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from edgepipe.convert.weights import layer_name
from edgepipe.errors import ConformanceError
from edgepipe.tflite_model import Op, TfliteModel

FLOAT_TYPES = {"float32", "float16", "float64", "bfloat16"}
INDEX_TYPES = {"int32", "int64"}


@dataclass
class Finding:
    kind: str  # "float_op" | "island" | "bad_scale"
    op_index: int
    op: str
    tensors: list[str]
    detail: str


@dataclass
class ConformanceReport:
    io_type: str
    input_types: list[str]
    output_types: list[str]
    findings: list[Finding] = field(default_factory=list)
    index_inputs: list[int] = field(default_factory=list)  # positions of int32/int64 inputs without a scale

    @property
    def passed(self) -> bool:
        return not self._wrong_io() and not self.findings

    def _wrong_io(self) -> list[str]:
        inputs = [(i, t) for i, t in enumerate(self.input_types) if i not in self.index_inputs]
        return [f"input {i} is {t}, not {self.io_type}" for i, t in inputs if t != self.io_type] + [
            f"output {i} is {t}, not {self.io_type}" for i, t in enumerate(self.output_types) if t != self.io_type
        ]

    @property
    def bad_scales(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "bad_scale"]

    def problems(self) -> list[str]:
        """One short line per problem, for error messages."""
        lines = self._wrong_io()
        lines += [f"{f.kind} #{f.op_index} {f.op} ({', '.join(f.tensors)}): {f.detail}" for f in self.findings]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "io_type": self.io_type,
            "input_types": self.input_types,
            "output_types": self.output_types,
            "index_inputs": self.index_inputs,
            "float_ops": [asdict(f) for f in self.findings if f.kind == "float_op"],
            "islands": [asdict(f) for f in self.findings if f.kind == "island"],
            "bad_scales": [asdict(f) for f in self.bad_scales],
        }


# Operators with float kernels only in TFLite (TF 2.21): the converter keeps them in float in a full-integer model
# whatever the stages did (measured with PTQ and with QAT), so finding one in the float model is enough to stop.
# What to write instead.
SPECTROGRAM = (
    "TFLite's FFT has float kernels only, so an in-model spectrogram (tf.signal.stft) stays in float: compute "
    "the spectrogram in the data function and give the model the features (on the board, the application "
    "computes them, as TFLite Micro's audio front end does)"
)
FLOAT_ONLY_OPS = {
    "ELU": "the converter keeps ELU in float (after PTQ as after QAT): use selu, leaky_relu or relu instead of elu",
    "RFFT2D": SPECTROGRAM,
    "COMPLEX_ABS": SPECTROGRAM,
}


def refuse_float_only_ops(model: TfliteModel, keras_layers: list[str]) -> None:
    """Stop at the float model when it has an operator no full-integer model can run in integers (an RFFT2D
    from tf.signal.stft): every stage would train, and the final check would fail on the same operator. The
    message names each operator with the Keras layer it came from."""
    found = [op for op in model.ops if op.name in FLOAT_ONLY_OPS]
    if not found:
        return
    named = []
    for op in found:
        outputs = model.op_outputs(op)
        where = layer_name(outputs[0].name, keras_layers) if outputs else "?"
        named.append(f"{op.name} #{op.index} (layer {where})")
    advice = dict.fromkeys(FLOAT_ONLY_OPS[op.name] for op in found)  # in order, once each
    raise ConformanceError(
        f"no full-integer model can come out of this one: TFLite runs {', '.join(named)} in float only",
        hint="; ".join(advice),
    )


def check(model: TfliteModel, io_type: str = "int8") -> ConformanceReport:
    report = ConformanceReport(
        io_type=io_type,
        input_types=[model.tensors[i].dtype for i in model.inputs],
        output_types=[model.tensors[i].dtype for i in model.outputs],
        index_inputs=[
            position
            for position, i in enumerate(model.inputs)
            if model.tensors[i].dtype in INDEX_TYPES
            and (model.tensors[i].scale is None or not model.tensors[i].scale.size)
        ],
    )
    seen: set[int] = set()
    for op in model.ops:
        finding = _inspect(model, op)
        if finding:
            report.findings.append(finding)
        report.findings += _scales(model, op, seen)
    return report


def _scales(model: TfliteModel, op: Op, seen: set[int]) -> list[Finding]:
    """Each wrongly scaled tensor once, at the first operator that uses it."""
    findings = []
    for tensor in [*model.op_inputs(op), *model.op_outputs(op)]:
        if tensor.index in seen or tensor.scale is None or not tensor.scale.size:
            continue
        seen.add(tensor.index)
        wrong = [float(v) for v in tensor.scale if not (math.isfinite(float(v)) and float(v) > 0)]
        if wrong:
            findings.append(
                Finding(
                    "bad_scale", op.index, op.name, [tensor.name], f"quantization scale {wrong[0]} of {tensor.name}"
                )
            )
    return findings


def _inspect(model: TfliteModel, op: Op) -> Finding | None:
    ins, outs = model.op_inputs(op), model.op_outputs(op)
    in_types = {t.dtype for t in ins}
    out_types = {t.dtype for t in outs}
    # DEQUANTIZE always leaves the integer domain; QUANTIZE from a float type enters it.
    if op.name == "DEQUANTIZE" or (op.name == "QUANTIZE" and in_types & FLOAT_TYPES):
        return Finding(
            "island",
            op.index,
            op.name,
            [t.name for t in [*ins, *outs]],
            f"converts {'/'.join(sorted(in_types))} to {'/'.join(sorted(out_types))}",
        )
    floats = [t for t in [*ins, *outs] if t.dtype in FLOAT_TYPES]
    if floats:
        return Finding(
            "float_op",
            op.index,
            op.name,
            [t.name for t in floats],
            "runs on " + "/".join(sorted({t.dtype for t in floats})) + " tensors",
        )
    return None
