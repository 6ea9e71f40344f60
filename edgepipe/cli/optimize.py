"""``edgepipe optimize RECIPE --out DIR``: run a recipe and print the per-stage table."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

from edgepipe.cli.console import shown, stderr, stdout
from edgepipe.errors import GateFailed
from edgepipe.optimization import gates
from edgepipe.progress import Progress
from edgepipe.reporting.formatting import score_label
from edgepipe.shipped import DEFAULT_RECIPE


class ConsoleProgress(Progress):
    """Phases as ticked lines with their duration, training as a live epoch bar with loss and accuracy.

    When stderr is not a terminal (a CI log, a pipe), epochs are plain lines instead of a bar (a log cannot
    redraw, and a long training would otherwise show nothing until it ends): the first, the last, and one at
    most every ``EPOCH_LINE_EVERY_S`` in between, so 40 quick epochs do not fill a screen.
    """

    EPOCH_LINE_EVERY_S = 10.0

    def __init__(self) -> None:
        self._phase: str | None = None
        self._phase_started = 0.0
        self._bar: RichBar | None = None
        self._task: Any = None
        self._epochs: tuple[str, int, float] | None = None  # label, epochs, start (the plain-line form)
        self._last_line = 0.0

    def phase(self, text: str) -> None:
        self.finish()
        self._phase, self._phase_started = text, time.perf_counter()
        stderr.print(f"[cyan]>[/] {escape(text)}", highlight=False)

    def finish(self, failed: bool = False) -> None:
        """Close the current phase line: ``done`` with its duration, or ``failed`` when an error ends it."""
        if self._phase is not None:
            seconds = time.perf_counter() - self._phase_started
            verdict = "[red]failed[/]" if failed else "[green]done[/]"
            stderr.print(f"  {verdict} {escape(self._phase)} [dim]({seconds:.1f}s)[/]", highlight=False)
            self._phase = None

    def training_started(self, label: str, epochs: int) -> None:
        if not stderr.is_terminal:
            self._epochs = (label, epochs, time.perf_counter())
            self._last_line = 0.0
            return
        self._bar = RichBar(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(f"{label}: epoch", total=epochs, metrics="")

    def epoch_done(self, epoch: int, logs: Mapping[str, float]) -> None:
        metrics = f"loss {logs.get('loss', float('nan')):.4f}" + _epoch_metric(logs)
        if self._bar is not None:
            self._bar.update(self._task, completed=epoch, metrics=metrics)
        elif self._epochs is not None:
            _, epochs, started = self._epochs
            now = time.perf_counter()
            if epoch in (1, epochs) or now - self._last_line >= self.EPOCH_LINE_EVERY_S:
                self._last_line = now
                stderr.print(f"    epoch {epoch}/{epochs}  {metrics}  [dim]({now - started:.1f}s)[/]", highlight=False)

    def training_done(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self._epochs = None

    def note(self, text: str) -> None:
        stderr.print(f"  [yellow]note:[/] {escape(text)}", highlight=False)


def _epoch_metric(logs: Mapping[str, float]) -> str:
    """Accuracy and mean absolute error of the epoch, whichever the outputs have; the mean over the outputs of a
    multi-output model, whose metrics Keras names ``<output>_accuracy``."""
    shown = ""
    for metric, short in (("accuracy", "acc"), ("mae", "mae")):
        values = [v for key, v in logs.items() if key == metric or key.endswith(f"_{metric}")]
        if values:
            shown += f"  {short} {sum(values) / len(values):.4f}"
    return shown


def optimize(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML, or a preset's name ('edgepipe recipes list').")] = Path(
        DEFAULT_RECIPE
    ),
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory to write (replaced only when complete).")
    ] = Path("runs/latest"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output; the table only.")] = False,
) -> None:
    """Run a recipe: train the TF-MOT stages, convert to full-integer TFLite, verify, check the gates."""
    from edgepipe import api
    from edgepipe.optimization import pipeline

    progress = Progress() if quiet else ConsoleProgress()
    try:
        outcome = api.optimize(recipe, out=out, progress=progress)
    except GateFailed as failed:
        if isinstance(progress, ConsoleProgress):
            progress.finish()
        if isinstance(failed.outcome, pipeline.Outcome):  # the run finished: show what it measured
            print_summary(failed.outcome.result)
            stdout.print(f"kept [bold]{escape(str(failed.outcome.directory))}[/] for inspection", highlight=False)
        raise
    except BaseException:
        if isinstance(progress, ConsoleProgress):
            progress.finish(failed=True)
        raise
    if isinstance(progress, ConsoleProgress):
        progress.finish()
    print_summary(outcome.record)
    written = f"wrote [bold]{shown(outcome.directory)}[/] (final model: {shown(outcome.model_path)})"
    stdout.print(written, highlight=False)


def _totals(entry: dict[str, Any]) -> tuple[str, str]:
    """MACs per inference and peak activation bytes of a stage's TFLite model (runs from before: n/a)."""
    totals = entry.get("totals")
    if not totals:
        return "n/a", "n/a"
    return f"{totals['macs']:,}", f"{totals['peak_activation_bytes']:,} B"


