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
        record = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{marker}: not readable as JSON ({exc})", hint="re-run edgepipe optimize") from exc
    missing = [key for key in ("recipe", "baseline", "final") if not isinstance(record, dict) or key not in record]
    if missing:
        what = f"a JSON {type(record).__name__}" if not isinstance(record, dict) else f"missing {', '.join(missing)}"
        raise ConfigError(
            f"{marker}: not an optimize result ({what})",
            hint="pass the --out directory of an edgepipe optimize run, or re-run edgepipe optimize",
        )
    return record


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


def optimize_provenance(model_file: Path, sha256: str, run_dir: Path | None = None) -> dict[str, Any] | None:
    """Which optimize run, recipe (as resolved), converter settings and tools produced these model bytes.

    Looked up by sha256 in the run directory given, or in the run directories a model file of a run sits in
    (``model.tflite``, ``float/``, ``stages/N-NAME/``); None for a model from elsewhere.
    """
    folders = [run_dir] if run_dir is not None else [model_file.parent, *list(model_file.parents)[1:3]]
    for folder in folders:
        if not (folder / MARKER).is_file():
            continue
        try:
            record = read_optimize_record(folder)
            found = next((m for m in run_models(folder, record) if m.tflite["sha256"] == sha256), None)
        except (ConfigError, KeyError, TypeError):
            continue  # a damaged or older optimize.json: no provenance rather than a failed deploy
        if found is None:
            continue
        provenance = record.get("provenance", {})
        return {
            "run_dir": str(folder),
            "stage": found.name,
            "final": found.final,
            "created": record.get("created"),
            "recipe_file": provenance.get("recipe_file"),
            "recipe_sha256": provenance.get("recipe_sha256"),
            "recipe": record["recipe"],
            "convert": record["recipe"].get("convert"),
            "data": provenance.get("data"),
            "tools": provenance.get("tools"),
        }
    return None
