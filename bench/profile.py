"""Per-operator profile benchmark: how well the operators' times add up, how stable they are, what they cost.

    .venv/bin/python bench/profile.py                 # MobileNetV2 (224x224, int8) and the digits MLP, 3 runs each
    .venv/bin/python bench/profile.py --size 128      # a smaller MobileNetV2 input

For each model, three ``deploy --profile`` runs on the local target (one process each, ``repeats: 1``, 20 s of
prefix timing by default: ``--profile-seconds``): the sum of
the operators' times over the whole model's time measured in the same rounds (and with the invoke overhead
added), the number of unresolved
operators, the five slowest operators of each run (and whether all three runs agree on them), the largest
run-to-run spread (standard deviation) of an operator's share, and what the profile costs in wall time next to
the same deploy without it. Everything comes from one invocation; the models are kept under bench/out/.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe import api
from edgepipe.analyze.profile import slowest

ROOT = Path(__file__).resolve().parents[1]


def _int8(model: Any, shape: tuple[int, ...]) -> bytes:
    from edgepipe.keras_compat import tf

    rng = np.random.default_rng(0)
    converter = tf().lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf().lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.random((1, *shape), dtype=np.float32)] for _ in range(16))
    converter.target_spec.supported_ops = [tf().lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf().int8
    return bytes(converter.convert())


def models(out: Path, size: int) -> dict[str, Path]:
    from edgepipe.keras_compat import keras

    k = keras()
    k.utils.set_random_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    mobilenet = out / f"mobilenet_v2_{size}.tflite"
    if not mobilenet.exists():  # random weights: the timing of an int8 MobileNetV2 does not depend on them
        net = k.applications.MobileNetV2(input_shape=(size, size, 3), weights=None, classes=1000)
        mobilenet.write_bytes(_int8(net, (size, size, 3)))
    digits = out / "digits_mlp.tflite"
    if not digits.exists():
        mlp = k.Sequential([k.Input((64,)), k.layers.Dense(64, activation="relu"), k.layers.Dense(10)])
        digits.write_bytes(_int8(mlp, (64,)))
    return {f"MobileNetV2 {size}x{size}": mobilenet, "digits MLP": digits}


def one(model: Path, out: Path, profile: bool, seconds: float) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    result = api.deploy(model=model, out=out, record=False, repeats=1, profile=profile, profile_seconds=seconds)
    return result.record, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="MobileNetV2 input size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile-seconds", type=float, default=20.0, help="how long each profile times")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "profile")
    args = parser.parse_args()
    columns = (
        f"{'model':<22} {'run':>3} {'ops':>4} {'unres.':>6} {'whole':>10} {'overhead':>10} {'sum/whole':>9} "
        f"{'(sum+o)/w':>9} {'groups':>6} {'MiB':>5} {'profile s':>9}"
    )
    print(f"{columns}  slowest five")
    for name, path in models(args.out, args.size).items():
        _, plain_s = one(path, args.out / "plain.json", False, args.profile_seconds)
        profiles, costs = [], []
        for run in range(args.runs):
            record, seconds = one(path, args.out / f"{path.stem}-{run}.json", True, args.profile_seconds)
            profile = record["profile"]
            profiles.append(profile)
            costs.append(seconds - plain_s)
            top = [f"{row['index']}:{row['op'].lower()}" for row in slowest(profile)]
            print(
                f"{name:<22} {run + 1:>3} {len(profile['ops']):>4} {profile['unresolved']:>6} "
                f"{profile['whole_ms']:>8.4f}ms {profile['overhead_ms']:>8.4f}ms {profile['sum_over_whole']:>9.3f} "
                f"{(profile['sum_ms'] + profile['overhead_ms']) / profile['whole_ms']:>9.3f} {profile['groups']:>6} "
                f"{profile['peak_rss_kb'] / 1024:>5.0f} {costs[-1]:>9.1f}  {' '.join(top)}"
            )
        tops = [tuple(row["index"] for row in slowest(p)) for p in profiles]
        same = all(set(t) == set(tops[0]) for t in tops)
        spreads = [statistics.pstdev(p["ops"][i]["share"] for p in profiles) for i in range(len(profiles[0]["ops"]))]
        worst = max(range(len(spreads)), key=spreads.__getitem__)
        bounds = [row.get("bound") for row in profiles[0]["ops"]]
        placed = sum(1 for bound in bounds if bound in ("compute", "memory"))
        print(
            f"{name:<22} roofline ({profiles[0]['roofline']['source']['from']}): {placed} of {len(bounds)} operators "
            f"placed, {bounds.count('compute')} compute-bound, {bounds.count('memory')} memory-bound"
        )
        print(
            f"{name:<22} slowest five the same in all {args.runs} runs: {'yes' if same else 'NO'}; largest share "
            f"spread {spreads[worst] * 100:.2f} points (op {worst}, {profiles[0]['ops'][worst]['op']}); "
            f"profile cost {statistics.median(costs):.1f} s over a {plain_s:.1f} s deploy"
        )


if __name__ == "__main__":
    main()
