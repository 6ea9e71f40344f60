"""Broken models for the agent's error classification: each is what a user, a disk or an attacker can produce."""

from __future__ import annotations

import random


def with_unknown_custom_op(good: bytes, name: str = "EdgepipeNoSuchOp") -> bytes:
    """A well-formed flatbuffer whose first operator is a custom op no runtime registers."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(good), 0)
    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.CUSTOM
    code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = name
    code.version = 1
    model.operatorCodes.append(code)
    first = model.subgraphs[0].operators[0]
    first.opcodeIndex = len(model.operatorCodes) - 1
    first.builtinOptionsType = 0
    first.builtinOptions = None
    builder = flatbuffers.Builder(len(good) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def malformed_models(good: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (file content, the error class the agent must report)."""
    rng = random.Random(7)
    wrong_identifier = bytearray(good)
    wrong_identifier[4:8] = b"XXXX"
    garbage = bytearray(rng.getrandbits(8) for _ in range(4096))
    garbage[4:8] = b"TFL3"
    return {
        "empty": (b"", "InvalidModel"),
        "truncated": (good[: len(good) // 3], "InvalidModel"),
        "random-bytes": (bytes(rng.getrandbits(8) for _ in range(4096)), "InvalidModel"),
        "wrong-identifier": (bytes(wrong_identifier), "InvalidModel"),
        "garbage-with-identifier": (bytes(garbage), "InvalidModel"),
        "unknown-op": (with_unknown_custom_op(good), "UnsupportedOp"),
    }
