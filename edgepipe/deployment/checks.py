"""The board's results against the host's: accuracy (or error) within the target's tolerance, parity of the
raw outputs across runtimes, and which error, if any, the deploy ends with."""

from __future__ import annotations

from typing import Any

from edgepipe.config.target import MeasureSettings, ParitySettings, Target
from edgepipe.deployment.inputs import DeployInputs
from edgepipe.errors import (
    AccuracyMismatch,
    AgentError,
    ConfigError,
    DeviceModelError,
    EdgepipeError,
    InvalidModel,
    ModelCrash,
    ModelOutOfMemory,
    ModelTimeout,
    UnsupportedOp,
)
from edgepipe.provenance import host
from edgepipe.score_parts import error_changes, errors, largest_difference
from edgepipe.tasks import mcnemar

CHANCE = 0.05  # McNemar's p at or above which an accuracy difference is called within chance

AGENT_ERRORS: dict[str, tuple[type[EdgepipeError], str]] = {
    "InvalidModel": (InvalidModel, "the file is not a valid TFLite model; re-export it (optimize writes one)"),
    "UnsupportedOp": (
        UnsupportedOp,
        "the board's runtime lacks an operator of this model: install a newer runtime (edgepipe agent install) "
        "or convert with built-in int8 operators only",
    ),
    "InvokeFailed": (ModelCrash, "the interpreter refused to run the model; check its inputs and operators"),
    "ModelCrash": (ModelCrash, "the runtime crashed on this model; try another runtime version or rebuild the model"),
    "ModelTimeout": (
        ModelTimeout,
        "raise the target's measure.time_limit_s, evaluate on fewer samples (deploy --eval-samples N: a slow or "
        "emulated board can take minutes per thousand), or lower measure.runs / min_seconds",
    ),
    "ModelOutOfMemory": (
        ModelOutOfMemory,
        "raise the target's measure.memory_limit_mb if the board has the memory, or deploy a smaller model",
    ),
    "DataMismatch": (ConfigError, "the evaluation data does not fit the model's input; check --data"),
    "MemoryLimitTooLow": (
        ConfigError,
        "raise the target's measure.memory_limit_mb: the runtime and numpy alone need more address space",
    ),
    "BadJob": (ConfigError, "the target's settings are outside what the board's runtime accepts; fix the target"),
    "RuntimeMissing": (AgentError, "install a TFLite runtime on the board: edgepipe agent install --target NAME"),
    "AgentFailure": (AgentError, "this is a bug in the device agent; please report the message"),
}


def host_checks(
    inputs: DeployInputs, device: dict[str, Any], measure: MeasureSettings, target: Target
) -> dict[str, Any]:
    """The board's score against the host's: accuracy in points for a classifier, the relative change of the
    error (mean absolute or squared) for regression and reconstruction; a mixed model gets both, for its
    class outputs and its value outputs."""
    block = device.get("accuracy") or {}
    accuracy = block.get("accuracy")
    host_value = (inputs.host_score or {}).get("value")
    checks: dict[str, Any] = {
        "task": inputs.task,
        "metric": block.get("metric") or (inputs.host_score or {}).get("metric"),
        "host_value": host_value,
        "device_value": block.get("value"),
        "host_accuracy": inputs.host_accuracy,
        "device_accuracy": accuracy,
        "accuracy_tolerance_points": measure.accuracy_tolerance,
        "accuracy_delta_points": None,
        "accuracy_matches_host": None,
        "error_tolerance": measure.error_tolerance,
        "error_relative_delta": None,
        "error_matches_host": None,
        "top1_agreement_with_host": (block.get("agreement") or {}).get("top1"),
        "accuracy_discordant": None,
    }
    if accuracy is not None and inputs.host_accuracy is not None:
        delta = round((accuracy - inputs.host_accuracy) * 100, 4)
        checks["accuracy_delta_points"] = delta
        checks["accuracy_matches_host"] = abs(delta) <= measure.accuracy_tolerance
        checks["accuracy_discordant"] = _discordant(block.get("agreement") or {}, block.get("samples"))
    compared = errors(block, inputs.host_score)
    if compared is not None:  # an error model's, or a mixed model's value outputs
        error, device_error, host_error = compared
        checks.update(error_metric=error, host_error=host_error, device_error=device_error)
        relative = (device_error - host_error) / host_error if host_error else 0.0
        checks["error_relative_delta"] = round(relative, 6)
        # each output against the host's, not their mean: one output's error may be a thousandth of another's
        changes = error_changes(block, inputs.host_score)
        differs = largest_difference(changes)
        within = differs is None or (differs.relative is not None and abs(differs.relative) <= measure.error_tolerance)
        checks["error_matches_host"] = abs(relative) <= measure.error_tolerance and within
        if len(changes) > 1 and differs is not None:
            checks["error_largest_difference"] = {
                "output": differs.output, "host": differs.before, "device": differs.after, "relative": differs.relative
            }  # fmt: skip
            checks["error_per_output"] = [
                {"output": c.output, "host": c.before, "device": c.after, "relative": c.relative} for c in changes
            ]
    checks["parity"] = parity_check(inputs, device, target)
    return checks


