"""Does compression buy speed? Unstructured pruning against channel pruning and low-rank factorization, paired.

    .venv/bin/python bench/structured.py            # the variants table, about 6 minutes on 2 cores
    .venv/bin/python bench/structured.py --ratios   # and channel ratios 0.25/0.5/0.75, plain vs distilled
                                                    # fine-tune: Fashion-MNIST CNN (needs Debian's
                                                    # dataset-fashion-mnist), ResNet- and MobileNet-style
    .venv/bin/python bench/structured.py --ratios-only --models fashion   # the sweep of one model
    .venv/bin/python bench/structured.py --ratios-only --targets local rpi4-emu   # and on the emulated Pi 4
    .venv/bin/python bench/structured.py --ratios-only --models fashion --channel-ratios 0.75 \
        --seeds 0 1 2 --schedule cosine --temperature 2 --alpha 0.5   # distillation's criterion, three seeds

The sweep of all three models at ratios 0.5 and 0.75 on both targets took 28 minutes on 2 cores of an AMD EPYC
(beside a CI run); on the earlier Xeon, 45 minutes for the Fashion CNN and 17 for the digits models (three ratios).

One trained float model (the ResNet-style example at width 48, so that the convolutions, not the interpreter's
per-operator overhead, take the time), four recipes on it, each ending in full-integer PTQ: PTQ alone (the
baseline), 50 % unstructured magnitude pruning, 50 % channel pruning (L1, rounded to multiples of 4) with a
distilled fine-tune, and low-rank factorization (rank 1/4). Each model is deployed to ``local`` with the PTQ
model as ``--baseline``: the agent times both in the same processes in alternating blocks; the printed effect is
the median block ratio (the regression gate's paired measure). MACs, parameters and peak activation bytes come
from the flatbuffers. On an x86 host with AMX/VNNI int8 units, convolution time follows output pixels more than
MACs (``bench/conv_cost.py``): judge channel pruning's speed on the board's core (``--targets rpi4-emu``).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from paired import deploy_paired, print_table

from edgepipe.analyze.static import analyze
from edgepipe.errors import EdgepipeError
from edgepipe.optimization import pipeline
from edgepipe.reporting.latency import paired_check
from edgepipe.reporting.verdict import VerdictSettings
from edgepipe.tflite_model import TfliteModel

FACTORY = """
from edgepipe.examples.cnns import ds_cnn, resnet
from edgepipe.examples.fashion import conv_bn


def wide():
    return resnet(width=48)


def mobile():
    return ds_cnn(width=64)


def fashion():
    return conv_bn(width=32)
