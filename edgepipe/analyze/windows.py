"""The small models the agent times to measure each operator: windows of a few consecutive operators.

The Python runtimes have no op profiler, so the time of operator k is measured as a difference: the time of a
window running operators k-w..k less the time of the window running k-w..k-1, both fed the tensors the whole
model computes there (w = ``CONTEXT_OPS``). Why windows, not prefixes (0..k less 0..k-1):

- The noise of a difference is the noise of the two models timed, which grows with their length. A prefix of a
  MobileNetV2 runs up to 65 operators (5 ms) to measure one of 0.3 ms; a window runs three. On this machine the
  spread of an operator's per-round difference fell several times over, and the ranking of near-equal layers
  stopped changing from run to run.
- The operators before k in the window leave the caches as the model leaves them for k: its input was just
  written by its producer, as in the whole model. The remaining bias (k's weights stay warmer in a loop of three
  operators than in the whole model) is what the profile's ``sum_over_whole`` measures: the operators' times
  summed against the whole model's time, timed in the same rounds.

Every window is the model's own bytes with four places of its only subgraph edited in place, so the board
receives one file and builds each window with a few byte writes (no flatbuffer library needed there):

- the operators vector starts at operator j: the subgraph's field that points at the vector is moved forward by
  j elements and the new length (k - j + 1) is written in the slot before operator j (a vector of tables holds
  offsets relative to each element, so the elements that stay are untouched);
- the inputs vector lists what the window reads from before j (graph inputs or earlier operators' outputs);
  the agent feeds them the values the whole model computes (one run with every tensor preserved);
- the outputs vector lists every tensor the window produces that a later operator reads or the model outputs.
  Nothing computed is left dangling, so no delegate can drop it as dead code.

The file sent to the board is the model re-serialised with its inputs and outputs vectors long enough for the
largest window (the offsets are found with the schema's reader). Windows are checked here by parsing them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepipe.errors import ModelError
from edgepipe.tflite_model import TfliteModel

CONTEXT_OPS = 2  # operators run before k in both windows of a pair
_SUBGRAPH_INPUTS = 6  # vtable offsets of the Subgraph table's fields: inputs 1, outputs 2, operators 3
_SUBGRAPH_OUTPUTS = 8
_SUBGRAPH_OPERATORS = 10


@dataclass(frozen=True)
class Window:
    """Operators ``start .. start + length - 1`` of the model, fed ``inputs``, giving ``outputs``."""

    start: int
    length: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class WindowPlan:
    """What the agent needs to build every window of ``content`` and which two give each operator's time."""

    content: bytes  # the model with room for the largest window's inputs and outputs
    operators_field_at: int  # byte offset of the subgraph's (uint32) offset to its operators vector
    operators_at: int  # byte offset of the operators vector's first element
    inputs_at: int  # byte offset of the inputs vector's first element (int32 each; its length before it)
    outputs_at: int
    windows: tuple[Window, ...]
    pairs: tuple[tuple[int, int], ...]  # pairs[k]: the windows with and without operator k

    def to_job(self, remote_path: str) -> dict[str, object]:
        return {
            "model": remote_path,
            "operators_field_at": self.operators_field_at,
            "operators_at": self.operators_at,
            "inputs_at": self.inputs_at,
            "outputs_at": self.outputs_at,
            "windows": [[w.start, w.length, list(w.inputs), list(w.outputs)] for w in self.windows],
            "pairs": [list(pair) for pair in self.pairs],
        }

    def window(self, index: int) -> bytes:
        """Window ``index``'s bytes (what the agent builds: the same writes, mirrored here for the check)."""
        w = self.windows[index]
        return build_window(self.content, self.operators_field_at, self.operators_at, self.inputs_at,
                            self.outputs_at, w)  # fmt: skip


