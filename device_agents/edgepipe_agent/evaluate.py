"""Accuracy (or error) of the model on the evaluation data, scored as edgepipe scores on the host
(``edgepipe.tasks``), and its raw outputs' agreement with the host's."""

from __future__ import annotations

from typing import Any

from edgepipe_agent.protocol import JobFailed
from edgepipe_agent.runtime import fits, invoke_or_fail, quantize


def _numbered(archive: Any, key: str) -> list[Any]:
    """``key`` alone, or ``key_0, key_1, ...``: one array per input (x) or output (y)."""
    if key in archive.files:
        return [archive[key]]
    arrays = []
    while f"{key}_{len(arrays)}" in archive.files:
        arrays.append(archive[f"{key}_{len(arrays)}"])
    return arrays


def read_data(np: Any, path: str) -> tuple[list[Any], list[Any]]:
    with np.load(path, allow_pickle=False) as archive:
        xs, ys = _numbered(archive, "x"), _numbered(archive, "y")
    if not xs:
        raise JobFailed("DataMismatch", "the evaluation data has no x (or x_0, x_1, ...)")
    return xs, ys


MARGINS_KEPT = 10_000  # of a per-position output's changed answers, the smallest margins (the near-ties)


def answers(np: Any, values: Any, threshold: Any, classes: Any = None) -> Any:
    """One row per answer, as columns whose argmax is the class: a one-unit (binary) output gets its threshold
    in front, so that it answers 1 exactly above it; with ``classes`` (the output's last axis) each position of
    a per-position (segmentation) output is a row. The same rule as edgepipe's tasks.answers."""
    flat = np.asarray(values).reshape(-1, classes) if classes else np.asarray(values).reshape(len(values), -1)
    if threshold is None or flat.shape[1] != 1:
        return flat
    return np.concatenate([np.full_like(flat, threshold, dtype=np.float64), flat.astype(np.float64)], axis=1)


def answer_width(output: list[Any], labels: list[Any]) -> Any:
    """How many values of an output make one answer: its last axis when the labels are shaped like the output
    without it (one label per sample, or per position), 1 when they are shaped like the whole output (multi-hot
    labels, a yes/no answer per value); None when they do not fit. The same rule as edgepipe's
    tasks.answer_width."""
    if output and list(labels) == list(output[:-1]):
        return output[-1]
    if output and list(labels) == list(output):
        return 1
    return None


def _threshold(thresholds: list[Any], index: int) -> Any:
    return thresholds[index] if index < len(thresholds) else None


METRICS = {"classification": "accuracy", "regression": "mae", "reconstruction": "mse"}


def kinds_of(task: Any, outputs: int) -> list[str]:
    """The task of each output: the job's one task repeated, or its list (a mixed model: one per output)."""
    if isinstance(task, list):
        if len(task) != outputs:
            raise JobFailed("DataMismatch", f"the job lists {len(task)} tasks for a model with {outputs} outputs")
        return list(task)
    return [task] * outputs


def infer_task(np: Any, ys: list[Any]) -> Any:
    """Without a task in the job: no targets is reconstruction, integer targets classification, float targets
    regression; outputs of both kinds give one task per output. The same rule as edgepipe's data.infer_task."""
    if not ys:
        return "reconstruction"
    kinds = ["classification" if y.dtype.kind in "iub" else "regression" for y in ys]
    return kinds[0] if len(set(kinds)) == 1 else kinds


def score(
    np: Any,
    task: Any,
    outputs: list[Any],
    targets: list[Any],
    thresholds: list[Any] | None = None,
    classes: list[Any] | None = None,
) -> list[float]:
    """Per output: top-1 accuracy (classification), mean absolute error (regression) or mean squared error
    against the input (reconstruction); ``task``: one for every output, or a list with one per output. The
    same formulas as edgepipe's tasks.score on the host."""
    values = []
    kinds = kinds_of(task, len(outputs))
    for index, (out, target) in enumerate(zip(outputs, targets, strict=True)):
        flat = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
        if kinds[index] == "classification":
            predicted = answers(np, flat, _threshold(thresholds or [], index), _threshold(classes or [], index))
            labels = np.asarray(target).reshape(-1)
            if len(labels) != len(predicted):
                raise JobFailed(
                    "DataMismatch", f"output {index} gives {len(predicted)} answers for {len(labels)} labels"
                )
            values.append(float(np.mean(predicted.argmax(axis=1) == labels)))
            continue
        want = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
        if want.shape != flat.shape:
            raise JobFailed(
                "DataMismatch", f"outputs {list(flat.shape)} cannot be compared with targets {list(want.shape)}"
            )
        values.append(float((np.abs(flat - want) if kinds[index] == "regression" else np.square(flat - want)).mean()))
    return values


