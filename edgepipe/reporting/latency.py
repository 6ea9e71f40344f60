"""The latency check of the verdict, paired when it can be and unpaired when it must.

**Paired** (the candidate was deployed with ``--baseline`` naming the baseline's model): the agent loaded both
models in the same processes and timed them in alternating blocks of about 10 ms (A B B A ...). Each block of
the candidate is compared with its neighbouring block of the baseline (log of the ratio of their medians), so a
slow spell of the board (measured on this shared VM: seconds at 1.4-1.6x) falls on both sides of a comparison.
The effect is the median block ratio; the test is a one-sided Wilcoxon signed-rank test over the blocks.

**Unpaired** (two deploys made at different times): each run's steady-state processes (those within
``fast_window`` of its fastest) are compared with a one-sided Mann-Whitney U test on the raw samples. On a
quiet board that works; on a shared one a whole deploy can land in a slow spell, which no statistic of one run
can tell from a regression (bench/regression_power.py measures both).

Either way a regression needs significance (``p < alpha``) and a change larger than ``min_effect``: with
thousands of samples any difference is significant, only the effect size says whether it matters.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from edgepipe.reporting.checks import Check, get

if TYPE_CHECKING:
    from edgepipe.reporting.verdict import VerdictSettings


# The target settings a paired measurement applies to both models; when the baseline's run used other ones, only
# the two runs' own samples can show what the change of settings did.
MEASURING_SETTINGS = ("target.threads", "target.xnnpack", "target.runtime")


def paired_processes(baseline: dict[str, Any], candidate: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The candidate's paired measurement against exactly the baseline's model, when it has one."""
    paired = get(candidate, "device.timing.baseline")
    if not paired or paired.get("error") or not paired.get("processes"):
        return None
    if get(candidate, "baseline.model_sha256") != get(baseline, "model.sha256"):
        return None
    if any(get(candidate, path) != get(baseline, path) for path in MEASURING_SETTINGS):
        return None  # both models were timed with the candidate's settings: that says nothing about a changed one
    return paired["processes"]


def block_log_ratios(processes: list[dict[str, Any]]) -> list[float]:
    """log(candidate block median / baseline block median) for each pair of neighbouring blocks."""
    ratios = []
    for process in processes:
        size = int(process["block_runs"])
        model, base = process["model_ms"], process["baseline_ms"]
        for start in range(0, min(len(model), len(base)) - size + 1, size):
            ratios.append(
                math.log(statistics.median(model[start : start + size]) / statistics.median(base[start : start + size]))
            )
    return ratios


def paired_check(processes: list[dict[str, Any]], settings: VerdictSettings, same_model: bool = False) -> Check:
    """The candidate's blocks against the baseline's. ``same_model``: the two sides are the same bytes (a farm
    run whose model did not change), run by the same runtime in the same processes, so nothing about the model
    can differ: a difference is the measurement's own. Two interpreters of one file in one process were
    measured 4.0 % apart (0.74 -> 0.76 µs, p = 4e-6 over 28 block pairs in 2 processes: their memory layouts
    differ), which the test calls a regression; the check passes and says so."""
    from scipy.stats import wilcoxon

    ratios = block_log_ratios(processes)
    base_median = statistics.median(s for p in processes for s in p["baseline_ms"])
    cand_median = statistics.median(s for p in processes for s in p["model_ms"])
    effect = math.exp(statistics.median(ratios)) - 1
    if any(ratios):
        slower = float(wilcoxon(ratios, alternative="greater").pvalue)
        faster = float(wilcoxon(ratios, alternative="less").pvalue)
    else:
        slower = faster = 1.0
    where = (
        f"paired in one job ({len(ratios)} block pairs in {len(processes)} processes): median block ratio "
        f"{effect:+.1%}, median {base_median * 1000:.2f} -> {cand_median * 1000:.2f} µs"
    )
    if same_model:
        return Check(
            "latency", "pass",
            f"the same model bytes on both sides, {where}: a difference between two copies of one model in one "
            f"process is the measurement's (memory layout), not the model's (p = {min(slower, faster):.2g})",
            base_median, cand_median, effect,
        )  # fmt: skip
    return _decide("latency", where, slower, faster, effect, base_median, cand_median, settings)


def unpaired_check(baseline: dict[str, Any], candidate: dict[str, Any], settings: VerdictSettings) -> Check:
    from scipy.stats import mannwhitneyu

    base, base_used, base_all = steady_state(baseline, settings)
    cand, cand_used, cand_all = steady_state(candidate, settings)
    base_median, cand_median = statistics.median(base), statistics.median(cand)
    effect = cand_median / base_median - 1
    slower = float(mannwhitneyu(cand, base, alternative="greater").pvalue)
    faster = float(mannwhitneyu(cand, base, alternative="less").pvalue)
    where = (
        f"separate jobs: median {base_median * 1000:.2f} -> {cand_median * 1000:.2f} µs ({effect:+.1%}), "
        f"steady processes {base_used}/{base_all} and {cand_used}/{cand_all}"
    )
    check = _decide("latency", where, slower, faster, effect, base_median, cand_median, settings)
    notes = []
    if min(base_all, cand_all) < 3 and check.status != "fail":
        notes.append("fewer than 3 measuring processes: a slow process can hide a change (measure.repeats)")
    notes.append("on a shared board, deploy the candidate with --baseline for a paired measurement")
    return _with_message(check, check.message + "; " + "; ".join(notes))


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


def _decide(
    name: str,
    where: str,
    slower: float,
    faster: float,
    effect: float,
    base: float,
    cand: float,
    settings: VerdictSettings,
) -> Check:
    is_faster = faster < settings.alpha and effect < -settings.min_effect
    if slower < settings.alpha and effect > settings.min_effect:
        status, text = "fail", f"slower: {where}, p = {slower:.2g} < {settings.alpha}"
    elif is_faster:
        status, text = "pass", f"faster: {where}, p = {faster:.2g}"
    else:
        status, text = "pass", f"no change beyond {settings.min_effect:.0%}: {where}, p = {slower:.2g}"
    return Check(name, status, text, base, cand, effect, faster=is_faster)


def _with_message(check: Check, message: str) -> Check:
    return replace(check, message=message)
