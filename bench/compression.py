"""Compression benchmark: run the presets on digits and Fashion-MNIST, print every stage side by side.

    .venv/bin/python bench/compression.py            # digits presets + Fashion-MNIST (needs dataset-fashion-mnist)
    .venv/bin/python bench/compression.py --digits   # digits presets only (about 2 minutes)

Per stage: test accuracy of the int8 TFLite model, .tflite bytes, gzip bytes, and the gzip ratio to the float
TFLite model of the same run. All figures come from one invocation; the runs are kept under bench/out/.
Sizes and accuracies are deterministic for a seed on one machine; the seconds column is for orientation only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edgepipe.errors import EdgepipeError
from edgepipe.optimization import pipeline

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ["ptq-int8", "prune-qat", "cluster-qat", "prune-cluster-qat"]
FASHION = ["fashion-prune-cluster-qat"]


def run(name: str, out: Path) -> dict | None:
    started = time.perf_counter()
    try:
        outcome = pipeline.run(pipeline.prepare(ROOT / "recipes" / f"{name}.yaml"), out / name)
    except EdgepipeError as exc:
        print(f"{name}: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return None
    outcome.result["bench_seconds"] = round(time.perf_counter() - started, 1)
    return outcome.result


def rows(result: dict) -> list[tuple]:
    base = result["baseline"]
    float_gzip = base["tflite"]["gzip_bytes"]
    out = [("float", base["tflite"]["accuracy"], base["tflite"]["bytes"], float_gzip, 1.0, base["tflite"]["sparsity"])]
    for stage in result["stages"]:
        label = stage["name"] + (f" ({stage['details']['scheme']})" if stage["details"].get("scheme") else "")
        t = stage["tflite"]
        out.append((label, t["accuracy"], t["bytes"], t["gzip_bytes"], stage["gzip_ratio_vs_float"], t["sparsity"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", action="store_true", help="digits presets only")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    names = DIGITS + ([] if args.digits else FASHION)
    header = (
        f"{'recipe':<27} {'stage':<16} {'int8 acc':>8} {'.tflite B':>10} {'gzip B':>9} {'ratio':>7} {'sparsity':>8}"
    )
    results = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run(name, args.out)
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        if result is None:
            print(f"{name:<27} FAILED (see above)")
            continue
        for label, acc, size, gz, ratio, sparsity in rows(result):
            print(f"{name:<27} {label:<16} {acc:>8.4f} {size:>10,} {gz:>9,} {ratio:>6.1f}x {sparsity:>8.1%}")
        final = result["final"]["agreement"]
        print(
            f"{'':<27} final: drop {final['accuracy_drop_points']:+.2f} points vs float Keras "
            f"{final['float_keras_accuracy']:.4f}, top-1 agreement {final['top1_agreement']:.4f}, "
            f"{result['bench_seconds']}s, data {result['provenance']['data']['train_samples']}/"
            f"{result['provenance']['data']['test_samples']}"
        )


if __name__ == "__main__":
    main()
