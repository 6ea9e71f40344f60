"""``edgepipe farm run | status | resume``: many models on every pool of a board farm, with one verdict.

Progress goes to stderr: on a terminal a live table of the boards, in a log one line per change of a board's
state and one per finished job. The matrix goes to stdout; ``farm.json``, ``farm.md`` and ``farm.html`` to the
run's output directory.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from edgepipe.cli.console import shown, stderr, stdout
from edgepipe.database import as_location
from edgepipe.farm.scheduler import FarmEvents

app = typer.Typer(
    rich_markup_mode=None,
    help="Measure models on every pool of a board farm: leases, retries, quarantine, one verdict.",
    no_args_is_help=True,
)

OUTCOME_STYLE = {"pass": "green", "regression": "bold red", "model-error": "bold red", "infra-error": "magenta",
                 "inconclusive": "yellow", "retry": "yellow", "fenced-off": "yellow"}  # fmt: skip
HistoryOption = Annotated[
    str | None,
    typer.Option("--history", help="Results history: a SQLite file or postgresql:// URL (default $EDGEPIPE_HISTORY)."),
]
JunitOption = Annotated[Path | None, typer.Option("--junit", help="Write one JUnit test case per job.")]


class ConsoleFarmEvents(FarmEvents):
    """Board states live on a terminal; one line per change elsewhere (a CI log)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.states: dict[str, tuple[str, str, float]] = {}
        self.live: Live | None = None
        self.started = time.monotonic()

    def __enter__(self) -> ConsoleFarmEvents:
        if stderr.is_terminal:
            self.live = Live(self._table(), console=stderr, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def board(self, board: str, state: str, detail: str = "") -> None:
        with self.lock:
            previous = self.states.get(board)
            self.states[board] = (state, detail, time.monotonic())
            if self.live is not None:
                self.live.update(self._table())
            elif previous is None or previous[:2] != (state, detail):
                stamp = f"{time.monotonic() - self.started:7.1f}s"
                stderr.print(f"{stamp}  {board:<14} {state:<12} {escape(detail)}", highlight=False, soft_wrap=True)

    def phase(self, board: str, text: str) -> None:
        with self.lock:
            state, _detail, since = self.states.get(board, ("measuring", "", time.monotonic()))
            self.states[board] = (state, text, since)
            if self.live is not None:
                self.live.update(self._table())

    def job_ended(self, model: str, pool: str, board: str, outcome: str, detail: str) -> None:
        style = OUTCOME_STYLE.get(outcome, "")
        line = f"{model} on {pool} ({board}): [{style}]{outcome}[/] {escape(detail)}"
        with self.lock:
            (self.live.console if self.live is not None else stderr).print(line, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        with self.lock:
            console = self.live.console if self.live is not None else stderr
            console.print(escape(text), highlight=False, soft_wrap=True)

    def _table(self) -> Table:
        table = Table("board", "state", "for", "detail", box=None, pad_edge=False)
        now = time.monotonic()
        for board, (state, detail, since) in sorted(self.states.items()):
            table.add_row(board, state, f"{now - since:.0f}s", escape(detail[:90]))
        return table


@app.command("run")
def run(
    farm_file: Annotated[Path, typer.Argument(help="The farm file (pools of boards).", metavar="FARM")],
    models: Annotated[
        list[str], typer.Argument(help="Run directories of optimize, or .tflite files.", metavar="MODEL...")
    ],
    baseline: Annotated[
        str | None, typer.Option("--baseline", "-b", help="Run directory, .tflite, tag or run id to judge against.")
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Evaluation .npz for .tflite models.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag every recorded run (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report directory (default farm-runs/FARM-RUN).")] = None,
    junit: JunitOption = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="Points (default 0.5).")] = None,
    min_effect: Annotated[float | None, typer.Option(help="Smallest latency change that counts (0.03).")] = None,
    history: HistoryOption = None,
) -> None:
    """Measure each MODEL on one board of every pool; exit 0 all pass, 7 regression, 20-26 a model failed on a
    board, 10 infrastructure failures used up their retries, 17 inconclusive. Run again to resume."""
    from edgepipe.farm import farm_run

    chosen = {"max_accuracy_drop": max_accuracy_drop, "min_effect": min_effect}
    thresholds = {name: value for name, value in chosen.items() if value is not None}
    with ConsoleFarmEvents() as events:
        outcome = farm_run(farm_file, models, data=data, baseline=baseline, tags=tag or [], out=out,
                           history=as_location(history), thresholds=thresholds, junit=junit, events=events)  # fmt: skip
    _finish(outcome.document, outcome.out, outcome.resumed, junit)


@app.command("resume")
def resume(
    run_id: Annotated[int, typer.Argument(help="The farm run (see 'edgepipe farm status').", metavar="RUN")],
    junit: JunitOption = None,
    history: HistoryOption = None,
) -> None:
    """Finish a farm run whose controller died: only the jobs without a result run, none twice."""
    from edgepipe.farm import farm_resume

    with ConsoleFarmEvents() as events:
        outcome = farm_resume(run_id, history=as_location(history), junit=junit, events=events)
    _finish(outcome.document, outcome.out, True, junit)


@app.command("status")
def status(
    run_id: Annotated[
        int | None, typer.Argument(help="A farm run; none lists the recent ones.", metavar="[RUN]")
    ] = None,
    history: HistoryOption = None,
) -> None:
    """Farm runs, or one run's jobs, boards, leases and attempts, as they are now (live while it runs)."""
    from edgepipe.farm.report import cell_text, farm_document
    from edgepipe.farm.store import FarmStore

    with FarmStore(as_location(history)) as store:
        if run_id is None:
            table = Table("run", "farm", "started", "status", "jobs done", box=None, pad_edge=False)
            for row in store.farm_runs():
                done = f"{row['done']}/{row['jobs']}"
                table.add_row(str(row["id"]), row["farm"], row["created"], row["status"], done)
            stdout.print(table)
            return
        document = farm_document(store, run_id)
        leases = store.leases()
    stdout.print(f"farm run {run_id} ({document['farm']}): {document['status']}", highlight=False)
    jobs = Table("model", "pool", "state", "result", box=None, pad_edge=False, title="jobs", title_justify="left")
    for job in document["jobs"]:
        jobs.add_row(job["model"], job["pool"], job["state"], cell_text(job) if job["state"] == "done" else "")
    stdout.print(jobs)
    boards = Table("board", "pool", "state", "failures", "lease", "quarantine", box=None, pad_edge=False,
                   title="boards", title_justify="left")  # fmt: skip
    held = {lease["board"]: lease for lease in leases}
    for board in document["boards"]:
        lease = held.get(board["board"]) or {}
        holder = "free"
        if lease.get("owner"):
            holder = f"{lease['owner']} (fence {lease['fence']}, {lease['expires_in_s']}s left)"
        boards.add_row(board["board"], board["pool"], board["state"], str(board["failures"]), holder,
                       board["reason"] if board["quarantined"] else "")  # fmt: skip
    stdout.print(boards)
    attempts = Table("#", "model", "pool", "board", "fence", "outcome", "error", box=None, pad_edge=False,
                     title="attempts", title_justify="left")  # fmt: skip
    for a in document["attempts"]:
        error = f"{a['error_class']}: {a['message']}" if a["error_class"] else (a["message"] or "")
        attempts.add_row(str(a["id"]), a["model"], a["pool"], a["board"], str(a["fence"]), a["outcome"], error[:100])
    stdout.print(attempts)


def _finish(document: dict, out: Path, resumed: bool, junit: Path | None) -> None:
    from edgepipe.errors import error_class_for
    from edgepipe.farm.report import cell_text

    cells = {(j["model"], j["pool"]): j for j in document["jobs"]}
    title = f"farm run {document['run']} ({document['farm']})" + (", resumed" if resumed else "")
    table = Table("model", *document["pools"], box=None, pad_edge=False, title=title, title_justify="left")
    for model in document["models"]:
        row = []
        for pool in document["pools"]:
            job = cells.get((model, pool))
            style = OUTCOME_STYLE.get(job["outcome"] or "", "") if job else ""
            row.append(f"[{style}]{cell_text(job)}[/]" if job and style else (cell_text(job) if job else ""))
        table.add_row(model, *row)
    stdout.print(table)
    written = f"wrote {shown(out / 'farm.html')}, farm.md, farm.json" + (f" and {shown(junit)}" if junit else "")
    stdout.print(written, highlight=False)
    code = document["exit_code"]
    if code:
        counts = ", ".join(f"{n} {o}" for o, n in document["counts"].items() if n and o != "pass")
        raise error_class_for(code)(
            f"farm run {document['run']}: {counts} (of {len(document['jobs'])} jobs)",
            hint=f"see {shown(out / 'farm.md')}; 'edgepipe farm status {document['run']}' shows the attempts",
        )