def _discordant(agreement: dict[str, Any], samples: int | None) -> dict[str, Any] | None:
    """The answers host and board disagree on, by who was right, and McNemar's exact test of them.

    Only those answers can make the two accuracies differ. If the board merely rounds near-ties the other way,
    it turns right answers wrong as often as wrong ones right: the count of each is a fair coin's (two-sided
    binomial test, p = 1 when there is none). A small p says the board is worse (or better) beyond chance.
    """
    pairs = agreement.get("top1_discordant")
    if not pairs:
        return None
    lost, gained = sum(pair[0] for pair in pairs), sum(pair[1] for pair in pairs)
    found: dict[str, Any] = {"host_right_board_wrong": lost, "host_wrong_board_right": gained}
    by_sample = agreement.get("top1_discordant_samples")  # agent 1.11: samples with more or fewer right answers
    if by_sample and lost + gained and sum(agreement.get("top1_answers") or []) != samples:
        # several answers per sample (a mask's pixels): they are not independent; the test counts samples
        found["samples"] = {"host_better": by_sample[0], "board_better": by_sample[1]}
        return found | {"p_value": mcnemar(*by_sample)}
    return found | {"p_value": mcnemar(lost, gained)}


def parity_check(inputs: DeployInputs, device: dict[str, Any], target: Target) -> dict[str, Any] | None:
    """The board's (or emulator's) outputs against the host's: same model, same data, other architecture."""
    if target.parity is None and not target.emulated:
        return None
    settings = target.parity or ParitySettings()
    block = device.get("accuracy") or {}
    agreement = block.get("agreement")
    parity: dict[str, Any] = {
        "host": {
            "machine": host()["machine"],
            "accuracy": inputs.host_accuracy,
            "value": (inputs.host_score or {}).get("value"),
            **_runtime(inputs.host),
        },
        "device": {
            "machine": (device.get("board") or {}).get("machine"),
            "emulated": (device.get("board") or {}).get("emulated"),
            "accuracy": block.get("accuracy"),
            "value": block.get("value"),
            **_runtime(device),
        },
        "top1_agreement": agreement["top1"] if agreement else None,
        "top1_near_ties": None,
        "top1_agreement_beyond_near_ties": None,
        "max_abs_diff": agreement["max_abs_diff"] if agreement else None,
        "error_delta": None,
        "tolerance": settings.model_dump(),
        "passed": None,
    }
    if not agreement:
        return parity
    if agreement["top1"] is not None:  # a classifier: the same answers, and nearly the same numbers
        beyond, near_ties = answers_beyond_near_ties(agreement, block.get("samples"), settings.max_abs_diff)
        parity.update(top1_near_ties=near_ties, top1_agreement_beyond_near_ties=beyond)
        parity["passed"] = agreement["max_abs_diff"] <= settings.max_abs_diff and beyond >= settings.min_top1_agreement
    elif parity["host"]["value"] is not None and parity["device"]["value"] is not None:  # an error metric
        host_error, device_error = parity["host"]["value"], parity["device"]["value"]
        delta = (device_error - host_error) / host_error if host_error else float(device_error != host_error)
        parity["error_delta"] = round(delta, 6)
        parity["passed"] = abs(delta) <= settings.max_error_delta
    return parity


def answers_beyond_near_ties(agreement: dict[str, Any], samples: int | None, steps: float) -> tuple[float, int]:
    """(top-1 agreement not counting near-ties, how many changed answers were near-ties).

    When every output value may differ by up to ``steps``, an answer can change only where the host preferred
    it by at most ``2 * steps`` over the board's answer: a near-tie, which the tolerated rounding explains (an
    undertrained model has many). Only a change beyond that counts against ``min_top1_agreement``. An agent
    that does not report the margins: every change counts. A per-position output (segmentation; agent 1.9)
    answers once per position (``top1_answers``) and sends only its smallest margins: a change whose margin was
    not sent counts as beyond.
    """
    margins = agreement.get("top1_changed_margins")
    if margins is None or not samples:
        return agreement["top1"], 0
    answered = agreement.get("top1_answers") or [samples] * len(margins)
    changed = agreement.get("top1_changed") or [len(output) for output in margins]
    near = [sum(1 for margin in output if margin <= 2 * steps) for output in margins]
    beyond = [count - ties for count, ties in zip(changed, near, strict=True)]
    share = [1 - count / total if total else 1.0 for count, total in zip(beyond, answered, strict=True)]
    return sum(share) / len(share), sum(near)