def _unique_per_layer(weights: list[dict[str, Any]]) -> str:
    return " ".join(
        f"{row['layer']}:{row['unique']}"
        + (f"({row['max_unique_per_channel']}/ch)" if row.get("max_unique_per_channel") else "")
        for row in weights
    )


def _per_output(result: dict[str, Any]) -> str:
    """Each output's metric before and after, for a model with several outputs (the table shows their mean, or a
    mixed model's class outputs' accuracy); empty for one output."""
    before, after = result["baseline"]["keras_metric"], result["final"]["metric"]
    if len(before.get("per_output") or []) < 2:
        return ""
    names = result["baseline"].get("output_names") or [f"output {i}" for i in range(len(before["per_output"]))]
    metrics = before.get("per_output_metric") or [before["metric"]] * len(before["per_output"])
    return ", ".join(
        f"{name} {score_label(metric)} {a:.4g} -> {b:.4g}"
        for name, metric, a, b in zip(names, metrics, before["per_output"], after["per_output"], strict=True)
    )


def _short(metric: str) -> str:
    return {"accuracy": "acc"}.get(metric, metric)


def print_summary(result: dict[str, Any]) -> None:
    """The per-stage table: the task's metric, sizes, ratio to the float model, sparsity, unique weights."""
    baseline = result["baseline"]
    float_gzip = baseline["tflite"]["gzip_bytes"]
    metric = _short(baseline["keras_metric"]["metric"])
    table = Table(title=f"edgepipe optimize: {result['recipe']['name']}", title_justify="left")
    for column in (
        "stage",
        f"keras {metric}",
        f"tflite {metric}",
        ".tflite bytes",
        "gzip bytes",
        "gzip ratio",
        "MACs",
        "peak act.",
        "sparsity",
        "unique weights per layer",
    ):
        table.add_column(
            column, justify="left" if column in ("stage", "unique weights per layer") else "right", overflow="fold"
        )
    float_tflite = baseline["tflite"]
    table.add_row(
        "float",
        f"{baseline['keras_metric']['value']:.4f}",
        f"{float_tflite['metric']['value']:.4f}",
        f"{float_tflite['bytes']:,}",
        f"{float_gzip:,}",
        "1.0x",
        *_totals(baseline),
        f"{float_tflite['sparsity']:.1%}",
        _unique_per_layer(float_tflite["weights"]),
    )
    for stage in result["stages"]:
        tflite = stage["tflite"]
        scheme = stage["details"].get("scheme")
        table.add_row(
            f"{stage['index']}. {stage['name']}"
            + (f" ({scheme})" if scheme else "")
            + (" +KD" if stage["details"].get("distilled_from") else ""),
            f"{stage['keras_metric']['value']:.4f}",
            f"{tflite['metric']['value']:.4f}",
            f"{tflite['bytes']:,}",
            f"{tflite['gzip_bytes']:,}",
            f"{stage['gzip_ratio_vs_float']:.1f}x",
            *_totals(stage),
            f"{tflite['sparsity']:.1%}",
            _unique_per_layer(tflite["weights"]),
        )
    stdout.print(table)
    final = result["final"]
    agreement = final["agreement"]
    conformance = final["conformance"]
    if agreement["top1_agreement"] is not None:
        quality = (
            f"accuracy {agreement['tflite']:.4f} vs float {agreement['float_keras']:.4f}"
            f" (drop {agreement['accuracy_drop_points']:+.2f} points),"
            f" top-1 agreement {agreement['top1_agreement']:.4f}"
        )
    else:
        relative = agreement["relative_change"]
        quality = f"{agreement['metric']} {agreement['tflite']:.5g} vs float {agreement['float_keras']:.5g}" + (
            f" ({relative:+.1%})" if relative is not None else ""
        )
    stdout.print(
        f"final: {final['path']}  {conformance['io_type']} in/out"
        + (" (index inputs int32)" if conformance.get("index_inputs") else "")
        + ", "
        + ("integer-only" if conformance["passed"] else "[red]NOT integer-only[/]")
        + f"  {quality}",
        highlight=False,
    )
    per_output = _per_output(result)
    if per_output:
        stdout.print(f"per output (float Keras -> final): {per_output}", highlight=False)
    totals = result["analysis"]
    stdout.print(
        f"analysis: params {totals['float']['total']['params']:,} -> {totals['final']['total']['params']:,}, "
        f"MACs {totals['float']['total']['macs']:,} -> {totals['final']['total']['macs']:,}, peak activations "
        f"{totals['float']['total']['peak_activation_bytes']:,} B -> "
        f"{totals['final']['total']['peak_activation_bytes']:,} B",
        highlight=False,
    )
    for gate in result["gates"]:
        mark = "[green]pass[/]" if gate["passed"] else "[bold red]FAIL[/]"
        why = gates.chance(gate)
        stdout.print(
            f"gate {gate['gate']}: {mark} ({gate['meaning']} {gate['value']}, limit {gate['limit']})"
            + (f"; {why}" if why else ""),
            highlight=False,
        )
