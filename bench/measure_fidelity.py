"""Measurement fidelity: does the agent report the latency a bare loop and LiteRT's own benchmark see?

    .venv/bin/python bench/measure_fidelity.py [--rounds 11] [--threads 1] [--cpus 1]

For each model, three measurements of the same file with the same thread count, interleaved round by round
(this machine is shared and noisy, so only side-by-side ratios mean anything):

- agent  : edgepipe's device agent through the local transport (sandboxed child, the same job as a board gets)
- bare   : a fresh Python process with nothing but ``Interpreter(...)``, ``set_tensor`` and a timed
           ``invoke()`` loop
- litert : ``ai_edge_litert/tools/benchmark_litert_model.py`` as shipped, run in its own process. Its
           JSON rounds to 0.01 ms, too coarse for a 2 µs model, so it runs through a wrapper that turns the
           rounding off; nothing else of the tool changes.

All use a zero input tensor, XNNPACK on, and the median of the timed runs, and all are pinned to the same
CPU(s): the two cores of this shared VM run at different speeds at times, which would otherwise decide the
per-round ratio. Printed: each round's medians, then the median over rounds of agent/bare and agent/litert,
and litert - bare in µs per run. Models: the digits int8 model (``runs/digits`` if present, else the ptq-int8
preset is run into bench/out) and a MobileNetV2-class int8 model (alpha 0.35, 96x96x3, random weights:
latency does not depend on the weights' values), built once into bench/out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"

BARE_LOOP = """
import sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
path, threads, warmup, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
interpreter = Interpreter(model_path=path, num_threads=threads)
interpreter.allocate_tensors()
detail = interpreter.get_input_details()[0]
shape = [1, *detail["shape"][1:]]
if list(detail["shape"]) != shape:
    interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()
interpreter.set_tensor(detail["index"], np.zeros(shape, detail["dtype"]))
for _ in range(warmup):
    interpreter.invoke()
invoke, clock, samples = interpreter.invoke, time.perf_counter_ns, []
for _ in range(runs):
    t0 = clock()
    invoke()
    samples.append(clock() - t0)
samples.sort()
print(samples[len(samples) // 2] / 1e6)
"""

LITERT_TOOL = """
import json, sys
import ai_edge_litert.tools.benchmark_litert_model as tool
tool.round = lambda value, digits=None: value   # the tool rounds to 0.01 ms; keep full resolution
sys.argv = ["benchmark_litert_model.py", *sys.argv[1:]]
tool.main()
"""


def digits_model() -> Path:
    existing = ROOT / "runs" / "digits" / "model.tflite"
    if existing.exists():
        return existing
    target = OUT / "fidelity-digits" / "model.tflite"
    if not target.exists():
        subprocess.run(
            [sys.executable, "-m", "edgepipe", "optimize", "recipes/ptq-int8.yaml", "--out", str(target.parent), "-q"],
            cwd=ROOT,
            check=True,
        )
    return target


def mobilenet_model() -> Path:
    target = OUT / "mobilenetv2-035-96-int8.tflite"
    if target.exists():
        return target
    import numpy as np

    from edgepipe.convert.tflite import to_int8_tflite
    from edgepipe.keras_compat import keras

    print("building the MobileNetV2-class int8 model (once) ...", file=sys.stderr, flush=True)
    k = keras()
    k.utils.set_random_seed(0)
    model = k.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)
    calibration = np.random.default_rng(0).uniform(-1, 1, size=(32, 96, 96, 3)).astype(np.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(to_int8_tflite(model, calibration, "int8"))
    return target


def agent_median(model: Path, threads: int, warmup: int, runs: int) -> float:
    from edgepipe.config.target import MeasureSettings, Target
    from edgepipe.deployment.agent import agent_info
    from edgepipe.deployment.job import build_job, run_job
    from edgepipe.transport.local import LocalTransport

    target = Target(name="local", transport="local", threads=threads)
    measure = MeasureSettings(warmup_runs=warmup, runs=runs, min_seconds=0, max_runs=runs)
    job = build_job(target, measure, str(model))
    result = run_job(LocalTransport(), sys.executable, str(agent_info().path), job, 600)  # the file a board gets
    if result["status"] != "ok":
        raise SystemExit(f"agent failed: {result['error']}")
    return float(result["timing"]["latency_ms"]["p50"])


def bare_median(model: Path, threads: int, warmup: int, runs: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", BARE_LOOP, str(model), str(threads), str(warmup), str(runs)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def litert_median(model: Path, threads: int, warmup: int, runs: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        subprocess.run(
            [sys.executable, "-c", LITERT_TOOL, "--model", str(model), "--num_threads", str(threads),
             "--warmup_runs", str(warmup), "--num_runs", str(runs), "--result_json", str(out)],
            capture_output=True,
            text=True,
            check=True,
        )  # fmt: skip
        return float(json.loads(out.read_text())["latency"]["median_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--cpus",
        default=None,
        help="comma-separated CPUs to pin all three to (children inherit it); default: the last --threads CPUs",
    )
    args = parser.parse_args()
    usable = sorted(os.sched_getaffinity(0))
    cpus = {int(c) for c in args.cpus.split(",")} if args.cpus else set(usable[-args.threads :])
    os.sched_setaffinity(0, cpus)  # on a shared 2-core VM the cores differ; compare on the same one(s)
    print(f"pinned to CPU(s) {sorted(cpus)} of {usable}")
    models = {"digits int8 MLP": (digits_model(), 20000), "MobileNetV2-0.35 96px int8": (mobilenet_model(), 300)}
    summary = []
    for label, (model, runs) in models.items():
        print(f"\n{label}: {model.relative_to(ROOT)} ({model.stat().st_size:,} B), {runs} timed runs, "
              f"{args.threads} thread(s)")  # fmt: skip
        print(
            f"{'round':>5} {'agent ms':>12} {'bare ms':>12} {'litert ms':>12} {'agent/bare':>11} {'agent/litert':>13}"
        )
        to_bare, to_tool, tool_extra = [], [], []
        for index in range(args.rounds):
            order = [agent_median, bare_median, litert_median]
            order = order[index % 3 :] + order[: index % 3]  # rotate who goes first
            medians = {fn.__name__: fn(model, args.threads, 20, runs) for fn in order}
            agent, bare, tool = medians["agent_median"], medians["bare_median"], medians["litert_median"]
            to_bare.append(agent / bare)
            to_tool.append(agent / tool)
            tool_extra.append((tool - bare) * 1000)
            print(
                f"{index + 1:>5} {agent:>12.5f} {bare:>12.5f} {tool:>12.5f} {agent / bare:>11.3f} {agent / tool:>13.3f}"
            )
        summary.append((label, statistics.median(to_bare), statistics.median(to_tool), statistics.median(tool_extra)))
    print("\nmedian over rounds (1.000 = identical; acceptance: within 0.95-1.05, goal 0.97-1.03)")
    for label, bare, tool, extra in summary:
        print(f"  {label:<28} agent/bare {bare:.3f}   agent/litert {tool:.3f}   (litert - bare: {extra:+.2f} µs/run)")
    print(
        "litert runs CompiledModel.run_by_name(signature, buffer dicts) per inference, the agent and the bare loop"
        "\nInterpreter.invoke(); a difference that stays the same in µs across models is that API's own overhead."
    )


if __name__ == "__main__":
    main()