def parity_gap(parity: dict[str, Any]) -> str:
    """What exceeded the tolerance, in the terms the model is judged by."""
    tolerance, steps = parity["tolerance"], parity["max_abs_diff"]
    if parity["top1_agreement"] is not None:
        beyond = parity.get("top1_agreement_beyond_near_ties")
        agreement = parity["top1_agreement"] if beyond is None else beyond
        return (
            f"top-1 agreement {agreement:.4f}{' beyond near-ties' if beyond is not None else ''} (at least "
            f"{tolerance['min_top1_agreement']}), largest difference {steps:g} integer steps (at most "
            f"{tolerance['max_abs_diff']:g})"
        )
    return (
        f"the error changed by {parity['error_delta']:+.2%} (at most {tolerance['max_error_delta']:.2%}); largest "
        f"output difference {steps:g} integer steps"
    )


def _runtime(result: dict[str, Any] | None) -> dict[str, Any]:
    runtime = (result or {}).get("runtime") or {}
    return {"runtime": runtime.get("name"), "runtime_version": runtime.get("version")}


def deploy_failure(device: dict[str, Any], checks: dict[str, Any], target: Target) -> EdgepipeError | None:
    error = device.get("error")
    if error:
        kind, hint = AGENT_ERRORS.get(error.get("class", ""), (DeviceModelError, None))
        hint = hint.replace("NAME", target.name) if hint else None
        if error.get("class") == "ModelCrash" and target.emulated:
            hint = (
                "QEMU user mode (7.2) crashes inside TFLite's optimized int8 matrix multiply (ruy) on a fully "
                "connected layer over several rows (a Dense on a sequence, attention), with every -cpu and both "
                "runtimes, though the model runs on the host: an emulator limit; measure this model on the board"
            )
        return kind(f"on {target.name}: {error.get('class')}: {error.get('message')}", hint=hint)
    parity = checks.get("parity") or {}
    if parity.get("passed") is False:
        return AccuracyMismatch(
            f"on {target.name}: outputs differ from the host's beyond the parity tolerance: {parity_gap(parity)}",
            hint=f"{parity['device']['runtime']} {parity['device']['runtime_version']} on "
            f"{parity['device']['machine']} computes differently from {parity['host']['runtime']} "
            f"{parity['host']['runtime_version']} here; compare runtimes, or relax the target's parity section",
        )
    if checks["error_matches_host"] is False:
        worst = checks.get("error_largest_difference")
        where = (
            f"; output {worst['output']}: {worst['device']:.5g} against {worst['host']:.5g}"
            + (f" ({worst['relative']:+.2%})" if worst["relative"] is not None else "")
            if worst
            else ""
        )
        return AccuracyMismatch(
            f"on {target.name}: {checks['error_metric']} {checks['device_error']:.5g} differs from the host's "
            f"{checks['host_error']:.5g} by {checks['error_relative_delta']:+.2%}{where} "
            f"(tolerance {checks['error_tolerance']:.2%})",
            hint="the board's runtime computes differently: compare runtime versions, or raise error_tolerance",
        )
    if checks["accuracy_matches_host"] is False:
        return AccuracyMismatch(
            f"on {target.name}: accuracy {checks['device_accuracy']:.4f} differs from the host's "
            f"{checks['host_accuracy']:.4f} by {checks['accuracy_delta_points']:+.2f} points "
            f"(tolerance {checks['accuracy_tolerance_points']}){_disagreements(checks.get('accuracy_discordant'))}",
            hint=_accuracy_hint(checks.get("accuracy_discordant")),
        )
    return None


def _disagreements(discordant: dict[str, Any] | None) -> str:
    if discordant is None:
        return ""
    lost, gained = discordant["host_right_board_wrong"], discordant["host_wrong_board_right"]
    samples = discordant.get("samples")
    over = (
        f", in {samples['host_better']} samples with fewer right and {samples['board_better']} with more: McNemar "
        f"p = {discordant['p_value']:.2g} over samples"
        if samples
        else f" (McNemar p = {discordant['p_value']:.2g})"
    )
    return (
        f": the board got {lost} answer{'s' * (lost != 1)} wrong that the host got right and {gained} right that "
        f"it got wrong{over}"
    )


def _accuracy_hint(discordant: dict[str, Any] | None) -> str:
    if discordant is not None and discordant["p_value"] >= CHANCE:
        return (
            "a difference of so few answers is within chance (rounding near-ties the other way): evaluate on more "
            "samples, or raise the target's measure.accuracy_tolerance"
        )
    return "the board's runtime computes differently: compare runtime versions, or raise accuracy_tolerance"
