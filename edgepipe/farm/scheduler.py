"""The farm's scheduler: one worker per board, each taking its pool's jobs under a lease until none are left.

A worker's loop (LAVA's dispatcher, labgrid's place acquisition, on the results history instead of a server):

0. a labgrid place is first taken through labgrid's coordinator (reserved, waited for, acquired: see
   ``edgepipe.farm.labgrid``); its address comes from the place, and it is released after step 5;
1. take the board's lease (wait while another worker or controller holds it: two measurements on one board at
   once would corrupt both latencies);
2. before the board's first job and after each infrastructure failure, check it (``targets check``); a failed
   check counts as a failure of the board;
3. claim the next pending job of the pool and run it while a heartbeat thread renews the lease;
4. write the result, fenced by the lease: a worker that lost its lease cannot write;
5. release the lease.

An infrastructure failure (exit 10-16) sends the job back to the queue for another board of the pool, until the
pool's ``attempts`` are used up; ``quarantine_after`` consecutive failures take a board out of the run. A model
that fails on a board (exit 20-26) is a result and is never retried.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from edgepipe.config.farm import Board, Farm
from edgepipe.config.target import Target
from edgepipe.database import Location
from edgepipe.errors import INTERNAL_ERROR_EXIT_CODE, EdgepipeError, InfrastructureError
from edgepipe.farm.jobs import FarmModel, JobResult, StagedModels, run_job
from edgepipe.farm.labgrid import CoordinatorLost, LabgridSession, PlaceTurn
from edgepipe.farm.store import Claim, FarmStore
from edgepipe.progress import Progress

IDLE_POLL_S = 1.0  # how often an idle worker looks for work or a free lease


class FarmEvents:
    """What a farm run tells its watcher (the CLI shows a live board table); every method may be called from any
    worker thread."""

    def board(self, board: str, state: str, detail: str = "") -> None:
        """A board's state changed: waiting, checking, measuring, idle, quarantined, done."""

    def phase(self, board: str, text: str) -> None:
        """A step of a board's current job (connecting, sending, running the agent): for a live view only."""

    def job_ended(self, model: str, pool: str, board: str, outcome: str, detail: str) -> None:
        """A job ended on a board: pass, regression, inconclusive, model-error, infra-error, retry, fenced-off."""

    def note(self, text: str) -> None:
        """Something about the whole lab (the labgrid coordinator was reconnected to)."""


@dataclass(frozen=True)
class FarmJobSettings:
    run: int
    out: Path
    models: dict[str, FarmModel]
    baseline: FarmModel | None
    tags: tuple[str, ...]
    thresholds: dict[str, float]


class _BoardProgress(Progress):
    """A deploy's phases, shown as the board's detail in the live table."""

    def __init__(self, events: FarmEvents, board: str) -> None:
        self.events, self.board_name = events, board

    def phase(self, text: str) -> None:
        self.events.phase(self.board_name, text)


class Heartbeat:
    """Renews a lease every ``interval_s`` on its own connection; ``lost`` is set when a renewal fails."""

    def __init__(self, history: Location, claim_board: str, owner: str, fence: int, ttl_s: float, interval_s: float):
        self.args = (claim_board, owner, fence, ttl_s)
        self.history, self.interval_s = history, interval_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{claim_board}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _beat(self) -> None:
        with FarmStore(self.history) as store:
            while not self._stop.wait(self.interval_s):
                try:
                    held = store.renew(*self.args)
                except Exception:  # a history that cannot be written: the lease will lapse, as it should
                    held = False
                if not held:
                    self.lost.set()
                    return


@dataclass(frozen=True)
class FarmContext:
    """What every worker of one controller shares."""

    farm: Farm
    history: Location
    owner: str  # this controller, in leases
    settings: FarmJobSettings
    staged: StagedModels
    events: FarmEvents
    stop: threading.Event
    labgrid: LabgridSession | None = None  # when pools are labgrid places


