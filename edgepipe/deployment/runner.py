"""``edgepipe deploy``: stage, connect, send what the board lacks, run the agent, check, write one result file.

Explicit timed steps, with the clean-up in ``finally`` (TVM's runner). However a deploy ends, it ends with a
result record: ``deploy-<target>.json`` when it passed, ``deploy-<target>.failed.json`` (with the error's class)
when the model or the infrastructure failed, so a device farm never loses a job. A failure never replaces a
good result; a success removes a stale failure of the same target. Both are written atomically.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe.analyze import profile as profile_schema
from edgepipe.analyze import windows
from edgepipe.config.target import MeasureSettings, Target
from edgepipe.deployment.agent import agent_info, agent_python, install_agent
from edgepipe.deployment.cache import RemoteCache, limit_bytes
from edgepipe.deployment.checks import deploy_failure, host_checks
from edgepipe.deployment.inputs import DeployInputs, resolve_sources, stage
from edgepipe.deployment.job import binary_thresholds, build_job, run_job, stateful
from edgepipe.errors import (
    INTERRUPTED_EXIT_CODE,
    ConfigError,
    EdgepipeError,
    InfrastructureError,
)
from edgepipe.files import write_json
from edgepipe.progress import Progress
from edgepipe.provenance import host, now, tool_versions
from edgepipe.reporting.formatting import plural
from edgepipe.reporting.resolve import BaselineModel
from edgepipe.run_models import optimize_provenance
from edgepipe.rundir import temporary_directory
from edgepipe.store import History
from edgepipe.transport import open_transport
from edgepipe.transport.base import Transport

SCHEMA = "edgepipe.deploy/1"


@dataclass(frozen=True)
class DeployOutcome:
    result: dict[str, Any]
    path: Path
    run_id: int | None = None  # in the results history, when one was given


def result_path(target: Target, run_dir: Path | None, model_file: Path, out: Path | None) -> Path:
    if out is not None:
        return out
    if run_dir is not None:
        return run_dir / f"deploy-{target.name}.json"
    return model_file.with_name(f"{model_file.stem}.deploy-{target.name}.json")


def failed_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".json") + ".failed.json")


def deploy(
    target: Target,
    *,
    run_dir: Path | None = None,
    model: Path | None = None,
    data: Path | None = None,
    out: Path | None = None,
    measure: MeasureSettings | None = None,
    deadline_s: float | None = None,
    progress: Progress | None = None,
    history: History | None = None,
    tags: Sequence[str] = (),
    baseline: BaselineModel | None = None,
    profile: bool = False,
    task: str | list[str] | None = None,
) -> DeployOutcome:
    """Deploy and measure; when ``history`` is given, the run is recorded there (complete or failed).
    ``task``: how to score each output (``deploy --task``) instead of the run's recipe or the data's types.

    With ``profile``, each operator's time is measured too (``record["profile"]``: see
    ``edgepipe.analyze.profile``), with its memory traffic and its place on the target's roofline.

    With ``baseline``, that model is timed in the same job and in the same processes as the candidate, in
    alternating blocks (``device.timing.baseline``): what ``compare`` needs for a latency verdict that a slow
    spell of a shared board cannot fool.
    """
    progress = progress or Progress()
    measure = measure or target.measure
    model_file, data_file, run_dir = resolve_sources(run_dir, model, data)
    path = result_path(target, run_dir, model_file, out)
    started = time.perf_counter()
    with temporary_directory("edgepipe-deploy-") as staging:
        progress.phase("evaluating the model on this machine (sandboxed)")
        inputs = stage(model_file, data_file, run_dir, Path(staging), measure.eval_samples, task)
        for note in inputs.notes:
            progress.note(note)
        return deploy_staged(
            target, inputs, path, measure=measure, deadline_s=deadline_s, progress=progress, history=history,
            tags=tags, baseline=baseline, started=started, profile=profile,
        )  # fmt: skip


def deploy_staged(
    target: Target,
    inputs: DeployInputs,
    path: Path,
    *,
    measure: MeasureSettings | None = None,
    deadline_s: float | None = None,
    progress: Progress | None = None,
    history: History | None = None,
    tags: Sequence[str] = (),
    baseline: BaselineModel | None = None,
    started: float | None = None,
    profile: bool = False,
) -> DeployOutcome:
    """The board's part of a deploy, for inputs already staged (and evaluated on the host) by ``stage``: a
    device farm stages each model once and measures it on many boards. Writes ``path`` (or its ``.failed``
    sibling) and returns the outcome or raises, exactly like ``deploy``."""
    progress = progress or Progress()
    measure = measure or target.measure
    deadline = deadline_s or target.deadline_s
    started = time.perf_counter() if started is None else started
    record = _record(target, measure, inputs)
    if baseline is not None:
        record["baseline"] = {"model_sha256": baseline.sha256, "source": baseline.source}
    plan = windows.plan(inputs.model.path) if profile else None  # a model that cannot be profiled: before the board
    run_id = history.start(target.name, inputs.model.sha256, str(inputs.model.path), tags) if history else None
    try:
        device, transfer = _on_board(target, measure, deadline, inputs, progress, baseline, plan)
    except InfrastructureError as exc:
        record.update(status="failed", error=_error_entry(exc, "infrastructure"), seconds=_since(started))
        _remember(history, run_id, record)
        write_json(failed_path(path), record)
        exc.hint = (exc.hint + "; " if exc.hint else "") + f"the failure is recorded in {failed_path(path)}"
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C, or the SIGTERM of a cancelled CI job: the farm keeps a record
        error = {
            "class": "Interrupted",
            "kind": "infrastructure",
            "exit_code": INTERRUPTED_EXIT_CODE,
            "message": f"interrupted ({exc or 'Ctrl-C'}) before the board answered",
        }
        record.update(status="failed", error=error, seconds=_since(started))
        _remember(history, run_id, record)
        write_json(failed_path(path), record)
        raise
    record["device"] = device
    record["transfer"] = transfer
    if plan is not None:
        record["profile"] = _profile(inputs, device, target)
    record["checks"] = checks = host_checks(inputs, device, measure, target)
    record["seconds"] = _since(started)
    failure = deploy_failure(device, checks, target)
    if failure is not None:
        record.update(status="failed", error=_error_entry(failure, "model"))
        _remember(history, run_id, record)
        write_json(failed_path(path), record)
        failure.hint = (failure.hint + "; " if failure.hint else "") + f"details in {failed_path(path)}"
        raise failure
    record["status"] = "passed"
    _remember(history, run_id, record)
    write_json(path, record)
    failed_path(path).unlink(missing_ok=True)
    return DeployOutcome(record, path, run_id)


def _remember(history: History | None, run_id: int | None, record: dict[str, Any]) -> None:
    if history is not None and run_id is not None:
        record["history"] = {"path": str(history.path), "run_id": run_id}
        history.finish(run_id, record)


def _on_board(
    target: Target,
    measure: MeasureSettings,
    deadline: float,
    inputs: DeployInputs,
    progress: Progress,
    baseline: BaselineModel | None = None,
    plan: windows.WindowPlan | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    progress.phase(f"connecting to {target.name} ({target.where()})")
    started = time.perf_counter()
    with open_transport(target) as transport:
        first_use = getattr(transport, "first_use", None)
        if first_use:
            progress.note(f"trusted on first use and recorded in {target.known_hosts}: {first_use}")
        cache = RemoteCache.for_target(transport, target, progress)
        progress.phase("sending what the board does not have yet")
        agent_path = install_agent(transport, cache, target)
        remote_model = cache.ensure(
            inputs.model.path, cache.blob_path(inputs.model.sha256, ".tflite"), inputs.model.sha256, "model"
        )
        remote_data = remote_reference = None
        if inputs.data is not None:
            remote_data = cache.ensure(
                inputs.data.path, cache.blob_path(inputs.data.sha256, ".npz"), inputs.data.sha256, "eval data"
            )
        if inputs.reference is not None:
            remote_reference = cache.ensure(
                inputs.reference.path,
                cache.blob_path(inputs.reference.sha256, ".npz"),
                inputs.reference.sha256,
                "reference outputs",
            )
        remote_baseline = _baseline_on_board(transport, cache, baseline) if baseline is not None else None
        remote_profile = _profile_on_board(cache, plan) if plan is not None else None
        transfer_s = time.perf_counter() - started
        progress.phase(f"running the agent on {target.name}")
        job = build_job(
            target,
            measure,
            remote_model,
            remote_data,
            remote_reference,
            baseline=remote_baseline,
            task=inputs.task if remote_data else None,
            profile=remote_profile,
            stateful=stateful(
                [
                    (inputs.model.path, remote_model),
                    (baseline.path if baseline else None, remote_baseline or ""),
                    (plan.content if plan else None, (remote_profile or {}).get("model", "")),
                ]
            ),
            thresholds=binary_thresholds(inputs.model.path),
        )
        device = run_job(transport, agent_python(target), agent_path, job, deadline, progress)
        board_cache = _trim(cache, target, progress)
        socket = getattr(transport, "socket", None)
        transfer = {
            "uploaded_bytes": cache.uploaded_bytes,
            "sent": cache.sent,
            "already_on_board": cache.reused,
            "seconds": round(transfer_s, 3),
            "wire_bytes_sent": socket.sent if socket is not None else None,
            "agent_path": agent_path,
            "model_path": remote_model,
            "board_cache": board_cache,
            "made_room": [usage.as_dict() for usage in cache.made_room],  # the disk was full during an upload
        }
    return device, transfer


def _trim(cache: RemoteCache, target: Target, progress: Progress) -> dict[str, Any]:
    """Keep the board's cache under the target's limit. The measurement is taken: a trim that fails is noted in
    the record and on the terminal, and does not fail the deploy."""
    try:
        usage = cache.trim(limit_bytes(target))
    except EdgepipeError as exc:
        progress.note(f"the board's cache was not trimmed: {exc.message}")
        return {"error": exc.message}
    if usage.removed_files:
        progress.note(
            f"removed {plural(usage.removed_files, 'file')} ({usage.removed_bytes / 2**20:,.1f} MB) used longest "
            f"ago from {target.workdir}: the rest take {usage.bytes / 2**20:,.1f} MB "
            f"of its {target.cache_limit_mb:g} MB"
        )
    return usage.as_dict()


def _baseline_on_board(transport: Transport, cache: RemoteCache, baseline: BaselineModel) -> str:
    """Send the baseline's bytes, or find them on the board from an earlier deploy (content-addressed)."""
    remote = cache.blob_path(baseline.sha256, ".tflite")
    if baseline.path is not None:
        return cache.ensure(baseline.path, remote, baseline.sha256, "baseline model")
    if cache.find(remote, "baseline model"):
        return remote
    raise ConfigError(
        f"the baseline's model ({baseline.source}) is neither on this machine nor on {transport.describe()}",
        hint="name the baseline by its run directory or .tflite file (--baseline runs/main), or deploy it again",
    )


