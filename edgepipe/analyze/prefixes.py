"""The prefixes of a model that the agent times to measure each operator: prefix k runs operators 0..k.

The Python runtimes have no op profiler, so the time of operator k is measured as the time of prefix k minus the
time of prefix k-1 (prefix -1 runs no operator: the invoke overhead). Every prefix is the model's own bytes with
two vectors of the first subgraph edited in place, so the board receives one file and builds each prefix itself
with a few byte writes (no flatbuffer library needed there):

- the operators vector's length is set to k+1 (the interpreter executes the operators in file order, so the
  prefix runs exactly the first k+1 of them);
- the outputs vector lists every tensor produced by operators 0..k that a later operator reads or the model
  outputs. Nothing computed in the prefix is left dangling, so no delegate can drop it as dead code (XNNPACK
  removes nodes whose outputs nobody reads) and the prefix does exactly the model's work up to k.

The file sent to the board is the model re-serialised with its outputs vector long enough for the largest cut
(the offsets of both vectors are found with the schema's reader). Each prefix is checked here by parsing it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepipe.errors import ModelError
from edgepipe.tflite_model import TfliteModel

_SUBGRAPH_OUTPUTS = 8  # vtable offsets of the Subgraph table's fields: outputs is field 2, operators field 3
_SUBGRAPH_OPERATORS = 10


@dataclass(frozen=True)
class PrefixPlan:
    """What the agent needs to build every prefix of ``content``."""

    content: bytes  # the model with room for the largest cut's outputs
    operators_length_at: int  # byte offset of the operators vector's length (uint32)
    outputs_at: int  # byte offset of the outputs vector's first element (int32 each; the length before it)
    cuts: list[list[int]]  # cuts[k + 1]: the outputs of prefix k (cuts[0]: prefix -1, the graph inputs)

    def to_job(self, remote_path: str) -> dict[str, object]:
        return {
            "model": remote_path,
            "operators_length_at": self.operators_length_at,
            "outputs_at": self.outputs_at,
            "cuts": self.cuts,
        }

    def prefix(self, k: int) -> bytes:
        """Prefix k's bytes (what the agent builds: the same writes, mirrored here for the check)."""
        return build_prefix(self.content, self.operators_length_at, self.outputs_at, k, self.cuts[k + 1])


def build_prefix(content: bytes, operators_length_at: int, outputs_at: int, k: int, outputs: list[int]) -> bytes:
    edited = bytearray(content)
    struct.pack_into("<I", edited, operators_length_at, k + 1)
    struct.pack_into("<I", edited, outputs_at - 4, len(outputs))
    struct.pack_into(f"<{len(outputs)}i", edited, outputs_at, *outputs)
    return bytes(edited)


def cuts(model: TfliteModel) -> list[list[int]]:
    """The outputs of every prefix: what operators 0..k produced that is still needed after k."""
    produced: dict[int, int] = {}
    last_read: dict[int, int] = {}
    for op in model.ops:
        for t in op.inputs:
            if t >= 0:
                last_read[t] = op.index
        for t in op.outputs:
            if t >= 0:
                produced.setdefault(t, op.index)
    final = set(model.outputs)
    result = [sorted(model.inputs)]
    for op in model.ops:
        k = op.index
        live = {t for t, at in produced.items() if at <= k and (last_read.get(t, -1) > k or t in final)}
        live.update(t for t in op.outputs if t >= 0)  # its own output, even when nothing reads it
        result.append(sorted(live))
    return result


def plan(model_file: Path) -> PrefixPlan:
    """The prefix plan of a .tflite file; ModelError for a model that cannot be profiled operator by operator."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    content = model_file.read_bytes()
    model = TfliteModel.read(content)
    if model.subgraphs != 1:
        raise ModelError(
            f"{model_file}: a model with control flow ({model.subgraphs} subgraphs) cannot be profiled operator "
            "by operator",
            hint="deploy without --profile",
        )
    if not model.ops:
        raise ModelError(f"{model_file}: the model has no operators to profile")
    outputs_of = cuts(model)
    room = max(len(c) for c in outputs_of)
    tree = schema.ModelT.InitFromPackedBuf(content, 0)
    graph = tree.subgraphs[0]
    given = [int(t) for t in graph.outputs]
    graph.outputs = np.array([given[i % len(given)] for i in range(room)], dtype=np.int32)
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    rebuilt = bytes(builder.Output())
    table = schema.Model.GetRootAs(rebuilt, 0).Subgraphs(0)._tab
    operators_at = table.Vector(table.Offset(_SUBGRAPH_OPERATORS))
    outputs_at = table.Vector(table.Offset(_SUBGRAPH_OUTPUTS))
    found = PrefixPlan(rebuilt, operators_at - 4, outputs_at, outputs_of)
    for k in (-1, 0, len(model.ops) - 1):  # the edits land where they should: the prefixes parse as intended
        prefix = TfliteModel.read(found.prefix(k))
        if len(prefix.ops) != k + 1 or list(prefix.outputs) != outputs_of[k + 1]:
            raise ModelError(f"{model_file}: building the profile's prefixes failed (prefix {k} reads wrong)")
    return found