def build_window(content: bytes, operators_field_at: int, operators_at: int, inputs_at: int, outputs_at: int,
                 window: Window) -> bytes:  # fmt: skip
    edited = bytearray(content)
    (to_operators,) = struct.unpack_from("<I", content, operators_field_at)
    struct.pack_into("<I", edited, operators_field_at, to_operators + 4 * window.start)
    struct.pack_into("<I", edited, operators_at + 4 * window.start - 4, window.length)
    for at, tensors in ((inputs_at, window.inputs), (outputs_at, window.outputs)):
        struct.pack_into("<I", edited, at - 4, len(tensors))
        struct.pack_into(f"<{len(tensors)}i", edited, at, *tensors)
    return bytes(edited)


def windows(model: TfliteModel, context: int = CONTEXT_OPS) -> tuple[list[Window], list[tuple[int, int]]]:
    """The windows to time and, per operator k, the pair (with k, without k) whose difference is k's time."""
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

    def window(start: int, length: int) -> Window:
        inside = model.ops[start : start + length]
        if not inside:  # no operator: the invoke overhead, fed and giving operator `start`'s inputs
            fed = tuple(sorted({t for t in model.ops[start].inputs if t >= 0 and not model.tensors[t].is_constant}))
            return Window(start, 0, fed, fed)
        end = start + length - 1
        fed = {t for op in inside for t in op.inputs if t >= 0 and produced.get(t, -1) < start}
        fed = {t for t in fed if not model.tensors[t].is_constant}
        given = {t for op in inside for t in op.outputs if t >= 0 and (last_read.get(t, -1) > end or t in final)}
        given.update(t for t in inside[-1].outputs if t >= 0)  # its own output, even when nothing reads it
        return Window(start, length, tuple(sorted(fed)), tuple(sorted(given)))

    found: dict[tuple[int, int], int] = {}
    listed: list[Window] = []
    pairs = []
    for op in model.ops:
        start = max(0, op.index - context)
        pair = []
        for length in (op.index - start + 1, op.index - start):
            if (start, length) not in found:
                found[(start, length)] = len(listed)
                listed.append(window(start, length))
            pair.append(found[(start, length)])
        pairs.append((pair[0], pair[1]))
    return listed, pairs


def plan(model_file: Path, context: int = CONTEXT_OPS) -> WindowPlan:
    """The window plan of a .tflite file; ModelError for a model that cannot be profiled operator by operator."""
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
    listed, pairs = windows(model, context)
    tree = schema.ModelT.InitFromPackedBuf(content, 0)
    graph = tree.subgraphs[0]
    rooms = {"inputs": max(len(w.inputs) for w in listed), "outputs": max(len(w.outputs) for w in listed)}
    for field, room in rooms.items():
        given = [int(t) for t in getattr(graph, field)]
        setattr(graph, field, np.array([given[i % len(given)] for i in range(max(room, len(given)))], dtype=np.int32))
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    rebuilt = bytes(builder.Output())
    table = schema.Model.GetRootAs(rebuilt, 0).Subgraphs(0)._tab
    found = WindowPlan(
        content=rebuilt,
        operators_field_at=table.Pos + table.Offset(_SUBGRAPH_OPERATORS),
        operators_at=table.Vector(table.Offset(_SUBGRAPH_OPERATORS)),
        inputs_at=table.Vector(table.Offset(_SUBGRAPH_INPUTS)),
        outputs_at=table.Vector(table.Offset(_SUBGRAPH_OUTPUTS)),
        windows=tuple(listed),
        pairs=tuple(pairs),
    )
    for index in {0, len(listed) - 1, pairs[-1][1]}:  # the edits land where they should: windows parse as intended
        w = listed[index]
        cut = TfliteModel.read(found.window(index))
        ops = [(op.name, op.inputs, op.outputs) for op in cut.ops]
        if ops != [(op.name, op.inputs, op.outputs) for op in model.ops[w.start : w.start + w.length]] or (
            tuple(cut.inputs), tuple(cut.outputs)) != (w.inputs, w.outputs):  # fmt: skip
            raise ModelError(f"{model_file}: building the profile's windows failed (window {index} reads wrong)")
    return found
