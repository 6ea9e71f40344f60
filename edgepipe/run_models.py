"""The models an optimize run wrote: the float reference, one per recipe stage, and the final one.

Deploy (``--stages``) and the report both walk this list, so they agree on names and on which stage model is
the final model (the same bytes are measured once and shown once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe.errors import ConfigError
from edgepipe.rundir import MARKER


@dataclass(frozen=True)
class RunModel:
    name: str  # "float", a stage name from the recipe, or "final" when no stage produced the final bytes
    kind: str  # "float", a stage kind (prune, cluster, qat, ptq ...), or "final"
    index: int  # 0 for float, the stage's 1-based index, len(stages) + 1 for a separate final model
    path: Path
    tflite: dict[str, Any]  # optimize.json's entry: bytes, gzip_bytes, sha256, accuracy, sparsity, weights
    final: bool


def read_optimize_record(run_dir: Path) -> dict[str, Any]:
    marker = run_dir / MARKER
    if not marker.is_file():
        raise ConfigError(
            f"{run_dir} is not a run directory of 'edgepipe optimize' (no {MARKER})",
            hint="pass the --out directory of an optimize run",
        )
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{marker}: not readable as JSON ({exc})", hint="re-run edgepipe optimize") from exc


def run_models(run_dir: Path, record: dict[str, Any] | None = None) -> list[RunModel]:
    """Every model of the run in recipe order; the final model is flagged on the stage that produced it."""
    record = record or read_optimize_record(run_dir)
    final = record["final"]
    models = []
    float_entry = record["baseline"]["tflite"]
    if float_entry.get("path"):
        models.append(RunModel("float", "float", 0, run_dir / float_entry["path"], float_entry, False))
    for stage in record["stages"]:
        entry = stage["tflite"]
        models.append(
            RunModel(
                stage["name"],
                stage["kind"],
                stage["index"],
                run_dir / entry["path"],
                entry,
                entry["sha256"] == final["sha256"],
            )
        )
    if not any(m.final for m in models):
        models.append(RunModel("final", "final", len(record["stages"]) + 1, run_dir / final["path"], final, True))
    return models