class BoardWorker:
    def __init__(self, context: FarmContext, board: Board) -> None:
        self.farm, self.history, self.owner = context.farm, context.history, context.owner
        self.settings, self.staged = context.settings, context.staged
        self.events, self.stop = context.events, context.stop
        self.labgrid = context.labgrid
        self.board = board
        self.pool = context.farm.spec.pools[board.pool]
        self.lease = context.farm.spec.lease

    def run(self) -> None:
        try:
            with FarmStore(self.history) as store:
                self._loop(store)
        except EdgepipeError as exc:  # the history itself failed: this board stops, the others go on
            self.events.board(self.board.name, "stopped", exc.message)
        except Exception as exc:  # a bug: say so; the run ends without this board instead of hanging
            self.events.board(self.board.name, "stopped", f"internal error (a bug): {type(exc).__name__}: {exc}")

    def _loop(self, store: FarmStore) -> None:
        run, name = self.settings.run, self.board.name
        waiting_said = False
        while not self.stop.is_set():
            if store.quarantined(run, name):
                self.events.board(name, "quarantined", _reason(store, run, name))
                return
            counts = store.counts(run, self.board.pool)
            if counts["pending"] == 0:
                if counts["running"] == 0:
                    store.board_state(run, name, "done")
                    self.events.board(name, "done")
                    return
                # A job of a controller that died elsewhere comes back once its lease lapses: look each time.
                if not store.reclaim(run):
                    self._idle(store, "idle", "waiting: jobs still running elsewhere may come back")
                continue
            healthy = store.healthy_boards(run, self.board.pool)
            if not store.claimable(run, self.board.pool, name, healthy):  # e.g. a job that failed here
                self._idle(store, "idle", "the jobs left wait for another board of the pool")
                continue
            turn = self._place_turn()
            target: Target | None = self.board.target
            if turn is not None:
                try:
                    target = turn.take(lambda why: self._keep_waiting(store, why),
                                       lambda owner: store.lapsed(name, owner))  # fmt: skip
                except CoordinatorLost as exc:  # the lab's server, not this board: wait while it comes back
                    if exc.given_up:
                        self._board_failure(store, f"{type(exc).__name__}: {exc.message}")
                    else:
                        self._idle(store, "waiting", f"{exc.message}; reconnecting")
                    continue
                except InfrastructureError as exc:
                    self._board_failure(store, f"{type(exc).__name__}: {exc.message}")
                    continue
                if target is None:
                    continue
            try:
                fence = store.acquire(name, self.owner, self.lease.ttl_s)
                if fence is None:
                    if not waiting_said:
                        self._idle(store, "waiting", "leased by another controller")
                        waiting_said = True
                    else:
                        self.stop.wait(IDLE_POLL_S)
                    continue
                waiting_said = False
                try:
                    self._with_lease(store, fence, target)
                finally:
                    store.release(name, self.owner, fence)
            finally:
                if turn is not None:
                    turn.give_back()

    def _place_turn(self) -> PlaceTurn | None:
        if self.board.place is None:
            return None
        assert self.labgrid is not None, "a farm with labgrid places runs with a labgrid session"
        spec = self.pool.labgrid
        assert spec is not None
        return PlaceTurn(self.labgrid, self.board.place, spec.tags, spec.resource, self.board.target)

    def _keep_waiting(self, store: FarmStore, why: str) -> bool:
        """While a labgrid place is busy: say why, and keep waiting while this pool has jobs that wait too."""
        if self.stop.is_set() or store.counts(self.settings.run, self.board.pool)["pending"] == 0:
            return False
        self._idle(store, "waiting", why)
        return not self.stop.is_set()

    def _idle(self, store: FarmStore, state: str, detail: str) -> None:
        store.board_state(self.settings.run, self.board.name, state)
        self.events.board(self.board.name, state, detail)
        self.stop.wait(IDLE_POLL_S)

    def _with_lease(self, store: FarmStore, fence: int, target: Target) -> None:
        run, name = self.settings.run, self.board.name
        if self.pool.health_check and not _checked(store, run, name) and not self._health_check(store, target):
            return
        claim = store.claim(run, self.board.pool, name, self.owner, fence, store.healthy_boards(run, self.board.pool))
        if claim is None:  # the jobs left failed here and wait for another board of the pool
            self.stop.wait(IDLE_POLL_S)
            return
        store.board_state(run, name, "measuring")
        label = f"{claim.model} (attempt {claim.number})"
        self.events.board(name, "measuring", label)
        folder = self.settings.out / "attempts" / f"{claim.attempt:04d}-{claim.model}-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        beat = Heartbeat(self.history, name, self.owner, fence, self.lease.ttl_s, self.lease.heartbeat_s)
        try:
            with beat:
                result = run_job(
                    target,
                    self.settings.models[claim.model],
                    self.settings.baseline,
                    self.staged,
                    folder,
                    _BoardProgress(self.events, name),
                    self.settings.thresholds,
                )
        except InfrastructureError as exc:
            self._infrastructure_failure(store, claim, exc)
            return
        except Exception as exc:  # a bug: the job goes back to the queue (or ends) like after a failure
            message = f"internal error (a bug): {exc}"
            store.fail(claim, type(exc).__name__, INTERNAL_ERROR_EXIT_CODE, message, self.pool.attempts)
            self.events.job_ended(claim.model, claim.pool, self.board.name, "infra-error", message)
            return
        self._record(store, claim, result, lost=beat.lost.is_set())

    def _record(self, store: FarmStore, claim: Claim, result: JobResult, lost: bool) -> None:
        name = self.board.name
        written = store.complete(claim, result.outcome, result.exit_code, result.summary, result.records,
                                 self.settings.tags)  # fmt: skip
        if not written:
            why = "heartbeats failed" if lost else "its lease expired"
            self.events.job_ended(claim.model, claim.pool, name, "fenced-off",
                                  f"late result discarded: {why} before it was written")  # fmt: skip
            return
        store.board_ok(self.settings.run, name)
        self.events.job_ended(claim.model, claim.pool, name, result.outcome, _detail(result))
        store.board_state(self.settings.run, name, "idle")

    def _infrastructure_failure(self, store: FarmStore, claim: Claim, exc: InfrastructureError) -> None:
        run, name = self.settings.run, self.board.name
        state = store.fail(claim, type(exc).__name__, exc.exit_code, exc.message, self.pool.attempts)
        if state == "pending":
            self.events.job_ended(claim.model, claim.pool, name, "retry",
                                  f"{type(exc).__name__}: {exc.message} (attempt {claim.number} of "
                                  f"{self.pool.attempts}; retried on another board)")  # fmt: skip
        elif state == "done":
            self.events.job_ended(claim.model, claim.pool, name, "infra-error",
                                  f"{type(exc).__name__}: {exc.message} (attempts used up)")  # fmt: skip
        if store.board_failed(run, name, f"{type(exc).__name__}: {exc.message}", self.pool.quarantine_after):
            self.events.board(name, "quarantined", _reason(store, run, name))

    def _board_failure(self, store: FarmStore, reason: str) -> None:
        """The board could not be reached or taken (before any job): it counts towards its quarantine."""
        run, name = self.settings.run, self.board.name
        if store.board_failed(run, name, reason, self.pool.quarantine_after):
            self.events.board(name, "quarantined", _reason(store, run, name))
        else:
            self.events.board(name, "failed", reason)
            self.stop.wait(IDLE_POLL_S)

    def _health_check(self, store: FarmStore, target: Target) -> bool:
        from edgepipe.deployment.board import check_target

        run, name = self.settings.run, self.board.name
        store.board_state(run, name, "checking")
        self.events.board(name, "checking", "targets check")
        try:
            rows = check_target(target)
        except EdgepipeError as exc:
            failed = f"{type(exc).__name__}: {exc.message}"
        else:
            bad = [row for row in rows if row.status == "fail"]
            failed = "; ".join(f"{row.name}: {row.detail}" for row in bad) if bad else ""
        if not failed:
            store.board_ok(run, name)
            return True
        self._board_failure(store, f"health check failed: {failed}")
        return False


