"""Does compression buy speed? Unstructured pruning against channel pruning and low-rank factorization, paired.

    .venv/bin/python bench/structured.py          # about 6 minutes on 2 cores

One trained float model (the ResNet-style example at width 48, so that the convolutions, not the interpreter's
per-operator overhead, take the time), four recipes on it, each ending in full-integer PTQ: PTQ alone (the
baseline), 50 % unstructured magnitude pruning, 50 % channel pruning (L1, rounded to multiples of 4) with a
distilled fine-tune, and low-rank factorization (rank 1/4). Each model is deployed to ``local`` with the PTQ
model as ``--baseline``: the agent times both in the same processes in alternating blocks; the printed effect is
the median block ratio (the regression gate's paired measure). MACs, parameters and peak activation bytes come
from the flatbuffers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from edgepipe.analyze.static import analyze
from edgepipe.optimization import pipeline
from edgepipe.reporting.latency import paired_check
from edgepipe.reporting.verdict import VerdictSettings
from edgepipe.tflite_model import TfliteModel

FACTORY = """
from edgepipe.examples.cnns import resnet


def wide():
    return resnet(width=48)
"""
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


def recipe(stages: list[dict], folder: Path, name: str) -> Path:
    body = {
        "name": name,
        "seed": 0,
        "model": {"source": "bench_models:wide", "train": {"epochs": 6, "learning_rate": 0.003}},
        "data": {"source": "edgepipe.examples.digits:load"},
        "fine_tune": {"epochs": 2, "learning_rate": 0.0005},
        "stages": stages,
        "gates": {"max_accuracy_drop": None},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def deploy_paired(model: Path, baseline: Path, out: Path) -> dict:
    command = [sys.executable, "-m", "edgepipe", "deploy", "--target", "local", "--model", str(model)]
    command += ["--baseline", str(baseline), "--no-history", "--quiet", "--out", str(out), "--repeats", "5"]
    subprocess.run(command, check=True, capture_output=True, timeout=900)
    return json.loads(out.read_text())


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
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"runs kept in {work}")


if __name__ == "__main__":
    main()