def evaluate(np: Any, interpreter: Any, job: dict[str, Any]) -> dict[str, Any]:
    xs, ys = read_data(np, job["data"])
    sources = interpreter.get_input_details()
    if len(xs) != len(sources):
        raise JobFailed(
            "DataMismatch", f"the evaluation data has {len(xs)} input arrays, the model {len(sources)} inputs"
        )
    for index, (x, source) in enumerate(zip(xs, sources, strict=True)):
        if not fits(source, x.shape):
            expected = [int(d) for d in source.get("shape_signature", source["shape"])[1:]]
            which = "" if len(xs) == 1 else f" (input {index})"
            raise JobFailed(
                "DataMismatch",
                f"evaluation samples have shape {list(x.shape[1:])}, model wants {expected}{which} (-1: any)",
            )
    task = job["task"] or infer_task(np, ys)
    count = len(xs[0])
    batch = 256 if all(list(d.get("shape_signature", [1]))[:1] == [-1] for d in sources) else 1
    chunks: list[list[Any]] = [[] for _ in interpreter.get_output_details()]
    for start in range(0, count, batch):
        size = min(batch, count - start)
        wanted = [[size, *[int(d) for d in x.shape[1:]]] for x in xs]  # the data's shape: a dimension may be free
        current = interpreter.get_input_details()
        if any([int(d) for d in detail["shape"]] != shape for detail, shape in zip(current, wanted, strict=True)):
            for source, shape in zip(sources, wanted, strict=True):
                interpreter.resize_tensor_input(source["index"], shape)
            interpreter.allocate_tensors()
        for x, detail in zip(xs, interpreter.get_input_details(), strict=True):
            interpreter.set_tensor(detail["index"], quantize(np, x[start : start + size], detail))
        invoke_or_fail(interpreter)
        for chunk, output in zip(chunks, interpreter.get_output_details(), strict=True):
            chunk.append(interpreter.get_tensor(output["index"]).reshape(size, -1).copy())
    raw = [np.concatenate(chunk) for chunk in chunks]
    dequantized, raw_thresholds = [], []
    thresholds = job["thresholds"] or []
    for index, (values, output) in enumerate(zip(raw, interpreter.get_output_details(), strict=True)):
        scale, zero_point = output["quantization"]
        dequantized.append((values.astype(np.float32) - zero_point) * scale if scale else values.astype(np.float32))
        threshold = _threshold(thresholds, index)  # in the raw (integer) units the agreement compares
        raw_thresholds.append(threshold / scale + zero_point if threshold is not None and scale else threshold)
    targets = ys if task != "reconstruction" else xs
    if len(targets) != len(raw):
        raise JobFailed("DataMismatch", f"the model has {len(raw)} outputs but the data {len(targets)} target arrays")
    kinds = kinds_of(task, len(raw))
    classes: list[Any] = []  # per output: how many of its values make one answer
    for index, (output, target) in enumerate(zip(interpreter.get_output_details(), targets, strict=True)):
        shape = [int(d) for d in output["shape"][1:]]
        width = answer_width(shape, list(np.shape(target)[1:])) if kinds[index] == "classification" else None
        if kinds[index] == "classification" and width is None:
            raise JobFailed(
                "DataMismatch",
                f"labels of shape {list(np.shape(target)[1:])} per sample do not fit output {index} of shape {shape}",
            )
        classes.append(width)
    per_output = score(np, kinds, dequantized, targets, thresholds, classes)
    metrics = [METRICS[kind] for kind in kinds]
    metric = metrics[0] if len(set(metrics)) == 1 else "accuracy"  # a mixed model's headline: its class outputs
    headline = [v for v, m in zip(per_output, metrics, strict=True) if m == metric]
    value = sum(headline) / len(headline)
    report: dict[str, Any] = {
        "samples": count,
        "task": task,
        "metric": metric,
        "value": value,
        "per_output": per_output,
        "accuracy": value if metric == "accuracy" else None,
    }
    if len(set(metrics)) > 1:
        report["per_output_metric"] = metrics
    if metric == "accuracy":  # over every class output; a per-position output counts its positions
        report["correct"] = sum(
            round(v * len(np.asarray(t).reshape(-1)))
            for v, t, kind in zip(per_output, targets, kinds, strict=True)
            if kind == "classification"
        )
    if job["outputs"]:
        with open(job["outputs"], "wb") as handle:
            np.savez(handle, **{f"o_{i}": values for i, values in enumerate(raw)})
    if job["reference"]:
        with np.load(job["reference"], allow_pickle=False) as archive:
            reference = [archive[f"o_{i}"].reshape(count, -1) for i in range(len(archive.files))]
        if [r.shape for r in reference] != [r.shape for r in raw]:
            shapes = [list(r.shape) for r in reference], [list(r.shape) for r in raw]
            raise JobFailed("DataMismatch", f"reference outputs {shapes[0]} do not match {shapes[1]}")
        report["agreement"] = agreement(np, kinds, reference, raw, targets, raw_thresholds, classes)
    return report