def _checked(store: FarmStore, run: int, board: str) -> bool:
    return any(row["board"] == board and row["checked"] for row in store.boards(run))


def _reason(store: FarmStore, run: int, board: str) -> str:
    return next((row["reason"] or "" for row in store.boards(run) if row["board"] == board), "")


def _detail(result: JobResult) -> str:
    summary = result.summary
    if result.outcome == "model-error":
        return str(summary.get("message"))
    parts = []
    if summary.get("p50_ms") is not None:
        parts.append(f"p50 {summary['p50_ms']:.3f} ms")
    if summary.get("accuracy") is not None:
        parts.append(f"accuracy {summary['accuracy']:.4f}")
    if summary.get("value_error") is not None:
        parts.append(f"{summary['error_metric']} {summary['value_error']:.4g}")
    elif summary.get("accuracy") is None and summary.get("value") is not None:
        parts.append(f"{summary['metric']} {summary['value']:.4g}")
    if "verdict" in summary:
        parts.append(str(summary["message"]))
    return ", ".join(parts)


def run_workers(context: FarmContext) -> None:
    """One worker thread per board, all at once; returns when every pool's jobs are done or its boards are gone.
    Pending jobs of a pool whose boards are all quarantined end as infrastructure errors."""
    threads = [
        threading.Thread(
            target=BoardWorker(context, board).run,
            name=f"board-{board.name}",
            daemon=True,  # a Ctrl-C does not wait for a measurement: the leases lapse, resume picks the jobs up
        )
        for board in context.farm.boards.values()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # join in slices, so Ctrl-C reaches the main thread
            thread.join(0.5)
    run = context.settings.run
    with FarmStore(context.history) as store:
        for pool in context.farm.spec.pools:
            if store.healthy_boards(run, pool) == 0 and not context.stop.is_set():
                given_up = store.give_up(run, pool, f"no healthy board left in pool {pool}")
                if given_up:
                    why = f"{given_up} job(s) not run: every board of pool {pool} is quarantined"
                    context.events.job_ended("*", pool, "-", "infra-error", why)
