"""One check of a verdict: what was compared, how it came out, and the numbers behind it."""

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
