"""Naming a deploy run on the command line: a run id, a tag, a result file or a run directory.

``compare`` resolves both of its runs this way, and ``deploy --baseline`` its baseline model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe.database import Location
from edgepipe.errors import ConfigError
from edgepipe.provenance import sha256_file
from edgepipe.rundir import MARKER


def resolve_run(name: str, target: str | None, history_path: Location | None) -> tuple[dict[str, Any], str]:
    """(deploy record, a description of where it came from)."""
    path = Path(name)
    if path.is_file():
        return _read(path), str(path)
    if path.is_dir():
        files = sorted(path.glob(f"deploy-{target}.json" if target else "deploy-*.json"))
        files = [f for f in files if not f.name.endswith(".failed.json")]
        if len(files) != 1:
            found = ", ".join(f.name for f in files) or "none"
            raise ConfigError(
                f"{path}: expected one deploy result{f' for {target}' if target else ''}, found {found}",
                hint="name the target with --target, or the result file itself",
            )
        return _read(files[0]), str(files[0])
    from edgepipe.store import History

    with History(history_path) as store:
        if name.isdigit():
            return store.record(int(name)), f"run {name} in {store.path}"
        rows = store.runs(target=target, tag=name, limit=1)
        if not rows:
            where = f" on {target}" if target else ""
            raise ConfigError(
                f"{name!r} is not a file, a run directory, a run id, or a tag with a complete run{where} "
                f"in {store.path}",
                hint="deploy with --tag NAME to record a baseline; 'edgepipe history' lists what is there",
            )
        return store.record(rows[0].id), f"run {rows[0].id} (tag {name}) in {store.path}"


def _read(path: Path) -> dict[str, Any]:
    try:
        content = path.read_bytes()
        if path.suffix == ".tflite" or content[4:8] == b"TFL3":  # the flatbuffer's file identifier
            raise ConfigError(
                f"{path}: a .tflite model, not a deploy result: compare reads what deploy measured",
                hint="compare deploy results (deploy-TARGET.json), run directories, run ids or tags; to time two "
                "models side by side, deploy the candidate with --baseline MODEL.tflite and compare its result",
            )
        record = json.loads(content)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable deploy result: {exc}") from None
    if not isinstance(record, dict) or record.get("schema") != "edgepipe.deploy/1":
        raise ConfigError(f"{path}: not an edgepipe deploy result (schema edgepipe.deploy/1)")
    return record


@dataclass(frozen=True)
class BaselineModel:
    """The bytes ``deploy --baseline`` measures next to the candidate."""

    sha256: str
    path: Path | None  # a local file with exactly these bytes, when one exists
    source: str  # what the user named, resolved (for the record and messages)


def baseline_model(name: str, target: str, history_path: Location | None) -> BaselineModel:
    """A .tflite file, a run directory (its model.tflite) or a recorded run (its model, by sha256)."""
    path = Path(name)
    if path.is_file() and path.suffix == ".tflite":
        return BaselineModel(sha256_file(path), path, str(path))
    if path.is_dir() and (path / MARKER).is_file():
        model = path / "model.tflite"
        return BaselineModel(sha256_file(model), model, str(model))
    record, source = resolve_run(name, target, history_path)
    sha = record["model"]["sha256"]
    local = Path(record["model"].get("model") or "")
    found = local if local.is_file() and sha256_file(local) == sha else None
    return BaselineModel(sha, found, f"{source}, model {sha[:12]}")