def agreement(
    np: Any,
    task: Any,
    reference: list[Any],
    raw: list[Any],
    targets: list[Any],
    thresholds: list[Any] | None = None,
    classes: list[Any] | None = None,
) -> dict[str, Any]:
    """How closely this board's raw outputs (``raw``) follow the host's (``reference``), output by output.

    ``max_abs_diff``: the largest difference of any raw value (integer steps for an int8 output). For a
    classifier, ``top1``: the share of samples given the same answer, and ``top1_changed_margins``: for every
    sample whose answer changed, by how much the host preferred its own answer over the board's (its margin,
    raw units, ascending). A margin of at most twice the step tolerance is a near-tie that rounding within the
    tolerance can flip; the host decides which changes that explains (``edgepipe.deployment.runner``). And
    ``top1_discordant``: per output, how many answers the host had right and the board wrong, and the reverse
    (what McNemar's test of the accuracy difference reads), and ``top1_discordant_samples``: how many samples the
    host got more of right than the board, and fewer (agent 1.11; the same counts for one answer per sample).
    A mixed model's lists hold its class outputs only.
    A per-position output (segmentation) answers once per position: ``top1_answers`` says how many answers
    each output gave, ``top1_changed`` how many changed, and only the ``MARGINS_KEPT`` smallest margins are
    sent.
    """
    top1, margins, largest, discordant, answered, changes = [], [], [], [], [], []
    right_per_sample: list[Any] = []  # host's and board's right answers per sample, over every class output
    kinds = kinds_of(task, len(raw))
    for index, (host, board, target) in enumerate(zip(reference, raw, targets, strict=True)):
        largest.append(float(np.abs(host.astype(np.float64) - board.astype(np.float64)).max()))
        if kinds[index] != "classification":
            continue  # a value output has no answers to agree on: its error is compared instead
        threshold, width = _threshold(thresholds or [], index), _threshold(classes or [], index)
        wide = answers(np, host, threshold, width).astype(np.float64)
        board_wide = answers(np, board, threshold, width)
        host_answer, board_answer = wide.argmax(axis=1), board_wide.argmax(axis=1)
        changed = np.flatnonzero(host_answer != board_answer)
        top1.append(1.0 - len(changed) / len(host_answer) if len(host_answer) else 1.0)
        answered.append(len(host_answer))
        changes.append(len(changed))
        kept = sorted(float(wide[i, host_answer[i]] - wide[i, board_answer[i]]) for i in changed)[:MARGINS_KEPT]
        margins.append(kept)
        labels = np.asarray(target).reshape(-1)
        host_right, board_right = host_answer == labels, board_answer == labels
        discordant.append([int(np.sum(host_right & ~board_right)), int(np.sum(~host_right & board_right))])
        counts = [right.reshape(len(host), -1).sum(axis=1) for right in (host_right, board_right)]
        right_per_sample = (
            counts if not right_per_sample else [a + b for a, b in zip(right_per_sample, counts, strict=True)]
        )
    classifier = bool(top1)  # the lists hold the class outputs only (all of them but a mixed model's value ones)
    # A sample with several answers (a mask's pixels, several class outputs) is lost or gained as a whole: the
    # host's McNemar test counts samples, which are independent, where answers within one are not.
    by_sample = (
        [int(np.sum(right_per_sample[0] > right_per_sample[1])), int(np.sum(right_per_sample[0] < right_per_sample[1]))]
        if classifier
        else None
    )
    return {
        "top1": sum(top1) / len(top1) if classifier else None,
        "top1_changed_margins": margins if classifier else None,
        "top1_discordant": discordant if classifier else None,
        "top1_discordant_samples": by_sample,
        "top1_answers": answered if classifier else None,
        "top1_changed": changes if classifier else None,
        "max_abs_diff": max(largest),
    }
