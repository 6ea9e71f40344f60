"""Does compression buy speed? Unstructured pruning against channel pruning and low-rank factorization, paired.

    .venv/bin/python bench/structured.py            # the variants table, about 6 minutes on 2 cores
    .venv/bin/python bench/structured.py --ratios   # and channel ratios 0.25/0.5/0.75, plain vs distilled
                                                    # fine-tune, ResNet- and MobileNet-style (about 25 minutes)

One trained float model (the ResNet-style example at width 48, so that the convolutions, not the interpreter's
per-operator overhead, take the time), four recipes on it, each ending in full-integer PTQ: PTQ alone (the
baseline), 50 % unstructured magnitude pruning, 50 % channel pruning (L1, rounded to multiples of 4) with a
distilled fine-tune, and low-rank factorization (rank 1/4). Each model is deployed to ``local`` with the PTQ
model as ``--baseline``: the agent times both in the same processes in alternating blocks; the printed effect is
the median block ratio (the regression gate's paired measure). MACs, parameters and peak activation bytes come
from the flatbuffers.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml
from paired import deploy_paired, print_table

from edgepipe.analyze.static import analyze
from edgepipe.optimization import pipeline
from edgepipe.reporting.latency import paired_check
from edgepipe.reporting.verdict import VerdictSettings
from edgepipe.tflite_model import TfliteModel

FACTORY = """
from edgepipe.examples.cnns import ds_cnn, resnet


def wide():
    return resnet(width=48)


def mobile():
    return ds_cnn(width=64)
"""
MODELS = {"ResNet-style (width 48)": "wide", "MobileNet-style (DS-CNN, width 64)": "mobile"}
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


def recipe(stages: list[dict], folder: Path, name: str, factory: str = "wide") -> Path:
    body = {
        "name": name,
        "seed": 0,
        "model": {
            "source": f"bench_models:{factory}",
            "train": {"epochs": 6, "learning_rate": 0.003},
            "split_separable_conv": True,
        },
        "data": {"source": "edgepipe.examples.digits:load"},
        "fine_tune": {"epochs": 2, "learning_rate": 0.0005},
        "stages": stages,
        "gates": {"max_accuracy_drop": None},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def ratios(work: Path) -> None:
    """Channel ratios with a plain and a distilled fine-tune (same epochs), each model paired against its PTQ."""
    rows = []
    for label, factory in MODELS.items():
        prepared = pipeline.prepare(recipe([{"kind": "ptq"}], work, f"{factory}-ptq", factory))
        base = pipeline.run(prepared, work / f"{factory}-ptq")
        baseline, base_accuracy = base.directory / "model.tflite", base.result["final"]["accuracy"]
        base_total = analyze(TfliteModel.read(baseline))["total"]
        size = f"{baseline.stat().st_size:,}"
        rows.append((label, "PTQ", "", f"{base_accuracy:.4f}", f"{base_total['macs']:,}",
                     f"{base_total['peak_activation_bytes']:,}", size, "(baseline)"))  # fmt: skip
        for ratio in (0.25, 0.5, 0.75):
            for mode in ("plain", "distilled"):
                fine_tune = {"epochs": 4}
                if mode == "distilled":
                    fine_tune["distill"] = {"temperature": 4, "alpha": 0.3}
                stages = [
                    {"kind": "channel_prune", "ratio": ratio, "criterion": "l1", "round_to": 4, "fine_tune": fine_tune},
                    {"kind": "ptq"},
                ]
                name = f"{factory}-{int(ratio * 100)}-{mode}"
                outcome = pipeline.run(pipeline.prepare(recipe(stages, work, name, factory)), work / name)
                path = outcome.directory / "model.tflite"
                total = analyze(TfliteModel.read(path))["total"]
                result = deploy_paired(path, baseline, work / f"{name}.json")
                check = paired_check(result["device"]["timing"]["baseline"]["processes"], VerdictSettings())
                rows.append((label, f"channel {ratio:.0%}", mode, f"{outcome.result['final']['accuracy']:.4f}",
                             f"{total['macs']:,}", f"{total['peak_activation_bytes']:,}", f"{path.stat().st_size:,}",
                             f"{check.change:+.1%} ({1 / (1 + check.change):.2f}x)"))  # fmt: skip
    header = ("model", "variant", "fine-tune", "int8 accuracy", "MACs", "peak act. B", ".tflite B", "latency (paired)")
    print_table(header, rows)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgepipe-bench-structured-"))
    (work / "bench_models.py").write_text(FACTORY)
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
    if "--ratios" in sys.argv[1:]:
        print()
        ratios(work)
    print(f"runs kept in {work}")


if __name__ == "__main__":
    main()
