"""The regression verdict between a baseline and a candidate deploy on the same target.

Latency: a process can spend its whole life in a slower state (measured on this shared VM: about one process in
four runs 1.4-1.5x slower than the others, whatever the model). So each deploy measures in several processes
(``measure.repeats``), and the verdict compares each run's steady state: the processes whose median is within
``fast_window`` of that run's fastest one. Their raw samples (evenly thinned to ``max_samples``) go into a one-sided
Mann-Whitney U test; a regression needs both significance (``p < alpha``) and a change of the medians larger than
``min_effect``: with thousands of samples any difference is significant, only the effect size says whether it
matters.

Accuracy drop, model size growth and peak memory growth are compared against thresholds. When the two runs
differ in board state (throttling, governor, CPU, runtime or agent version, emulation) the verdict is
"inconclusive" and says why: numbers from different conditions are not compared silently.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgepipe.errors import ConfigError


class VerdictSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.01, gt=0, lt=1, description="significance level of the one-sided Mann-Whitney U test")
    min_effect: float = Field(0.03, ge=0, description="smallest relative change of the median latency that counts")
    fast_window: float = Field(0.10, ge=0, description="processes within this of the fastest form the steady state")
    max_samples: int = Field(2000, ge=20, description="raw samples per run used in the test (evenly thinned)")
    max_accuracy_drop: float = Field(0.5, ge=0, description="points")
    max_size_growth: float = Field(0.01, ge=0, description="relative growth of the .tflite file")
    max_memory_growth: float = Field(0.10, ge=0, description="relative growth of the peak RSS after the runs")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "pass" | "fail" | "inconclusive" | "warn" | "n/a"
    message: str
    baseline: Any = None
    candidate: Any = None
    change: float | None = None
    faster: bool = False  # latency only: significantly faster by more than the minimum effect


@dataclass
class Verdict:
    status: str  # "pass" | "regression" | "inconclusive"
    checks: list[Check]
    changed: list[tuple[str, Any, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checks": [c.__dict__ for c in self.checks],
            "changed": [{"field": f, "baseline": b, "candidate": c} for f, b, c in self.changed],
        }


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
    "provenance.agent.sha256",
)  # fmt: skip


def get(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def compare(baseline: dict[str, Any], candidate: dict[str, Any], settings: VerdictSettings) -> Verdict:
    base_target, cand_target = get(baseline, "target.name"), get(candidate, "target.name")
    if base_target != cand_target:
        raise ConfigError(
            f"the baseline ran on {base_target!r} and the candidate on {cand_target!r}: compare runs on one target"
        )
    for name, record in (("baseline", baseline), ("candidate", candidate)):
        if record.get("status") != "passed" or not get(record, "device.timing"):
            raise ConfigError(f"the {name} is a failed deploy ({get(record, 'error.class')}): nothing to compare")
    latency = _latency(baseline, candidate, settings)
    checks = [*_state(baseline, candidate), latency]
    checks += [
        _accuracy(baseline, candidate, settings),
        _growth("model size", get(baseline, "model.bytes"), get(candidate, "model.bytes"), settings.max_size_growth),
        _growth(
            "peak memory",
            get(baseline, "device.memory.vmhwm_kb.after_runs"),
            get(candidate, "device.memory.vmhwm_kb.after_runs"),
            settings.max_memory_growth,
        ),
        _paid_off(baseline, candidate, latency),
    ]
    statuses = {c.status for c in checks}
    # Different board states make every number incomparable: inconclusive wins over fail.
    status = "inconclusive" if "inconclusive" in statuses else "regression" if "fail" in statuses else "pass"
    changed = [(f, get(baseline, f), get(candidate, f)) for f in DIFF_FIELDS if get(baseline, f) != get(candidate, f)]
    return Verdict(status, checks, changed)


def _state(baseline: dict[str, Any], candidate: dict[str, Any]) -> list[Check]:
    problems = [
        f"{label}: {get(baseline, path)!r} -> {get(candidate, path)!r}"
        for path, label in STATE_FIELDS
        if get(baseline, path) != get(candidate, path)
    ]
    for name, record in (("baseline", baseline), ("candidate", candidate)):
        throttling = get(record, "device.board.throttling") or {}
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


def steady_state(record: dict[str, Any], settings: VerdictSettings) -> tuple[list[float], int, int]:
    """Raw samples of the processes within ``fast_window`` of the fastest, thinned; and (used, all) processes."""
    timing = get(record, "device.timing")
    repeats = timing.get("repeats") or [{"samples_ms": timing["samples_ms"]}]
    medians = [statistics.median(r["samples_ms"]) for r in repeats]
    fastest = min(medians)
    chosen = [r for r, m in zip(repeats, medians, strict=True) if m <= fastest * (1 + settings.fast_window)]
    pooled = [s for r in chosen for s in r["samples_ms"]]
    step = max(1, len(pooled) // settings.max_samples)
    return pooled[::step], len(chosen), len(repeats)


def _latency(baseline: dict[str, Any], candidate: dict[str, Any], settings: VerdictSettings) -> Check:
    from scipy.stats import mannwhitneyu

    base, base_used, base_all = steady_state(baseline, settings)
    cand, cand_used, cand_all = steady_state(candidate, settings)
    base_median, cand_median = statistics.median(base), statistics.median(cand)
    effect = cand_median / base_median - 1
    slower = float(mannwhitneyu(cand, base, alternative="greater").pvalue)
    faster = float(mannwhitneyu(cand, base, alternative="less").pvalue)
    where = (
        f"median {base_median * 1000:.2f} -> {cand_median * 1000:.2f} µs ({effect:+.1%}), "
        f"steady processes {base_used}/{base_all} and {cand_used}/{cand_all}"
    )
    is_faster = faster < settings.alpha and effect < -settings.min_effect
    if slower < settings.alpha and effect > settings.min_effect:
        status, text = "fail", f"slower: {where}, p = {slower:.2g} < {settings.alpha}"
    elif is_faster:
        status, text = "pass", f"faster: {where}, p = {faster:.2g}"
    else:
        status, text = "pass", f"no change beyond {settings.min_effect:.0%}: {where}, p = {slower:.2g}"
    if min(base_all, cand_all) < 3 and status != "fail":
        text += "; fewer than 3 measuring processes: a slow process can hide a change (measure.repeats)"
    return Check("latency", status, text, base_median, cand_median, effect, faster=is_faster)


def _accuracy(baseline: dict[str, Any], candidate: dict[str, Any], settings: VerdictSettings) -> Check:
    base, cand = get(baseline, "device.accuracy.accuracy"), get(candidate, "device.accuracy.accuracy")
    if base is None or cand is None:
        return Check("accuracy", "n/a", "no accuracy in one of the runs (deployed without data)", base, cand)
    drop = (base - cand) * 100
    status = "fail" if drop > settings.max_accuracy_drop else "pass"
    return Check(
        "accuracy", status, f"{base:.4f} -> {cand:.4f} ({-drop:+.2f} points, limit -{settings.max_accuracy_drop})",
        base, cand, -drop,
    )  # fmt: skip


def _growth(name: str, base: float | None, cand: float | None, limit: float) -> Check:
    if not base or cand is None:
        return Check(name, "n/a", f"no {name} in one of the runs", base, cand)
    growth = cand / base - 1
    status = "fail" if growth > limit else "pass"
    return Check(name, status, f"{base:,} -> {cand:,} ({growth:+.1%}, limit +{limit:.0%})", base, cand, growth)


def _paid_off(baseline: dict[str, Any], candidate: dict[str, Any], latency: Check) -> Check:
    """A pruned or clustered candidate should be smaller (gzip) or faster than its parent, the baseline."""
    kinds = _stage_kinds(candidate)
    if get(baseline, "model.sha256") == get(candidate, "model.sha256"):
        return Check("compression paid off", "n/a", "the same model on both sides")
    if not kinds & {"prune", "cluster"}:
        return Check("compression paid off", "n/a", "the candidate is not a pruned or clustered model")
    base_gzip, cand_gzip = _gzip_bytes(baseline), _gzip_bytes(candidate)
    smaller = base_gzip is not None and cand_gzip is not None and cand_gzip < base_gzip
    faster = latency.faster
    if smaller or faster:
        why = [f"gzip {base_gzip:,} -> {cand_gzip:,} B" if smaller else "", "faster" if faster else ""]
        return Check("compression paid off", "pass", ", ".join(w for w in why if w))
    return Check(
        "compression paid off", "warn",
        f"the {'/'.join(sorted(kinds & {'prune', 'cluster'}))} model is neither smaller (gzip "
        f"{base_gzip} -> {cand_gzip} B) nor faster than its parent on this board",
    )  # fmt: skip


def _stage_kinds(record: dict[str, Any]) -> set[str]:
    run_dir = get(record, "model.run_dir")
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
