"""The regression verdict between a baseline and a candidate deploy on the same target.

Latency is compared paired when the candidate was measured together with the baseline's model (``deploy
--baseline``), unpaired otherwise; ``latency.py`` says how and why.

Accuracy drop, model size growth and peak memory growth are compared against thresholds. When the two runs
differ in board state (throttling, governor, CPU, runtime or agent version, emulation) the verdict is
"inconclusive" and says why: numbers from different conditions are not compared silently.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgepipe.analyze import profile_diff
from edgepipe.deployment.record import DeployRecord
from edgepipe.errors import ConfigError
from edgepipe.reporting.checks import Check, get
from edgepipe.reporting.formatting import mib
from edgepipe.reporting.latency import paired_check, paired_processes, unpaired_check
from edgepipe.score_parts import error_changes, errors, worst_growth


class VerdictSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.01, gt=0, lt=1, description="significance of the one-sided latency test")
    min_effect: float = Field(0.03, ge=0, description="smallest relative change of the median latency that counts")
    fast_window: float = Field(0.10, ge=0, description="processes within this of the fastest form the steady state")
    max_samples: int = Field(2000, ge=20, description="raw samples per run used in the test (evenly thinned)")
    max_accuracy_drop: float = Field(0.5, ge=0, description="points")
    max_error_increase: float = Field(
        0.05, ge=0, description="relative growth of the error (regression, reconstruction) on the board"
    )
    max_size_growth: float = Field(0.01, ge=0, description="relative growth of the .tflite file")
    max_memory_growth: float = Field(0.10, ge=0, description="relative growth of the peak RSS after the runs")


@dataclass
class Verdict:
    status: str  # "pass" | "regression" | "inconclusive"
    checks: list[Check]
    changed: list[tuple[str, Any, Any]] = field(default_factory=list)
    layers: dict[str, Any] | None = None  # both deployed with --profile: the per-operator diff

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checks": [c.__dict__ for c in self.checks],
            "changed": [{"field": f, "baseline": b, "candidate": c} for f, b, c in self.changed],
            "layers": self.layers,
        }


# Stage kinds that should make a model smaller or faster than its parent.
COMPRESSING = {"prune", "cluster", "channel_prune", "low_rank"}

STATE_FIELDS = (
    ("device.board.machine", "machine"),
    ("device.board.cpu_model", "CPU model"),
    ("device.board.cores", "cores"),
    ("device.board.governor", "CPU governor"),
    ("device.board.mhz_max", "maximum frequency"),
    ("device.board.emulated", "emulation"),
    ("device.runtime.name", "runtime"),
    ("device.runtime.version", "runtime version"),
    ("device.agent_version", "agent version"),
)
DIFF_FIELDS = (
    "model.sha256", "model.bytes", "model.recipe", "target.threads", "target.xnnpack", "target.runtime",
    "measure.runs", "measure.min_seconds", "measure.repeats", "device.board.kernel", "device.board.os",
    "device.board.python", "device.board.numpy", "device.board.mhz_current", "device.board.temperature_c",
    "provenance.agent.sha256", "provenance.optimize.recipe_sha256", "provenance.optimize.convert",
    "provenance.optimize.stage", "provenance.optimize.tools", "provenance.tools",
)  # fmt: skip


def compare(
    baseline: dict[str, Any],
    candidate: dict[str, Any],
    settings: VerdictSettings,
    sources: tuple[str, str] = ("the baseline", "the candidate"),
) -> Verdict:
    """``sources`` name the two records in errors (a file, a run id)."""
    typed = DeployRecord.read(baseline, sources[0]), DeployRecord.read(candidate, sources[1])
    base_target, cand_target = typed[0].target.name, typed[1].target.name
    if base_target != cand_target:
        raise ConfigError(
            f"the baseline ran on {base_target!r} and the candidate on {cand_target!r}: compare runs on one target"
        )
    processes = paired_processes(baseline, candidate)
    same_model = get(baseline, "model.sha256") is not None and get(baseline, "model.sha256") == get(
        candidate, "model.sha256"
    )
    if processes:
        latency = paired_check(processes, settings, same_model)
    else:
        latency = unpaired_check(baseline, candidate, settings)
    checks = [*_state(*typed), latency]
    checks += [
        _accuracy(baseline, candidate, settings),
        _growth(
            "model size",
            get(baseline, "model.bytes"),
            get(candidate, "model.bytes"),
            settings.max_size_growth,
            lambda value: f"{value:,} bytes",
        ),
        _growth(
            "peak memory",
            get(baseline, "device.memory.vmhwm_kb.after_runs"),
            get(candidate, "device.memory.vmhwm_kb.after_runs"),
            settings.max_memory_growth,
            mib,
        ),
        _paid_off(baseline, candidate, latency),
    ]
    value_error = _value_error(baseline, candidate, settings)
    if value_error is not None:
        checks.insert(checks.index(latency) + 2, value_error)  # right after the class outputs' accuracy
    layers = _layers(baseline, candidate)
    if layers is not None:
        slower = layers["largest_regression"] is not None
        checks.append(Check("per-operator time", "warn" if slower else "pass", profile_diff.summary(layers)))
    statuses = {c.status for c in checks}
    # Different board states make every number incomparable: inconclusive wins over fail.
    status = "inconclusive" if "inconclusive" in statuses else "regression" if "fail" in statuses else "pass"
    changed = [(f, get(baseline, f), get(candidate, f)) for f in DIFF_FIELDS if get(baseline, f) != get(candidate, f)]
    return Verdict(status, checks, changed, layers)


def _layers(baseline: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any] | None:
    """The per-operator diff, when both sides were deployed with --profile (and both profiles worked)."""
    profiles = baseline.get("profile"), candidate.get("profile")
    if any(p is None or "error" in p for p in profiles):
        return None
    return profile_diff.diff(*profiles)  # type: ignore[arg-type]


def _state(baseline: DeployRecord, candidate: DeployRecord) -> list[Check]:
    problems = [
        f"{label}: {baseline.field(path)!r} -> {candidate.field(path)!r}"
        for path, label in STATE_FIELDS
        if baseline.field(path) != candidate.field(path)
    ]
    for name, record in (("baseline", baseline), ("candidate", candidate)):
        throttling = record.device.board.throttling or {}
        now = [
            k.removesuffix("_now")
            for k in ("throttled_now", "under_voltage_now", "frequency_capped_now")
            if throttling.get(k)
        ]
        if now:
            problems.append(f"the {name} board was {' and '.join(now)} ({throttling.get('raw')})")
    if problems:
        return [Check("board state", "inconclusive", "the runs differ in board state: " + "; ".join(problems))]
    return [Check("board state", "pass", "same board, runtime and agent; no throttling")]


def _accuracy(baseline: dict[str, Any], candidate: dict[str, Any], settings: VerdictSettings) -> Check:
    """Accuracy in points for a classifier; the relative growth of the error for regression and reconstruction."""
    if _has_score(baseline) and not _has_score(candidate):
        return Check(
            "accuracy",
            "inconclusive",
            "the candidate was deployed without evaluation data, the baseline with: its score cannot be compared",
        )
    base, cand = get(baseline, "device.accuracy.accuracy"), get(candidate, "device.accuracy.accuracy")
    if base is not None and cand is not None:
        drop = (base - cand) * 100
        status = "fail" if drop > settings.max_accuracy_drop else "pass"
        return Check(
            "accuracy", status, f"{base:.4f} -> {cand:.4f} ({-drop:+.2f} points, limit -{settings.max_accuracy_drop})",
            base, cand, -drop,
        )  # fmt: skip
    metrics = get(baseline, "device.accuracy.metric"), get(candidate, "device.accuracy.metric")
    base, cand = get(baseline, "device.accuracy.value"), get(candidate, "device.accuracy.value")
    if base is None or cand is None or metrics[0] != metrics[1] or metrics[0] == "accuracy":
        return Check("accuracy", "n/a", "no comparable score in one of the runs (deployed without data?)", base, cand)
    check = _growth(metrics[0], base, cand, settings.max_error_increase)
    check = Check("accuracy", check.status, f"{metrics[0]}: {check.message}", base, cand, check.change)
    return _per_output(check, metrics[0], baseline, candidate, settings.max_error_increase)


def _value_error(baseline: dict[str, Any], candidate: dict[str, Any], settings: VerdictSettings) -> Check | None:
    """A mixed model's value outputs (its accuracy check judges its class outputs): the relative growth of their
    error. None unless both runs scored such outputs by the same error."""
    blocks = get(baseline, "device.accuracy"), get(candidate, "device.accuracy")
    if not all(isinstance(block, dict) and block.get("per_output_metric") for block in blocks):
        return None
    compared = errors(*blocks)
    if compared is None:
        return None
    metric, base, cand = compared
    check = _growth(metric, base, cand, settings.max_error_increase)
    check = Check("value outputs", check.status, f"{metric}: {check.message}", base, cand, check.change)
    return _per_output(check, metric, baseline, candidate, settings.max_error_increase)


def _per_output(check: Check, metric: str, baseline: dict[str, Any], candidate: dict[str, Any], limit: float) -> Check:
    """An error check re-judged output by output when several outputs are measured by it: the mean lets the
    output with the largest errors decide, so one output 20 % worse can hide behind another's unchanged
    larger error. The message names the output that grew most."""
    changes = error_changes(get(candidate, "device.accuracy"), get(baseline, "device.accuracy"))
    worst = worst_growth(changes)
    if len(changes) < 2 or worst is None or check.status == "n/a":
        return check
    grew = worst.relative is None or worst.relative > limit
    status = "fail" if grew else check.status
    message = f"{check.message}; grown most: {worst.describe(metric)}"
    return Check(check.name, status, message, check.baseline, check.candidate, check.change)


def _has_score(record: dict[str, Any]) -> bool:
    """Whether the deploy evaluated the model (``value`` since agent 1.2, ``accuracy`` before)."""
    return any(get(record, f"device.accuracy.{key}") is not None for key in ("value", "accuracy"))


def _growth(
    name: str, base: float | None, cand: float | None, limit: float, show: Callable[[Any], str] = "{:,}".format
) -> Check:
    """Relative growth of a lower-is-better figure against ``limit``; ``show`` writes a value with its unit."""
    if not base or cand is None:
        return Check(name, "n/a", f"no {name} in one of the runs", base, cand)
    growth = cand / base - 1
    status = "fail" if growth > limit else "pass"
    text = f"{show(base)} -> {show(cand)} ({growth:+.1%}, limit +{limit:.0%})"
    return Check(name, status, text, base, cand, growth)


def _paid_off(baseline: dict[str, Any], candidate: dict[str, Any], latency: Check) -> Check:
    """A pruned or clustered candidate should be smaller (gzip) or faster than its parent, the baseline."""
    kinds = _stage_kinds(candidate)
    if get(baseline, "model.sha256") == get(candidate, "model.sha256"):
        return Check("compression paid off", "n/a", "the same model on both sides")
    if not kinds & COMPRESSING:
        return Check("compression paid off", "n/a", "the candidate is not a compressed model")
    base_gzip, cand_gzip = _gzip_bytes(baseline), _gzip_bytes(candidate)
    smaller = base_gzip is not None and cand_gzip is not None and cand_gzip < base_gzip
    faster = latency.faster
    if smaller or faster:
        why = [f"gzip {base_gzip:,} -> {cand_gzip:,} B" if smaller else "", "faster" if faster else ""]
        return Check("compression paid off", "pass", ", ".join(w for w in why if w))
    return Check(
        "compression paid off", "warn",
        f"the {'/'.join(sorted(kinds & COMPRESSING))} model is neither smaller (gzip "
        f"{base_gzip} -> {cand_gzip} B) nor faster than its parent on this board",
    )  # fmt: skip


def _stage_kinds(record: dict[str, Any]) -> set[str]:
    """The kinds of the recipe stages that produced the record's model (up to its own stage)."""
    optimize = get(record, "provenance.optimize")
    if optimize:
        stages = optimize["recipe"].get("stages", [])
        names = [stage.get("name") or stage.get("kind") for stage in stages]
        if optimize["stage"] == "float":
            return set()
        upto = names.index(optimize["stage"]) + 1 if optimize["stage"] in names else len(stages)
        return {stage.get("kind") for stage in stages[:upto]}
    run_dir = get(record, "model.run_dir")  # results written before provenance.optimize existed
    if not run_dir or not (Path(run_dir) / "optimize.json").is_file():
        return set()
    optimize = json.loads((Path(run_dir) / "optimize.json").read_text())
    return {stage.get("kind") for stage in optimize.get("stages", [])}


def _gzip_bytes(record: dict[str, Any]) -> int | None:
    path = get(record, "model.model")
    if not path or not Path(path).is_file():
        return None
    content = Path(path).read_bytes()
    if hashlib.sha256(content).hexdigest() != get(record, "model.sha256"):
        return None  # the file changed since that deploy
    return len(gzip.compress(content, compresslevel=9, mtime=0))
