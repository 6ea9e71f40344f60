"""Regression power: how often the compare verdict cries wolf, and how often it catches a real slowdown.

    .venv/bin/python bench/regression_power.py [--runs 30] [--record]

Records ``--runs`` real deploys of the digits int8 model to the local target (each measuring in 5 processes of
2,000 timed runs, as ``targets/local.yaml`` does), keeps them in bench/out/latency-runs.json (``--record`` measures
afresh), then, with the verdict's default settings:

- A/A: 100 comparisons of two different recorded runs of the same model: every "regression" is a false alarm;
- injected slowdowns: 100 comparisons where the candidate's samples are the recorded ones times 1.02, 1.05 and
  1.10: every "regression" is a detection.

Printed as rates. Acceptance: at most 1 false alarm in 100, a 5 % slowdown detected in at least 95 of 100.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SAMPLES = OUT / "latency-runs.json"


def digits_model() -> Path:
    existing = ROOT / "runs" / "digits"
    if (existing / "eval.npz").exists():
        return existing
    raise SystemExit("run scripts/demo first: this benchmark measures runs/digits")


def record(count: int) -> list[dict[str, Any]]:
    from edgepipe.config.target import MeasureSettings, Target
    from edgepipe.deploy import deploy

    with tempfile.TemporaryDirectory() as folder:
        target = Target(
            name="local",
            transport="local",
            workdir=str(Path(folder) / "board"),
            measure=MeasureSettings(warmup_runs=20, runs=2000, min_seconds=0, max_runs=2000, repeats=5),
        )
        runs = []
        for index in range(count):
            print(f"\rrecording run {index + 1}/{count}", end="", file=sys.stderr, flush=True)
            result = deploy(target, run_dir=digits_model(), out=Path(folder) / "r.json").result
            runs.append(result)
    print(file=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    SAMPLES.write_text(json.dumps(runs))
    return runs


def slowed(run: dict[str, Any], factor: float) -> dict[str, Any]:
    slow = copy.deepcopy(run)
    timing = slow["device"]["timing"]
    for repeat in timing["repeats"]:
        repeat["samples_ms"] = [s * factor for s in repeat["samples_ms"]]
    timing["samples_ms"] = [s * factor for s in timing["samples_ms"]]
    return slow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--record", action="store_true", help="measure afresh even if recorded runs exist")
    parser.add_argument("--comparisons", type=int, default=100)
    args = parser.parse_args()

    from edgepipe.report.verdict import VerdictSettings, compare

    runs = json.loads(SAMPLES.read_text()) if SAMPLES.exists() and not args.record else record(args.runs)
    settings = VerdictSettings()
    rng = random.Random(0)
    pairs = [tuple(rng.sample(range(len(runs)), 2)) for _ in range(args.comparisons)]
    medians = sorted(r["device"]["timing"]["latency_ms"]["p50"] * 1000 for r in runs)
    print(f"{len(runs)} recorded runs of runs/digits on the local target, pooled medians "
          f"{medians[0]:.2f}-{medians[-1]:.2f} µs; settings: {settings.model_dump()}")  # fmt: skip

    def regressions(factor: float) -> int:
        found = 0
        for a, b in pairs:
            candidate = runs[b] if factor == 1.0 else slowed(runs[b], factor)
            verdict = compare(runs[a], candidate, settings)
            found += verdict.status == "regression"
        return found

    print(f"A/A false alarms:       {regressions(1.0):>3} / {len(pairs)}   (acceptance: at most 1)")
    for slowdown in (0.02, 0.05, 0.10):
        found = regressions(1 + slowdown)
        note = "   (acceptance: at least 95)" if slowdown == 0.05 else ""
        print(f"{slowdown:>4.0%} slowdown detected: {found:>3} / {len(pairs)}{note}")


if __name__ == "__main__":
    main()
