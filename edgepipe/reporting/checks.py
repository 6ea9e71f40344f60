"""One check of a verdict (what was compared, how it came out, the numbers behind it) and reading records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "pass" | "fail" | "inconclusive" | "warn" | "n/a"
    message: str
    baseline: Any = None
    candidate: Any = None
    change: float | None = None
    faster: bool = False  # latency only: significantly faster by more than the minimum effect


def get(record: dict[str, Any], path: str) -> Any:
    """``get(record, "device.board.governor")``: a field of a deploy record, None where any part is missing."""
    value: Any = record
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