"""
DIGITS = "edgepipe.examples.digits:load"


@dataclass(frozen=True)
class Model:
    """One float model of the ratio sweep: trained once, then pruned at every ratio (the same teacher for all)."""

    factory: str
    data: str
    train: dict
    fine_tune: dict


MODELS = {
    "Fashion-MNIST CNN (conv_bn, width 32)": Model(
        "fashion", "edgepipe.examples.fashion:load", {"epochs": 8, "batch_size": 128, "learning_rate": 0.002},
        {"epochs": 2, "batch_size": 128, "learning_rate": 0.001},
    ),
    "ResNet-style (width 48)": Model("wide", DIGITS, {"epochs": 6, "learning_rate": 0.003},
                                     {"epochs": 4, "learning_rate": 0.0005}),
    "MobileNet-style (DS-CNN, width 64)": Model("mobile", DIGITS, {"epochs": 6, "learning_rate": 0.003},
                                                {"epochs": 4, "learning_rate": 0.0005}),
}  # fmt: skip
VARIANTS = {
    "PTQ": [{"kind": "ptq"}],
    "prune 50 % (unstructured)": [{"kind": "prune", "target_sparsity": 0.5}, {"kind": "ptq"}],
    "channel_prune 50 % + distill": [
        {"kind": "channel_prune", "ratio": 0.5, "criterion": "l1", "round_to": 4},
        {"kind": "distill", "fine_tune": {"epochs": 2}},
        {"kind": "ptq"},
    ],
    "low_rank 1/4": [{"kind": "low_rank", "rank_ratio": 0.25, "layers": {"exclude": ["stem_conv", "logits"]}},
                     {"kind": "ptq"}],
}  # fmt: skip


def recipe(
    stages: list[dict],
    folder: Path,
    name: str,
    source: str = "bench_models:wide",
    train: dict | None = None,
    data: str = DIGITS,
    fine_tune: dict | None = None,
    seed: int = 0,
) -> Path:
    """A recipe file; ``source`` is a factory (trained with ``train``) or a trained .keras file (no training)."""
    model: dict = {"source": source, "split_separable_conv": True}
    if train is not None:
        model["train"] = train
    body = {
        "name": name,
        "seed": seed,
        "model": model,
        "data": {"source": data},
        "fine_tune": fine_tune or {"epochs": 2, "learning_rate": 0.0005},
        "stages": stages,
        "gates": {"max_accuracy_drop": None},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def speedups(path: Path, baseline: Path, out: Path, targets: list[str]) -> list[str]:
    """The paired latency change against ``baseline`` on each target, as "-37.5% (1.60x)"."""
    cells = []
    for target in targets:
        result = deploy_paired(path, baseline, out.with_name(f"{out.stem}-{target}.json"), target)
        check = paired_check(result["device"]["timing"]["baseline"]["processes"], VerdictSettings())
        cells.append(f"{check.change:+.1%} ({1 / (1 + check.change):.2f}x)")
    return cells


@dataclass(frozen=True)
class Sweep:
    """What the channel-ratio sweep varies and how it fine-tunes (the command line's choices)."""

    models: list[str]
    targets: list[str]
    shares: list[float]
    seeds: list[int]
    schedule: str
    temperature: float
    alpha: float
    float_model: str | None = None  # a trained .keras to start from instead of training the model's factory
    epochs: int | None = None  # fine-tune epochs and learning rate instead of the model's own
    learning_rate: float | None = None


def ratios(work: Path, sweep: Sweep) -> None:
    """Channel ratios with a plain and a distilled fine-tune (same epochs), each model paired against its PTQ.

    Each float model is trained once (the PTQ run); every ratio starts from that run's ``float/model.keras``, so
    all rows of a model share one teacher and one starting point. With several seeds each fine-tune is repeated
    (the row shows the mean and each seed's accuracy); only the first seed's model is deployed (the architecture,
    hence the latency, does not depend on the seed). After each ratio a line says what share of the plain
    fine-tune's loss against the float model distillation won back (the issue's criterion at 75 %).
    """
    header = ("model", "variant", "fine-tune", "int8 accuracy", "MACs", "peak act. B", ".tflite B",
              *[f"latency on {t} (paired)" for t in sweep.targets])  # fmt: skip
    rows = []
    for label, spec in MODELS.items():
        if sweep.models and spec.factory not in sweep.models:
            continue
        base_tune = {**spec.fine_tune, "learning_rate_schedule": sweep.schedule}
        base_tune.update({"epochs": sweep.epochs} if sweep.epochs else {})
        base_tune.update({"learning_rate": sweep.learning_rate} if sweep.learning_rate else {})
        source, train = (sweep.float_model, None) if sweep.float_model else (f"bench_models:{spec.factory}", spec.train)
        prepared = pipeline.prepare(
            recipe([{"kind": "ptq"}], work, f"{spec.factory}-ptq", source, train, spec.data, base_tune)
        )  # fmt: skip
        base = pipeline.run(prepared, work / f"{spec.factory}-ptq")
        trained = str(base.directory / "float" / "model.keras")
        baseline, base_accuracy = base.directory / "model.tflite", base.result["final"]["accuracy"]
        base_total = analyze(TfliteModel.read(baseline))["total"]
        float_accuracy = base.result["baseline"]["keras_accuracy"]
        size, unmeasured = f"{baseline.stat().st_size:,}", ["(baseline)"] * len(sweep.targets)
        rows.append((label, "PTQ", f"float {float_accuracy:.4f}", f"{base_accuracy:.4f}", f"{base_total['macs']:,}",
                     f"{base_total['peak_activation_bytes']:,}", size, *unmeasured))  # fmt: skip
        for ratio in sweep.shares:
            means = {}
            for mode in ("plain", "distilled"):
                fine_tune = dict(base_tune)
                if mode == "distilled":
                    fine_tune["distill"] = {"temperature": sweep.temperature, "alpha": sweep.alpha}
                stages = [
                    {"kind": "channel_prune", "ratio": ratio, "criterion": "l1", "round_to": 4, "fine_tune": fine_tune},
                    {"kind": "ptq"},
                ]
                accuracies, first = [], None
                for seed in sweep.seeds:
                    name = f"{spec.factory}-{int(ratio * 100)}-{mode}-seed{seed}"
                    path_ = recipe(stages, work, name, trained, None, spec.data, base_tune, seed)
                    outcome = pipeline.run(pipeline.prepare(path_), work / name)
                    accuracies.append(outcome.result["final"]["accuracy"])
                    first = first or (name, outcome.directory / "model.tflite")
                assert first is not None
                means[mode] = sum(accuracies) / len(accuracies)
                name, path = first
                total = analyze(TfliteModel.read(path))["total"]
                cell = f"{means[mode]:.4f}"
                if len(accuracies) > 1:
                    cell += " (" + " ".join(f"{a:.4f}" for a in accuracies) + ")"
                tune = mode if mode == "plain" else f"distilled T {sweep.temperature:g} alpha {sweep.alpha:g}"
                rows.append((label, f"channel {ratio:.0%}", tune, cell, f"{total['macs']:,}",
                             f"{total['peak_activation_bytes']:,}", f"{path.stat().st_size:,}",
                             *speedups(path, baseline, work / f"{name}.json", sweep.targets)))  # fmt: skip
                print_table(header, rows[-1:])
            print(recovered(label, ratio, float_accuracy, means["plain"], means["distilled"]), flush=True)
    print()
    print(f"fine-tunes: {sweep.schedule} learning rate, seeds {' '.join(map(str, sweep.seeds))}"
          + (f", epochs {sweep.epochs}" if sweep.epochs else "")
          + (f", learning rate {sweep.learning_rate:g}" if sweep.learning_rate else "")
          + (f", float model {sweep.float_model}" if sweep.float_model else ""))  # fmt: skip
    print_table(header, rows)


def recovered(label: str, ratio: float, float_accuracy: float, plain: float, distilled: float) -> str:
    """The criterion's line: of what plain fine-tuning lost against the float model, the share distillation won."""
    lost = float_accuracy - plain
    line = f"{label}, channel {ratio:.0%}: plain loses {100 * lost:.2f} points against the float model"
    if lost <= 0:
        return line + f"; nothing for distillation to recover (distilled {100 * (distilled - plain):+.2f} points)"
    return line + f"; distillation recovers {100 * (distilled - plain):+.2f} points = {(distilled - plain) / lost:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", action="store_true", help="also the channel-ratio sweep, plain vs distilled")
    parser.add_argument("--ratios-only", action="store_true", help="only the channel-ratio sweep")
    parser.add_argument(
        "--models",
        nargs="*",
        default=[],
        choices=[m.factory for m in MODELS.values()],
        help="models of the sweep (default: all)",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["local"],
        help="targets of the sweep's paired latency, e.g. local rpi4-emu (default: local; rpi4-emu needs "
        "`edgepipe emulator build rpi4`)",
    )
    parser.add_argument(
        "--channel-ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75], help="shares of channels to remove"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="repeat each fine-tune with these seeds")
    parser.add_argument(
        "--schedule", choices=["constant", "cosine"], default="constant", help="fine_tune.learning_rate_schedule"
    )
    parser.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    parser.add_argument("--alpha", type=float, default=0.3, help="distillation: weight of the labels (default 0.3)")
    parser.add_argument("--epochs", type=int, help="fine-tune epochs (default: the model's own, Fashion 2, digits 4)")
    parser.add_argument("--learning-rate", type=float, help="fine-tune learning rate (default: the model's own)")
    parser.add_argument(
        "--float-model",
        type=Path,
        help="a trained .keras of the one model in --models to prune (and distill from) instead of training its "
        "factory, e.g. bench/augmented_teacher.py's",
    )
    args = parser.parse_args()
    if args.float_model is not None and (len(args.models) != 1 or not args.float_model.is_file()):
        parser.error("--float-model needs an existing .keras file and exactly one model in --models")
    float_model = str(args.float_model.resolve()) if args.float_model else None
    sweep = Sweep(args.models, args.targets, args.channel_ratios, args.seeds, args.schedule, args.temperature,
                  args.alpha, float_model, args.epochs, args.learning_rate)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="edgepipe-bench-structured-"))
    (work / "bench_models.py").write_text(FACTORY)
    if args.ratios_only:
        ratios(work, sweep)
        print(f"runs kept in {work}")
        return
    built: dict[str, tuple[Path, float]] = {}
    for index, (variant, stages) in enumerate(VARIANTS.items()):
        name = f"v{index}"
        outcome = pipeline.run(pipeline.prepare(recipe(stages, work, name)), work / name)
        built[variant] = (outcome.directory / "model.tflite", outcome.result["final"]["accuracy"])
    rows = []
    baseline = built["PTQ"][0]
    for variant, (path, accuracy) in built.items():
        total = analyze(TfliteModel.read(path))["total"]
        effect = "(baseline)"
        if path != baseline:
            result = deploy_paired(path, baseline, work / f"{len(rows)}.json")
            check = paired_check(result["device"]["timing"]["baseline"]["processes"], VerdictSettings())
            effect = f"{check.change:+.1%}"
        size = path.stat().st_size
        rows.append((variant, f"{total['macs']:,}", f"{total['params']:,}", f"{total['peak_activation_bytes']:,}",
                     f"{size:,}", f"{accuracy:.4f}", effect))  # fmt: skip
    header = ("variant", "MACs", "params", "peak act. B", ".tflite B", "int8 accuracy", "latency vs PTQ (paired)")
    print_table(header, rows)
    if args.ratios:
        print()
        ratios(work, sweep)
    print(f"runs kept in {work}")


if __name__ == "__main__":
    try:
        main()
    except EdgepipeError as exc:  # e.g. Fashion-MNIST not installed: say what to do, as the CLI does
        raise SystemExit(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else "")) from None
