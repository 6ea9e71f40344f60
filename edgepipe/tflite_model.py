"""Read a .tflite flatbuffer into plain dataclasses: tensors (type, shape, quantization, constant data) and ops.

Conformance, weight statistics and static analysis all read the model *itself* — not what an interpreter
reports after its own rewrites — through the schema bindings that ship with ai-edge-litert (no TensorFlow).
Only the main subgraph (index 0) is read; control flow subgraphs are listed as ops that call them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from edgepipe.errors import ModelError

FILE_IDENTIFIER = b"TFL3"

_NUMPY = {
    "FLOAT32": np.float32,
    "FLOAT16": np.float16,
    "FLOAT64": np.float64,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT16": np.int16,
    "UINT16": np.uint16,
    "INT32": np.int32,
    "UINT32": np.uint32,
    "INT64": np.int64,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
}


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    dtype: str  # lower-case schema name: "int8", "float32", ...
    shape: tuple[int, ...]
    data: np.ndarray | None  # constant contents, None for activations
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    quantized_dimension: int
    variable: bool = False  # state the interpreter keeps between invocations (a fused LSTM's)

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.elements * itemsize(self.dtype)


@dataclass(frozen=True)
class Op:
    index: int
    name: str  # builtin operator name ("FULLY_CONNECTED") or "CUSTOM:<code>"
    inputs: tuple[int, ...]  # tensor indices; -1 marks an omitted optional input
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class TfliteModel:
    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraphs: int

    @classmethod
    def read(cls, source: bytes | str | os.PathLike[str]) -> TfliteModel:
        """A model from its bytes or from a file (a path as a string too: read as bytes, it was "not a TFLite
        model")."""
        content = bytes(source) if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
        return _parse(content)

    @property
    def stateful(self) -> bool:
        """Whether invocations share state (variable tensors, e.g. a fused LSTM's hidden and cell state): a
        model converted from a Keras RNN must then have them reset before each inference, or each answer
        depends on the samples before it."""
        return any(tensor.variable for tensor in self.tensors)

    def op_inputs(self, op: Op) -> list[Tensor]:
        return [self.tensors[i] for i in op.inputs if i >= 0]

    def op_outputs(self, op: Op) -> list[Tensor]:
        return [self.tensors[i] for i in op.outputs if i >= 0]


def itemsize(dtype: str) -> int:
    numpy_type = _NUMPY.get(dtype.upper())
    if numpy_type is not None:
        return np.dtype(numpy_type).itemsize
    return {"int4": 1, "bfloat16": 2, "complex64": 8, "complex128": 16}.get(dtype, 4)


@cache
def _names(enum: type) -> dict[int, str]:
    return {value: key for key, value in vars(enum).items() if not key.startswith("_") and isinstance(value, int)}


def _parse(content: bytes) -> TfliteModel:
    from ai_edge_litert import schema_py_generated as schema

    if len(content) < 8 or content[4:8] != FILE_IDENTIFIER:
        raise ModelError("not a TFLite model: the file identifier 'TFL3' is missing")
    try:
        model = schema.Model.GetRootAs(content, 0)
        graph = model.Subgraphs(0)
        if graph is None:
            raise ValueError("no subgraph")
        type_names = _names(schema.TensorType)
        op_names = _names(schema.BuiltinOperator)
        codes = []
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            custom = code.CustomCode()
            codes.append(f"CUSTOM:{custom.decode()}" if custom else op_names.get(builtin, f"BUILTIN_{builtin}"))
        tensors = tuple(_tensor(model, graph.Tensors(i), i, type_names, content) for i in range(graph.TensorsLength()))
        ops = tuple(_op(graph.Operators(i), i, codes) for i in range(graph.OperatorsLength()))
        return TfliteModel(
            tensors=tensors,
            ops=ops,
            inputs=tuple(int(t) for t in graph.InputsAsNumpy()),
            outputs=tuple(int(t) for t in graph.OutputsAsNumpy()),
            subgraphs=model.SubgraphsLength(),
        )
    except ModelError:
        raise
    except Exception as exc:  # a malformed flatbuffer fails in many ways inside the generated reader
        raise ModelError(f"malformed TFLite flatbuffer: {type(exc).__name__}: {exc}") from None


def _op(op: object, index: int, codes: list[str]) -> Op:
    inputs = tuple(int(t) for t in op.InputsAsNumpy()) if op.InputsLength() else ()
    outputs = tuple(int(t) for t in op.OutputsAsNumpy()) if op.OutputsLength() else ()
    return Op(index, codes[op.OpcodeIndex()], inputs, outputs)


def _tensor(model: object, tensor: object, index: int, type_names: dict[int, str], content: bytes) -> Tensor:
    dtype = type_names.get(tensor.Type(), f"type_{tensor.Type()}").lower()
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    data = None
    buffer = model.Buffers(tensor.Buffer()) if tensor.Buffer() > 0 else None
    if buffer is not None:
        raw: bytes | None = None
        if buffer.DataLength():
            raw = buffer.DataAsNumpy().tobytes()
        elif buffer.Offset() > 1:  # large models keep buffers after the flatbuffer
            raw = content[buffer.Offset() : buffer.Offset() + buffer.Size()]
        numpy_type = _NUMPY.get(dtype.upper())
        if raw is not None and numpy_type is not None:
            data = np.frombuffer(raw, dtype=numpy_type).reshape(shape)
        elif raw is not None:
            data = np.frombuffer(raw, dtype=np.uint8)
    quantization = tensor.Quantization()
    scale = zero_point = None
    dimension = 0
    if quantization is not None and quantization.ScaleLength():
        scale = quantization.ScaleAsNumpy().astype(np.float64)
        zero_point = quantization.ZeroPointAsNumpy().astype(np.int64)
        dimension = quantization.QuantizedDimension()
    name = tensor.Name().decode(errors="replace") if tensor.Name() else f"tensor_{index}"
    return Tensor(index, name, dtype, shape, data, scale, zero_point, dimension, bool(tensor.IsVariable()))
