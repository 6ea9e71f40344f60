"""``edgepipe deploy --target NAME RUN_DIR`` (or ``--model m.tflite --data eval.npz``): measure on a board."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

from edgepipe.cli.console import shown, stderr, stdout
from edgepipe.cli.optimize import ConsoleProgress
from edgepipe.errors import ConfigError
from edgepipe.progress import Progress
from edgepipe.reporting.formatting import mib, parity_agreement
from edgepipe.run_models import RunModel

if TYPE_CHECKING:
    from edgepipe.deployment.stages import StageDeploy
from edgepipe.tasks import METRIC_MEANING

AGENT_PHASES = {
    "import-runtime": "importing the TFLite runtime",
    "load": "loading the model",
    "first-inference": "first inference",
    "warmup": "warming up",
    "measure": "measuring",
    "evaluate": "evaluating accuracy",
    "repeat": "measuring again in a new process",
    "paired": "timing the model and the baseline in alternating blocks",
}


class DeployProgress(ConsoleProgress):
    """Adds an upload bar (bytes, speed) and the agent's own steps to the phase lines."""

    def __init__(self) -> None:
        super().__init__()
        self._upload: RichBar | None = None
        self._upload_task: Any = None

    def upload_started(self, name: str, total: int) -> None:
        if not stderr.is_terminal:  # logs (CI, device farms) get the one "sent" line, no bar redraws
            return
        self._upload = RichBar(
            TextColumn(f"  sending {name}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=stderr,
            transient=True,
        )
        self._upload.start()
        self._upload_task = self._upload.add_task(name, total=total)

    def upload_advanced(self, done: int, total: int) -> None:
        if self._upload is not None:
            self._upload.update(self._upload_task, completed=done)
        if done >= total and self._upload is not None:
            self._upload.stop()
            self._upload = None

    def upload_finished(self, name: str, total: int, stored: bool) -> None:
        if self._upload is not None:  # cut off before the last byte
            self._upload.stop()
            self._upload = None
        if stored:  # only now: the board has checked size and sha256
            stderr.print(f"  sent {name} [dim]({total:,} bytes)[/]", highlight=False)
        else:
            stderr.print(f"  {name} was not stored on the board", highlight=False)

    def upload_skipped(self, name: str, total: int) -> None:
        stderr.print(f"  {name} already on the board [dim]({total:,} bytes not sent)[/]", highlight=False)

    def agent_event(self, event: Mapping[str, object]) -> None:
        if event.get("event") != "phase":
            return
        text = AGENT_PHASES.get(str(event.get("phase")), str(event.get("phase")))
        if event.get("phase") == "measure":
            text += (
                f" (at least {event.get('runs')} runs and {event.get('min_seconds')} s,"
                f" at most {event.get('max_runs')} runs)"
            )
        elif event.get("phase") in ("repeat", "paired"):
            text += f" ({event.get('repeat')}/{event.get('repeats')})"
        elif event.get("phase") == "warmup":
            text += f" ({event.get('runs')} runs)"
        stderr.print(f"  agent: {escape(text)}", highlight=False)


def _positive(value: float | None, option: str) -> float | None:
    """A duration must be a finite number above zero; anything else is a usage mistake (exit 2)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a positive number of seconds", param_hint=option)
    return value


def deploy(
    run_dir: Annotated[
        Path | None, typer.Argument(help="Run directory written by 'edgepipe optimize' (model.tflite + eval.npz).")
    ] = None,
    target: Annotated[str, typer.Option("--target", "-t", help="Target name (targets/*.yaml) or file.")] = "local",
    model: Annotated[Path | None, typer.Option("--model", help="Any .tflite file instead of a run directory.")] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Evaluation .npz: x/y, x_test/y_test, or x_0/y_0... per input/output (README)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Result file (default: deploy-TARGET.json).")] = None,
    runs: Annotated[int | None, typer.Option(help="Timed runs, at least (overrides the target).")] = None,
    min_seconds: Annotated[float | None, typer.Option(help="Keep timing for at least this long.")] = None,
    repeats: Annotated[int | None, typer.Option(help="Measure in this many separate processes.")] = None,
    eval_samples: Annotated[int | None, typer.Option(help="Evaluate on the first N samples only.")] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="Score the outputs as classification, regression or reconstruction (one per output: "
            "classification,regression) instead of the recipe's task or the data's types (integer y: class labels).",
        ),
    ] = None,
    deadline: Annotated[
        float | None,
        typer.Option(
            help="Overall deadline of the job on the board, seconds (> 0).",
            callback=lambda v: _positive(v, "--deadline"),
        ),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="Tag the run in the history (main, a commit, a branch); repeatable."),
    ] = None,
    history: Annotated[
        str | None,
        typer.Option(
            "--history", help="Results history: a SQLite file or postgresql:// URL; default $EDGEPIPE_HISTORY."
        ),
    ] = None,
    no_history: Annotated[bool, typer.Option("--no-history", help="Do not record the run.")] = False,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Also measure this model (run dir, .tflite, tag or run id) interleaved with the candidate, "
            "for 'edgepipe compare'.",
        ),
    ] = None,
    stages: Annotated[
        bool,
        typer.Option("--stages", help="Also measure the float model and every recipe stage's model (for the report)."),
    ] = False,
    profile: Annotated[
        bool,
        typer.Option(
            "--profile",
            help="Also measure each operator's time on the board (and its roofline place); with --stages, every "
            "stage's (the report shows what changed per layer from the float model to the final one).",
        ),
    ] = False,
    profile_seconds: Annotated[
        float | None,
        typer.Option(help="Time the profile at least this long (overrides the target; longer: finer resolution)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output; the table only.")] = False,
) -> None:
    """Send a model to a board, measure latency, memory and accuracy there, and write the result."""
    from edgepipe import api

    if stages and run_dir is None:
        raise ConfigError("--stages needs a run directory of 'edgepipe optimize', not --model")
    progress: Progress = Progress() if quiet else DeployProgress()

    def started(stage: RunModel) -> None:
        if not quiet:
            stderr.print(f"measuring stage [bold]{stage.name}[/] ({stage.path.relative_to(run_dir)})", highlight=False)

    try:
        outcome = api.deploy(
            run_dir,
            target=target,
            model=model,
            data=data,
            out=out,
            runs=runs,
            min_seconds=min_seconds,
            repeats=repeats,
            eval_samples=eval_samples,
            deadline_s=deadline,
            history=history,
            record=not no_history,
            tags=tag or [],
            baseline=baseline,
            profile=profile or profile_seconds is not None,
            profile_seconds=profile_seconds,
            progress=progress,
            task=task,
        )
    except BaseException:
        if isinstance(progress, ConsoleProgress):
            progress.finish(failed=True)
        raise
    if isinstance(progress, ConsoleProgress):
        progress.finish()
    print_result(outcome.record)
    if "profile" in outcome.record:
        print_profile(outcome.record["profile"])
    stdout.print(f"wrote [bold]{escape(shown(outcome.path))}[/]", highlight=False)
    if outcome.run_id is not None:
        tags = f" tagged {', '.join(tag)}" if tag else ""
        stdout.print(f"recorded as run {outcome.run_id}{tags} in {outcome.record['history']['path']}", highlight=False)
    if stages:
        done = api.deploy_stages(
            run_dir, target=target, runs=runs, min_seconds=min_seconds, repeats=repeats, eval_samples=eval_samples,
            deadline_s=deadline, history=history, record=not no_history, tags=tag or [], on_stage=started,
            profile=profile or profile_seconds is not None, profile_seconds=profile_seconds,
        )  # fmt: skip
        print_stages(done)


def print_profile(profile: dict[str, Any], count: int = 10) -> None:
    """The slowest operators, and how their sum compares with the whole model's latency."""
    from edgepipe.analyze.profile import slowest

    if "error" in profile:
        error = profile["error"]
        stderr.print(
            f"[yellow]warning:[/] no profile: {error['class']}: {escape(str(error['message']))}", highlight=False
        )
        return
    emulated = "  [yellow](emulated: not the board's speed)[/]" if profile["emulated"] else ""
    table = Table("#", "operator", "layer", "time", "share", "MACs", "bytes", "bound", box=None, pad_edge=False,
                  title=f"slowest operators (of {len(profile['ops'])}){emulated}", title_justify="left")  # fmt: skip
    for row in slowest(profile, count):
        table.add_row(
            str(row["index"]), row["op"], row["layer"] or "", _ms(row["time_ms"]), f"{row['share']:.1%}",
            f"{row['macs']:,}", f"{row['bytes']:,}", row.get("bound", ""),
        )  # fmt: skip
    stdout.print(table)
    ratio = profile["sum_over_whole"]
    whole = (
        f" = {ratio:.0%} of the whole model's {_ms(profile['whole_ms'])} timed in the same rounds (its invoke "
        f"overhead of {_ms(profile['overhead_ms'])} not counted)"
        if ratio
        else ""
    )
    stdout.print(
        f"per-operator times sum to {_ms(profile['sum_ms'])}{whole}; {profile['unresolved']} operator(s) too fast "
        f"to resolve; {profile['rounds']} rounds in {profile['seconds']:.1f} s"
        + (f", peak RSS {profile['peak_rss_kb'] / 1024:.0f} MiB" if profile.get("peak_rss_kb") else ""),
        highlight=False,
    )


def print_stages(done: list[StageDeploy]) -> None:
    """One line per stage; the first model failure re-raised at the end."""
    table = Table("stage", "score", "latency p50 / p99", "peak RSS", "result", box=None, pad_edge=False)
    for item in done:
        if item.outcome is None:
            assert item.error is not None
            table.add_row(item.model.name, "[red]failed[/]", "", "", f"[red]{type(item.error).__name__}[/]")
            continue
        device = item.outcome.result["device"]
        latency = device["timing"]["latency_ms"]
        block = device.get("accuracy") or {}
        table.add_row(
            item.model.name,
            f"{block['metric']} {block['value']:.4g}" if block.get("value") is not None else "n/a",
            f"{_ms(latency['p50'])} / {_ms(latency['p99'])}",
            mib(device["memory"]["vmhwm_kb"]["after_runs"]),
            str(item.outcome.path),
        )
    stdout.print(table)
    failures = [item.error for item in done if item.error is not None]
    if failures:
        raise failures[0]


def print_result(result: dict[str, Any]) -> None:
    device = result["device"]
    timing, memory = device["timing"], device["memory"]["vmhwm_kb"]
    latency = timing["latency_ms"]
    board, runtime = device["board"], device["runtime"]
    emulated = bool(board.get("emulated"))
    where = f"{board['machine']}, EMULATED by QEMU" if emulated else board.get("cpu_model") or board["machine"]
    title = f"edgepipe deploy: {result['target']['name']} ({where})"
    slow = "  [yellow](emulated: not the board's speed)[/]" if emulated else ""
    table = Table("measure", "value", title=title, title_justify="left", box=None, pad_edge=False)
    table.add_row(
        "runtime",
        f"{runtime['name']} {runtime['version']}, {runtime['threads']} thread(s), "
        f"XNNPACK {'on' if runtime['xnnpack'] else 'off'}",
    )
    table.add_row("load / first inference", f"{timing['load_ms']:.2f} ms / {timing['first_inference_ms']:.3f} ms")
    table.add_row(
        "latency p50 / p90 / p99",
        f"{_ms(latency['p50'])} / {_ms(latency['p90'])} / {_ms(latency['p99'])}{slow}",
    )
    table.add_row(
        "latency min / mean ± std / max",
        f"{_ms(latency['min'])} / {_ms(latency['mean'])} ± {_ms(latency['std'])} / {_ms(latency['max'])}"
        f"  [dim]({latency['count']:,} runs in {len(timing.get('repeats') or [1])} process(es))[/]",
    )
    paired = timing.get("baseline")
    if paired:
        table.add_row("against the baseline", _paired_row(result, paired))
    table.add_row(
        "peak RSS (VmHWM)",
        f"{mib(memory['before_load'])} before load, {mib(memory['after_load'])} loaded, "
        f"{mib(memory['after_runs'])} after runs" + ("  [yellow](the QEMU process's)[/]" if emulated else ""),
    )
    checks = result["checks"]
    if checks["device_accuracy"] is None and checks.get("device_value") is not None:
        host, delta = checks["host_value"], checks["error_relative_delta"]
        versus = f" vs host {host:.5g} ({delta:+.2%})" if host is not None and delta is not None else ""
        outputs = len(checks.get("error_per_output") or [])
        table.add_row(
            METRIC_MEANING.get(checks["metric"], checks["metric"]),
            f"{checks['device_value']:.5g} on {result['data']['samples']} samples{versus}"
            + (f", the mean of {outputs} outputs:" if outputs else ""),
        )
    if checks["device_accuracy"] is not None:
        host = checks["host_accuracy"]
        versus = f" vs host {host:.4f} ({checks['accuracy_delta_points']:+.2f} points)" if host is not None else ""
        agreement = checks["top1_agreement_with_host"]
        table.add_row(
            "accuracy",
            f"{checks['device_accuracy']:.4f} on {result['data']['samples']} samples{versus}"
            + (f", top-1 agreement {agreement:.4f}" if agreement is not None else ""),
        )
        if checks.get("device_error") is not None:  # a mixed model's value outputs
            host, delta = checks["host_error"], checks["error_relative_delta"]
            table.add_row(
                f"{METRIC_MEANING.get(checks['error_metric'], checks['error_metric'])} (value outputs)",
                f"{checks['device_error']:.5g} vs host {host:.5g} ({delta:+.2%})",
            )
    for row in checks.get("error_per_output") or []:  # their mean lets the output with the largest errors decide
        relative = "" if row["relative"] is None else f" ({row['relative']:+.2%})"
        table.add_row(f"  output {row['output']}", f"{row['device']:.5g} vs host {row['host']:.5g}{relative}")
    parity = checks.get("parity")
    if parity and parity.get("passed") is not None:
        table.add_row(
            "parity with the host",
            f"{'[green]pass[/]' if parity['passed'] else '[red]FAIL[/]'}: {parity['device']['runtime']} "
            f"{parity['device']['runtime_version']} on {parity['device']['machine']} vs {parity['host']['runtime']} "
            f"{parity['host']['runtime_version']} on {parity['host']['machine']}: {parity_agreement(parity)}, "
            f"largest difference {parity['max_abs_diff']:g} step(s)",
        )
    state = [
        board.get("governor") and f"governor {board['governor']}",
        board.get("mhz_current") and f"{board['mhz_current']} MHz",
        board.get("temperature_c") and f"{board['temperature_c']} °C",
    ]
    throttling = board.get("throttling")
    if throttling:
        state.append("THROTTLED" if throttling.get("throttled_now") else f"throttling {throttling.get('raw')}")
    table.add_row("board", ", ".join(s for s in state if s) or "no frequency/thermal data readable")
    transfer = result["transfer"]
    table.add_row(
        "transfer",
        f"{transfer['uploaded_bytes']:,} bytes sent ({', '.join(transfer['sent']) or 'nothing'}); "
        f"already on board: {', '.join(transfer['already_on_board']) or 'nothing'}",
    )
    stdout.print(table)


def _paired_row(result: dict[str, Any], paired: dict[str, Any]) -> str:
    """One line on the in-process A/B measurement that ``deploy --baseline`` added."""
    import math
    import statistics

    from edgepipe.reporting.latency import block_log_ratios

    source = (result.get("baseline") or {}).get("source", "baseline")
    if paired.get("error"):
        return f"[yellow]not measured[/]: {paired['error']['class']}: {paired['error']['message']}"
    ratios = block_log_ratios(paired["processes"])
    change = math.exp(statistics.median(ratios)) - 1
    return (
        f"{change:+.1%} (median of {len(ratios)} block pairs in {len(paired['processes'])} processes, "
        f"timed alternately with {source}; baseline p50 {_ms(paired['latency_ms']['p50'])})"
    )


def _ms(value: float) -> str:
    return f"{value * 1000:.1f} µs" if value < 1 else f"{value:.2f} ms"