def _profile_on_board(cache: RemoteCache, plan: windows.WindowPlan) -> dict[str, Any]:
    """Send the model the agent cuts its windows from (content-addressed, like every blob)."""
    digest = hashlib.sha256(plan.content).hexdigest()
    with temporary_directory("edgepipe-profile-") as folder:
        local = Path(folder) / "profile.tflite"
        local.write_bytes(plan.content)
        remote = cache.ensure(local, cache.blob_path(digest, ".tflite"), digest, "profile model")
    return plan.to_job(remote)


def _profile(inputs: DeployInputs, device: dict[str, Any], target: Target) -> dict[str, Any]:
    raw = device.get("profile")
    if not raw or "error" in raw:
        error = (raw or {}).get("error") or {"class": "AgentFailure", "message": "the agent returned no profile"}
        return {"schema": profile_schema.SCHEMA, "error": error}
    whole = ((device.get("timing") or {}).get("latency_ms") or {}).get("p50")
    emulated = bool((device.get("board") or {}).get("emulated")) or target.emulated
    source: dict[str, Any] = {"from": "target"}
    if target.transport == "local" and not (target.peak_gops and target.memory_bandwidth_gbs):
        from edgepipe.analyze.calibrate import calibration

        measured = calibration(target.threads)  # this machine is the board: measure its ceilings (once)
        target = target.model_copy(
            update={"peak_gops": measured["peak_gops"], "memory_bandwidth_gbs": measured["memory_bandwidth_gbs"]}
        )
        source = {"from": "calibration", **measured}
    found = profile_schema.per_operator(inputs.model.path, raw, whole, target, emulated)
    found["roofline"]["source"] = source
    return found


def _record(target: Target, measure: MeasureSettings, inputs: DeployInputs) -> dict[str, Any]:
    info = agent_info()
    return {
        "schema": SCHEMA,
        "status": "running",
        "created": now(),
        "target": {
            **target.model_dump(mode="json", exclude={"measure", "agent_install"}),
            "where": target.where(),
        },
        "measure": measure.model_dump(mode="json"),
        "model": {"sha256": inputs.model.sha256, "bytes": inputs.model.size, **inputs.source},
        "data": {
            "samples": inputs.samples,
            "sha256": inputs.data.sha256 if inputs.data else None,
        },
        "host_reference": inputs.host,
        "provenance": {
            "tools": tool_versions(),
            "host": host(),
            "agent": {"version": info.version, "sha256": info.sha256, "protocol": info.job_protocol},
            "optimize": optimize_provenance(Path(inputs.source["model"]), inputs.model.sha256, inputs.run_dir),
        },
        "error": None,
    }


def _error_entry(exc: EdgepipeError, kind: str) -> dict[str, Any]:
    return {"class": type(exc).__name__, "kind": kind, "exit_code": exc.exit_code, "message": exc.message}


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 2)
