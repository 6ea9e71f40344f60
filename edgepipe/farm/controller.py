"""``farm run`` and ``farm resume``: create (or find) the farm run's rows, run the board workers, write the report.

The same ``farm run`` command again, while its farm run is unfinished, resumes it instead of starting over: the
run is found by a key over the farm file, the models' and baseline's bytes, the tags and the thresholds. Jobs
that were running under a controller that died go back to the queue once its leases lapse (at once when it was a
process on this machine), and only jobs without a result are run.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe.config.farm import Farm, load_farm
from edgepipe.database import Location
from edgepipe.errors import ConfigError
from edgepipe.farm.jobs import FarmModel, StagedModels, resolve_baseline, resolve_models
from edgepipe.farm.labgrid import LabgridSession
from edgepipe.farm.leases import new_owner
from edgepipe.farm.report import farm_document, write_reports
from edgepipe.farm.scheduler import FarmContext, FarmEvents, FarmJobSettings, run_workers
from edgepipe.farm.store import FarmStore
from edgepipe.provenance import sha256_file
from edgepipe.rundir import temporary_directory
from edgepipe.store import default_path


@dataclass(frozen=True)
class FarmOutcome:
    run: int
    out: Path
    document: dict[str, Any]  # farm.json
    resumed: bool

    @property
    def exit_code(self) -> int:
        return int(self.document["exit_code"])


def farm_run(
    farm_file: str | Path,
    models: Sequence[str | Path],
    *,
    data: Path | None = None,
    baseline: str | None = None,
    tags: Sequence[str] = (),
    out: Path | None = None,
    history: Location | None = None,
    thresholds: dict[str, float] | None = None,
    junit: Path | None = None,
    events: FarmEvents | None = None,
) -> FarmOutcome:
    """Measure every model on one board of every pool (with ``baseline``: paired against it, and judged).

    Returns the outcome whatever the verdict (``exit_code``, and ``document``: farm.json); raises ConfigError for
    a wrong farm file, model or baseline. The same call again while its farm run is unfinished resumes it."""
    farm_file = Path(farm_file)
    farm = load_farm(farm_file)
    history = history or default_path()
    chosen = resolve_models([str(m) for m in models], data)
    base = resolve_baseline(baseline, history) if baseline else None
    thresholds = dict(thresholds or {})
    _check_thresholds(thresholds)
    owner = new_owner()
    with _labgrid(farm, owner) as (farm, session):
        return _start(farm, session, owner, farm_file, chosen, base, tags, out, history, thresholds, junit, events)


def _start(
    farm: Farm,
    session: LabgridSession | None,
    owner: str,
    farm_file: Path,
    chosen: list[FarmModel],
    base: FarmModel | None,
    tags: Sequence[str],
    out: Path | None,
    history: Location,
    thresholds: dict[str, float],
    junit: Path | None,
    events: FarmEvents | None,
) -> FarmOutcome:
    key = _spec_key(farm_file, chosen, base, tags, thresholds)
    spec = {
        "farm_file": str(farm_file.resolve()),
        "models": [m.to_dict() for m in chosen],
        "baseline": base.to_dict() if base else None,
        "tags": list(tags),
        "thresholds": thresholds,
        "out": str(Path(out).resolve()) if out else None,
        "cwd": str(Path.cwd()),
    }
    with FarmStore(history) as store:
        run = store.unfinished_run(key)
        resumed = run is not None
        if run is None:
            jobs = [(m.label, pool) for m in chosen for pool in farm.spec.pools]
            boards = [(b.name, b.pool) for b in farm.boards.values()]
            run = store.create_run(farm.name, key, spec, jobs, boards)
        else:
            spec = store.run_info(run)["spec"]
            store.add_boards(run, [(b.name, b.pool) for b in farm.boards.values()])
    return _execute(farm, session, owner, run, spec, history, events or FarmEvents(), resumed, junit)


def farm_resume(run: int, *, history: Location | None = None, junit: Path | None = None,
                events: FarmEvents | None = None) -> FarmOutcome:  # fmt: skip
    """Finish a farm run: only its jobs without a result run; a finished run just gets its report again."""
    history = history or default_path()
    with FarmStore(history) as store:
        info = store.run_info(run)
        recorded = {row["board"] for row in store.boards(run)}
    spec = info["spec"]
    farm = load_farm(Path(spec["farm_file"]))
    targets = {name for name, board in farm.boards.items() if board.place is None}  # labgrid places may change
    if not targets <= recorded:
        raise ConfigError(
            f"{spec['farm_file']}: its boards changed since farm run {run} started "
            f"(then: {', '.join(sorted(recorded))}; now: {', '.join(sorted(farm.boards))})",
            hint="start a new farm run with 'edgepipe farm run'",
        )
    owner = new_owner()
    with _labgrid(farm, owner) as (farm, session):
        with FarmStore(history) as store:
            store.add_boards(run, [(b.name, b.pool) for b in farm.boards.values()])
        return _execute(farm, session, owner, run, spec, history, events or FarmEvents(), True, junit)


@contextmanager
def _labgrid(farm: Farm, owner: str) -> Iterator[tuple[Farm, LabgridSession | None]]:
    """The farm with its labgrid places as boards, and the coordinator session the workers take them through
    (a farm of targets only: itself, and no session)."""
    if farm.coordinator is None:
        yield farm, None
        return
    with LabgridSession(farm.coordinator, owner, farm.spec.labgrid.reconnect_s) as session:
        places: dict[str, list[str]] = {}
        for name, pool in farm.spec.pools.items():
            if pool.labgrid is None:
                continue
            places[name] = session.places(pool.labgrid.tags)
            if not places[name]:
                wanted = " ".join(f"{k}={v}" for k, v in pool.labgrid.tags.items())
                raise ConfigError.at(
                    str(farm.file), f"pools.{name}.labgrid.tags",
                    f"no labgrid place on {farm.coordinator} has the tags {wanted}",
                    hint="'labgrid-client places' lists the places, 'labgrid-client -p PLACE set-tags' tags them",
                )  # fmt: skip
        yield farm.with_places(places), session


def _execute(
    farm: Farm,
    session: LabgridSession | None,
    owner: str,
    run: int,
    spec: dict[str, Any],
    history: Location,
    events: FarmEvents,
    resumed: bool,
    junit: Path | None,
) -> FarmOutcome:
    out = Path(spec["out"] or Path(spec["cwd"]) / "farm-runs" / f"{farm.name}-{run}")
    models = {raw["label"]: FarmModel.from_dict(raw) for raw in spec["models"]}
    baseline = FarmModel.from_dict(spec["baseline"]) if spec["baseline"] else None
    with FarmStore(history) as store:
        store.reclaim(run)
    if session is not None:
        session.on_reconnect = events.note
    stop = threading.Event()
    with temporary_directory("edgepipe-farm-") as staging:
        settings = FarmJobSettings(run, out, models, baseline, tuple(spec["tags"]), spec["thresholds"])
        try:
            context = FarmContext(farm, history, owner, settings, StagedModels(Path(staging)), events, stop, session)
            run_workers(context)
        except BaseException:  # Ctrl-C or SIGTERM: hand this controller's jobs back, then stop
            stop.set()
            with FarmStore(history) as store:
                store.abandon(owner)
            raise
    with FarmStore(history) as store:
        store.finish_run(run)
        document = farm_document(store, run)
    write_reports(document, out, junit)
    return FarmOutcome(run, out, document, resumed)


def _spec_key(
    farm_file: Path, models: list[FarmModel], baseline: FarmModel | None, tags: Sequence[str], thresholds: dict
) -> str:
    identity = {
        "farm": sha256_file(farm_file),
        "models": [(m.label, m.sha256, sha256_file(m.data) if m.data else None) for m in models],
        "baseline": baseline.sha256 if baseline else None,
        "tags": sorted(tags),
        "thresholds": thresholds,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _check_thresholds(thresholds: dict[str, float]) -> None:
    from edgepipe.config.loading import validate
    from edgepipe.reporting.verdict import VerdictSettings

    validate(thresholds, VerdictSettings, "farm compare settings")
