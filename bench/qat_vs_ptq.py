"""QAT against PTQ on the BatchNorm CNN examples, measured paired on the local target.

    .venv/bin/python bench/qat_vs_ptq.py          # about 6 minutes on 2 cores

For the ResNet-style and the depthwise-separable example (``edgepipe.examples.cnns``) it runs three recipes on
the same trained float model: post-training quantization (PTQ), quantization-aware training of the whole model
(QAT: TF-MOT folds every BatchNorm), and QAT with BatchNormalization left out (what edgepipe's hint used to
advise: BatchNorm stays unfolded). Each QAT model is then deployed to ``local`` with the PTQ model as
``--baseline``: the agent times both in the same processes in alternating blocks, and the printed effect is
the median block ratio (the regression gate's paired measure). Operator counts come from the flatbuffers.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import yaml
from paired import deploy_paired, print_table

from edgepipe.errors import EdgepipeError
from edgepipe.optimization import pipeline
from edgepipe.reporting.latency import paired_check
from edgepipe.reporting.verdict import VerdictSettings
from edgepipe.tflite_model import TfliteModel

VARIANTS = {
    "PTQ": [{"kind": "ptq"}],
    "QAT": [{"kind": "qat"}],
    "QAT, BN left out": [{"kind": "qat", "layers": {"exclude": ["BatchNormalization"]}}],
}


def recipe(model: str, stages: list[dict], folder: Path, name: str) -> Path:
    body = {
        "name": name,
        "seed": 0,
        "model": {"source": f"edgepipe.examples.cnns:{model}", "train": {"epochs": 8, "learning_rate": 0.003}},
        "data": {"source": "edgepipe.examples.digits:load"},
        "fine_tune": {"epochs": 2, "learning_rate": 0.0005},
        "stages": stages,
        "gates": {"max_accuracy_drop": None},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgepipe-bench-qat-"))
    rows = []
    for model in ("resnet", "ds_cnn"):
        built: dict[str, Path] = {}
        accuracy: dict[str, float] = {}
        for variant, stages in VARIANTS.items():
            name = f"{model}-{variant.split(',')[0].lower()}{'-bn-out' if 'BN' in variant else ''}"
            try:
                outcome = pipeline.run(pipeline.prepare(recipe(model, stages, work, name)), work / name)
            except EdgepipeError as exc:
                rows.append((model, variant, f"failed: {type(exc).__name__}: {exc.message[:80]}", "", "", ""))
                continue
            built[variant] = outcome.directory / "model.tflite"
            accuracy[variant] = outcome.result["final"]["accuracy"]
        for variant, path in built.items():
            ops = collections.Counter(op.name for op in TfliteModel.read(path).ops)
            effect = "(baseline)"
            if variant != "PTQ" and "PTQ" in built:
                result = deploy_paired(path, built["PTQ"], work / f"{model}-{len(rows)}.json")
                check = paired_check(result["device"]["timing"]["baseline"]["processes"], VerdictSettings())
                effect = f"{check.change:+.1%}"
            extra = sum(ops[name] for name in ("MUL", "QUANTIZE", "DEQUANTIZE")) + ops["ADD"] - ops_adds(model)
            rows.append((model, variant, str(sum(ops.values())), str(extra), f"{accuracy[variant]:.4f}", effect))
    header = ("model", "variant", "operators", "extra MUL/ADD/QUANTIZE", "int8 accuracy", "latency vs PTQ (paired)")
    print_table(header, rows)
    print(f"runs kept in {work}")


def ops_adds(model: str) -> int:
    """The ADD operators the architecture itself has (the ResNet's residual adds)."""
    return 2 if model == "resnet" else 0


if __name__ == "__main__":
    main()
