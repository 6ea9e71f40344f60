"""Regression power: how often the compare verdict cries wolf, and how often it catches a real slowdown.

    .venv/bin/python bench/regression_power.py [--runs 100] [--record]

Records ``--runs`` real deploys of the digits int8 model (runs/digits, from scripts/demo) to the local target,
each as ``deploy --baseline`` with the same model as its own baseline: 5 processes of 2,000 timed runs of the
model alone (what an ordinary deploy measures), then 5 processes that time the model and the baseline in
alternating blocks. They are kept in bench/out/paired-runs.json (``--record`` measures afresh). Then, with the
verdict's default settings (alpha 0.01, minimum effect 3 %):

- **paired** (the candidate deployed with ``--baseline``): each recorded run against its own baseline
  measurement; A/A as recorded (every "regression" is a false alarm), then with the candidate's samples times
  1.02, 1.05 and 1.10 (every "regression" is a detection);
- **unpaired** (two deploys made at different times): 100 pairs of different recorded runs, compared on their
  ordinary samples, A/A and with the same injected slowdowns.

Printed as rates. Acceptance (issue 4): at most 1 false alarm in 100, a 5 % slowdown detected in at least 95.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SAMPLES = OUT / "paired-runs.json"
# What DeployRecord reads (the verdict refuses an incomplete record)
KEEP = ("schema", "status", "target", "measure", "model", "provenance", "baseline", "created")


def digits_run() -> Path:
    existing = ROOT / "runs" / "digits"
    if (existing / "eval.npz").exists():
        return existing
    raise SystemExit("run scripts/demo first: this benchmark measures runs/digits")


def record(count: int) -> list[dict[str, Any]]:
    from edgepipe.config.target import MeasureSettings, Target
    from edgepipe.deployment import deploy
    from edgepipe.provenance import sha256_file
    from edgepipe.reporting.resolve import BaselineModel

    run = digits_run()
    model = run / "model.tflite"
    itself = BaselineModel(sha256_file(model), model, "the same model")
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        target = Target(
            name="local",
            transport="local",
            workdir=str(Path(folder) / "board"),
            measure=MeasureSettings(warmup_runs=20, runs=2000, min_seconds=0, max_runs=2000, repeats=5),
        )
        started = time.monotonic()
        for index in range(count):
            print(f"\rrecording run {index + 1}/{count} ({time.monotonic() - started:.0f} s)", end="", file=sys.stderr)
            result = deploy(target, run_dir=run, out=Path(folder) / "r.json", baseline=itself).result
            runs.append(_slim(result))
    print(file=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    SAMPLES.write_text(json.dumps(runs))
    return runs


def _slim(result: dict[str, Any]) -> dict[str, Any]:
    """What the verdict reads, without the pooled copy of the samples (bench/out stays tens of MB, not hundreds)."""
    slim = {key: result[key] for key in KEEP}
    device = {key: result["device"][key] for key in ("board", "runtime", "agent_version", "accuracy", "memory")}
    timing = result["device"]["timing"]
    device["timing"] = {
        "repeats": timing["repeats"],
        "baseline": timing["baseline"],
        "latency_ms": timing["latency_ms"],
    }
    slim["device"] = device
    return slim


def as_another_file(run: dict[str, Any]) -> dict[str, Any]:
    """The run as if its model were another file: compare passes the very same bytes timed paired whatever was
    measured (nothing about the model can differ), and these rates are the statistic's own."""
    other = copy.deepcopy(run)
    other["model"]["sha256"] = hashlib.sha256(b"another file: " + run["model"]["sha256"].encode()).hexdigest()
    return other


def pooled(run: dict[str, Any]) -> dict[str, Any]:
    """The run with the pooled copy of its samples that ``_slim`` left out, rebuilt from its repeats."""
    timing = run["device"]["timing"]
    timing["samples_ms"] = [s for repeat in timing["repeats"] for s in repeat["samples_ms"]]
    return run


def slowed(run: dict[str, Any], factor: float) -> dict[str, Any]:
    """The candidate's own samples (ordinary and paired) times ``factor``; the baseline's are untouched."""
    slow = as_another_file(run)
    timing = slow["device"]["timing"]
    for repeat in timing["repeats"]:
        repeat["samples_ms"] = [s * factor for s in repeat["samples_ms"]]
    timing["samples_ms"] = [s * factor for s in timing["samples_ms"]]
    for process in timing["baseline"]["processes"]:
        process["model_ms"] = [s * factor for s in process["model_ms"]]
    return slow


def unpaired(run: dict[str, Any]) -> dict[str, Any]:
    alone = copy.copy(run)
    alone["device"] = {**run["device"], "timing": {k: v for k, v in run["device"]["timing"].items() if k != "baseline"}}
    return alone


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--record", action="store_true", help="measure afresh even if recorded runs exist")
    parser.add_argument("--comparisons", type=int, default=100, help="unpaired comparisons")
    args = parser.parse_args()

    from edgepipe.reporting.verdict import VerdictSettings, compare

    recorded = json.loads(SAMPLES.read_text()) if SAMPLES.exists() and not args.record else record(args.runs)
    runs = [pooled(run) for run in recorded]
    settings = VerdictSettings()
    medians = sorted(r["device"]["timing"]["latency_ms"]["p50"] * 1000 for r in runs)
    print(
        f"{len(runs)} recorded deploys of runs/digits on the local target (median latency {medians[0]:.2f}-"
        f"{medians[-1]:.2f} µs across deploys); alpha {settings.alpha}, minimum effect {settings.min_effect:.0%}"
    )

    aa_effects: list[float] = []

    def paired_rate(factor: float) -> tuple[int, int]:
        found = 0
        for index, run in enumerate(runs):
            other = runs[index - 1]  # any deploy of the same model: the baseline's record for the other checks
            candidate = as_another_file(run) if factor == 1.0 else slowed(run, factor)
            verdict = compare(other, candidate, settings)
            latency = next(c for c in verdict.checks if c.name == "latency")
            assert "paired" in latency.message, latency.message
            if factor == 1.0:
                aa_effects.append(latency.change or 0.0)
            found += verdict.status == "regression"
        return found, len(runs)

    rng = random.Random(0)
    pairs = [tuple(rng.sample(range(len(runs)), 2)) for _ in range(args.comparisons)]

    def unpaired_rate(factor: float) -> tuple[int, int]:
        found = 0
        for a, b in pairs:
            candidate = unpaired(runs[b] if factor == 1.0 else slowed(runs[b], factor))
            found += compare(unpaired(runs[a]), candidate, settings).status == "regression"
        return found, len(pairs)

    for label, rate in (("paired (deploy --baseline)", paired_rate), ("unpaired (separate deploys)", unpaired_rate)):
        print(f"\n{label}")
        alarms, total = rate(1.0)
        print(f"  A/A false alarms:        {alarms:>3} / {total}   (acceptance: at most 1 in 100)")
        for slowdown in (0.02, 0.05, 0.10):
            found, total = rate(1 + slowdown)
            note = "   (acceptance: at least 95 in 100)" if slowdown == 0.05 else ""
            print(f"  {slowdown:>4.0%} slowdown detected: {found:>3} / {total}{note}")
        if aa_effects:
            ordered = sorted(aa_effects)
            print(f"  A/A effect (median block ratio - 1): {ordered[0]:+.2%} .. {ordered[-1]:+.2%}, "
                  f"median {ordered[len(ordered) // 2]:+.2%}")  # fmt: skip
            aa_effects.clear()


if __name__ == "__main__":
    main()
