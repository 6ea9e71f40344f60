"""Farm runs, their jobs and attempts, board leases and quarantines: rows in the results history.

Everything a controller knows lives here, not in its memory, so a controller that is killed can be replaced by
``farm resume`` (or the same ``farm run`` again) and several controllers can share one lab.

Leases (one row per board, across every farm run and controller sharing the history):

- ``acquire`` takes a board whose lease is free or expired, and increments the board's **fencing number**.
- A heartbeat renews the expiry while a job runs; an expired lease is never renewed (someone may hold it now).
- Every write of a job's result checks, in the same transaction, that the writer still holds the lease with the
  fencing number it was given. A controller that stalled past its lease (a paused VM, a dead link to the
  history) finds a higher number there: its late result is discarded and the attempt says so. The job is then
  either finished by the new holder or back in the queue: it is never recorded twice.

Jobs are claimed inside a write transaction that also checks the lease (SQLite: ``BEGIN IMMEDIATE`` serializes
writers), so two workers never take one job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from edgepipe.errors import ConfigError
from edgepipe.farm.leases import LeaseTable, owner_is_gone
from edgepipe.store import History

RETRY_ELSEWHERE_S = 30.0  # how long a job that failed on a board waits for another board before it may go back

FARM_TABLES = """
CREATE TABLE IF NOT EXISTS farm_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    farm TEXT NOT NULL,
    created TEXT NOT NULL,
    finished TEXT,
    spec_key TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS farm_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    farm_run INTEGER NOT NULL REFERENCES farm_runs(id),
    model TEXT NOT NULL,
    pool TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    board TEXT,
    owner TEXT,
    fence INTEGER,
    outcome TEXT,
    exit_code INTEGER,
    run_id INTEGER,
    baseline_run_id INTEGER,
    summary TEXT,
    UNIQUE (farm_run, model, pool)
);
CREATE TABLE IF NOT EXISTS farm_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job INTEGER NOT NULL REFERENCES farm_jobs(id),
    board TEXT NOT NULL,
    owner TEXT NOT NULL,
    fence INTEGER NOT NULL,
    started TEXT NOT NULL,
    finished TEXT,
    outcome TEXT NOT NULL,
    error_class TEXT,
    exit_code INTEGER,
    message TEXT
);
CREATE TABLE IF NOT EXISTS farm_leases (
    board TEXT PRIMARY KEY,
    owner TEXT,
    fence INTEGER NOT NULL DEFAULT 0,
    expires REAL NOT NULL DEFAULT 0,
    job INTEGER,
    last_owner TEXT,
    wanted_by TEXT,
    wanted_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS farm_boards (
    farm_run INTEGER NOT NULL REFERENCES farm_runs(id),
    board TEXT NOT NULL,
    pool TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'waiting',
    failures INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    checked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (farm_run, board)
);
CREATE INDEX IF NOT EXISTS farm_jobs_by_state ON farm_jobs (farm_run, pool, state);
CREATE INDEX IF NOT EXISTS farm_attempts_by_job ON farm_attempts (job);
"""

# Job states. A job is "pending" until a worker claims it, "running" while one measures it, and "done" with an
# outcome at the end: pass, regression, inconclusive, model-error (never retried) or infra-error (its attempts
# used up, or no healthy board left in its pool).
PENDING, RUNNING, DONE = "pending", "running", "done"


def stamp() -> str:
    """A farm row's time: UTC to the millisecond (attempts last seconds; the farm report and bench/farm.py
    measure their durations and the gaps between them). One format for every farm row, so that the text
    comparisons of the queries (MAX(finished)) order them correctly."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Claim:
    """A job a worker took: which one, on which board, under which lease (owner and fencing number)."""

    job: int
    model: str
    pool: str
    board: str
    owner: str
    fence: int
    attempt: int  # the attempt's row id
    number: int  # 1 for the first attempt of this job


class FarmStore(LeaseTable, History):
    """The results history with the farm's tables. Open one per thread: SQLite connections are not shared."""

    def _prepare(self, timeout: float) -> None:
        super()._prepare(timeout)
        with self._write():
            self._db.serialize_schema()
            for statement in self._db.ddl(FARM_TABLES):
                self._db.execute(statement)

    # ------------------------------------------------------------------------------------------ farm runs
    def create_run(
        self,
        farm: str,
        spec_key: str,
        spec: dict[str, Any],
        jobs: Iterable[tuple[str, str]],
        boards: Iterable[tuple[str, str]],
    ) -> int:
        with self._write():
            run = self._db.insert(
                "INSERT INTO farm_runs (farm, created, spec_key, spec, status) VALUES (?, ?, ?, ?, 'running')",
                (farm, stamp(), spec_key, json.dumps(spec)),
            )
            self._db.executemany(
                "INSERT INTO farm_jobs (farm_run, model, pool, state) VALUES (?, ?, ?, 'pending')",
                [(run, model, pool) for model, pool in jobs],
            )
            self._db.executemany(
                "INSERT INTO farm_boards (farm_run, board, pool) VALUES (?, ?, ?)",
                [(run, board, pool) for board, pool in boards],
            )
        return run

    def unfinished_run(self, spec_key: str) -> int | None:
        found = self._db.execute(
            "SELECT id FROM farm_runs WHERE spec_key = ? AND status = 'running' ORDER BY id DESC LIMIT 1", (spec_key,)
        ).fetchone()
        return int(found[0]) if found else None

    def run_info(self, run: int) -> dict[str, Any]:
        found = self._db.execute(
            "SELECT id, farm, created, finished, status, spec FROM farm_runs WHERE id = ?", (run,)
        ).fetchone()
        if found is None:
            raise ConfigError(f"no farm run {run} in {self.path}", hint="'edgepipe farm status' lists the farm runs")
        return {
            "id": found[0], "farm": found[1], "created": found[2], "finished": found[3], "status": found[4],
            "spec": json.loads(found[5]),
        }  # fmt: skip

    def farm_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        return self._dicts(
            "SELECT r.id, r.farm, r.created, r.finished, r.status, "
            "(SELECT COUNT(*) FROM farm_jobs j WHERE j.farm_run = r.id) AS jobs, "
            "(SELECT COUNT(*) FROM farm_jobs j WHERE j.farm_run = r.id AND j.state = 'done') AS done "
            "FROM farm_runs r ORDER BY r.id DESC LIMIT ?",
            (limit,),
        )

    def finish_run(self, run: int) -> None:
        with self._write():
            self._db.execute(
                "UPDATE farm_runs SET status = 'done', finished = ? WHERE id = ? AND NOT EXISTS "
                "(SELECT 1 FROM farm_jobs WHERE farm_run = ? AND state != 'done')",
                (stamp(), run, run),
            )

    # ----------------------------------------------------------------------------------------------- jobs
    def reclaim(self, run: int) -> list[int]:
        """Jobs left "running" by a holder whose lease has expired, or who is gone: back to pending, their
        attempt marked abandoned (it does not count against the job's attempts). Returns their ids."""
        with self._write():
            clock = self._db.clock()
            rows = self._db.execute(
                "SELECT j.id, j.board, j.owner, j.fence, l.owner, l.fence, l.expires FROM farm_jobs j "
                "LEFT JOIN farm_leases l ON l.board = j.board WHERE j.farm_run = ? AND j.state = 'running'",
                (run,),
            ).fetchall()
            stale = [
                (job, owner, fence)
                for job, _board, owner, fence, holder, held_fence, expires in rows
                if holder != owner or held_fence != fence or expires <= clock or owner_is_gone(owner)
            ]
            why = "the controller stopped or lost its lease before the job ended"
            requeued = [job for job, owner, fence in stale if self._requeue(job, owner, fence, why)]
        return requeued

    def _requeue(self, job: int, owner: str, fence: int, why: str) -> bool:
        """A job that was taken but not finished goes back to the queue; its attempt is marked abandoned and
        does not count against the job's attempts. Only while ``owner`` still has it under ``fence``: two
        controllers reclaiming at once requeue it once."""
        cursor = self._db.execute(
            "UPDATE farm_jobs SET state = 'pending', attempts = attempts - 1, owner = NULL, fence = NULL "
            "WHERE id = ? AND state = 'running' AND owner = ? AND fence = ?",
            (job, owner, fence),
        )
        if cursor.rowcount != 1:
            return False
        self._db.execute(
            "UPDATE farm_attempts SET outcome = 'abandoned', finished = ?, message = ? WHERE job = ? "
            "AND outcome = 'running'",
            (stamp(), why, job),
        )
        return True

    def abandon(self, owner: str) -> None:
        """A controller that stops early (Ctrl-C, SIGTERM) hands its running jobs back and frees its boards."""
        with self._write():
            jobs = self._db.execute(
                "SELECT id, fence FROM farm_jobs WHERE owner = ? AND state = 'running'", (owner,)
            ).fetchall()
            for job, fence in jobs:
                self._requeue(job, owner, fence, "the controller was interrupted")
            self._db.execute("UPDATE farm_leases SET owner = NULL, expires = 0, job = NULL WHERE owner = ?", (owner,))

    def claim(self, run: int, pool: str, board: str, owner: str, fence: int, healthy_boards: int) -> Claim | None:
        """The next pending job of ``pool`` for ``board``, under the lease (owner, fence). A job that failed on
        this board waits for another board of the pool while ``healthy_boards`` says there is one, but only for
        ``RETRY_ELSEWHERE_S``: a board that is healthy but never free (locked in labgrid by someone else) must not
        hold the job forever."""
        with self._write():
            if not self._holds(board, owner, fence):
                return None
            choice = self._choose(run, pool, board, healthy_boards, lock=True)
            if choice is None:
                return None
            job, model, attempts = choice
            self._db.execute(
                "UPDATE farm_jobs SET state = 'running', attempts = ?, board = ?, owner = ?, fence = ? WHERE id = ?",
                (attempts + 1, board, owner, fence, job),
            )
            self._db.execute("UPDATE farm_leases SET job = ? WHERE board = ?", (job, board))
            attempt = self._db.insert(
                "INSERT INTO farm_attempts (job, board, owner, fence, started, outcome) "
                "VALUES (?, ?, ?, ?, ?, 'running')",
                (job, board, owner, fence, stamp()),
            )
            return Claim(job, model, pool, board, owner, fence, attempt, attempts + 1)

    def claimable(self, run: int, pool: str, board: str, healthy_boards: int) -> bool:
        """Whether ``claim`` would give this board a job now (read only: a worker asks before taking its board)."""
        return self._choose(run, pool, board, healthy_boards, lock=False) is not None

    def _choose(self, run: int, pool: str, board: str, healthy_boards: int, lock: bool) -> tuple[int, str, int] | None:
        rows = self._db.execute(
            "SELECT j.id, j.model, j.attempts, EXISTS (SELECT 1 FROM farm_attempts a WHERE a.job = j.id AND "
            "a.board = ? AND a.outcome = 'infra-error'), (SELECT MAX(a.finished) FROM farm_attempts a WHERE "
            "a.job = j.id) FROM farm_jobs j WHERE j.farm_run = ? AND j.pool = ? AND j.state = 'pending' "
            "ORDER BY j.id" + (self._db.skip_locked("j") if lock else ""),
            (board, run, pool),
        ).fetchall()
        waited_out = datetime.now(UTC) - timedelta(seconds=RETRY_ELSEWHERE_S)
        for job, model, attempts, failed_here, last_end in rows:
            if not failed_here or (last_end and datetime.fromisoformat(last_end) < waited_out):
                return job, model, attempts
        if rows and healthy_boards <= 1:
            return rows[0][0], rows[0][1], rows[0][2]  # this is the only board left: a retry here beats no result
        return None

    def complete(
        self,
        claim: Claim,
        outcome: str,
        exit_code: int,
        summary: dict[str, Any],
        records: dict[str, dict[str, Any]],
        tags: Iterable[str] = (),
    ) -> bool:
        """Record a job's end and its deploy records (``candidate``, ``baseline``) in one transaction, only if
        the claim's lease is still held: False (and the attempt marked "fenced-off") for a late result."""
        tags = list(tags)
        with self._write():
            if not self._holds(claim.board, claim.owner, claim.fence):
                self._end_attempt(claim, "fenced-off", None, None, "lease lost before the result: discarded")
                return False
            # the user's tags name the candidate: `compare --baseline pr-123` must not find the baseline's run
            run_ids = {
                role: self._insert(record, tags if role == "candidate" else ()) for role, record in records.items()
            }
            self._db.execute(
                "UPDATE farm_jobs SET state = 'done', outcome = ?, exit_code = ?, run_id = ?, baseline_run_id = ?, "
                "summary = ? WHERE id = ?",
                (outcome, exit_code, run_ids.get("candidate"), run_ids.get("baseline"), json.dumps(summary), claim.job),
            )
            self._end_attempt(claim, "done" if outcome != "model-error" else outcome, None, exit_code, None)
        return True

    def fail(self, claim: Claim, error_class: str, exit_code: int, message: str, attempts: int) -> str | None:
        """An infrastructure failure: the job goes back to the queue while it has attempts left, otherwise it
        ends as infra-error. Returns the job's new state, or None when the lease was lost (nothing written
        but the attempt)."""
        with self._write():
            if not self._holds(claim.board, claim.owner, claim.fence):
                self._end_attempt(claim, "fenced-off", error_class, exit_code, message)
                return None
            self._end_attempt(claim, "infra-error", error_class, exit_code, message)
            if claim.number < attempts:
                self._db.execute(
                    "UPDATE farm_jobs SET state = 'pending', owner = NULL, fence = NULL WHERE id = ?", (claim.job,)
                )
                return PENDING
            summary = {"message": f"{error_class}: {message}", "attempts_used_up": True}
            self._db.execute(
                "UPDATE farm_jobs SET state = 'done', outcome = 'infra-error', exit_code = ?, summary = ? WHERE id = ?",
                (exit_code, json.dumps(summary), claim.job),
            )
            return DONE

    def _end_attempt(
        self, claim: Claim, outcome: str, error_class: str | None, exit_code: int | None, message: str | None
    ) -> None:
        """End a running attempt. One already ended keeps its first ending: a worker that finishes after its
        controller was interrupted and handed the job back finds its attempt "abandoned", and a late
        "fenced-off" must not rewrite that."""
        self._db.execute(
            "UPDATE farm_attempts SET finished = ?, outcome = ?, error_class = ?, exit_code = ?, message = ? "
            "WHERE id = ? AND outcome = 'running'",
            (stamp(), outcome, error_class, exit_code, message, claim.attempt),
        )

    def give_up(self, run: int, pool: str, reason: str) -> int:
        """End the pool's pending jobs as infra-error (no healthy board left to run them)."""
        summary = json.dumps({"message": reason, "attempts_used_up": False})
        with self._write():
            cursor = self._db.execute(
                "UPDATE farm_jobs SET state = 'done', outcome = 'infra-error', exit_code = 10, summary = ? "
                "WHERE farm_run = ? AND pool = ? AND state = 'pending'",
                (summary, run, pool),
            )
        return cursor.rowcount

    def counts(self, run: int, pool: str) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT state, COUNT(*) FROM farm_jobs WHERE farm_run = ? AND pool = ? GROUP BY state", (run, pool)
        ).fetchall()
        return {PENDING: 0, RUNNING: 0, DONE: 0} | {state: int(count) for state, count in rows}

    def jobs(self, run: int) -> list[dict[str, Any]]:
        jobs = self._dicts(
            "SELECT id, model, pool, state, attempts, board, outcome, exit_code, run_id, baseline_run_id, summary "
            "FROM farm_jobs WHERE farm_run = ? ORDER BY id",
            (run,),
        )
        for job in jobs:
            job["summary"] = json.loads(job["summary"]) if job["summary"] else None
        return jobs

    def attempts(self, run: int) -> list[dict[str, Any]]:
        return self._dicts(
            "SELECT a.id, a.job, j.model, j.pool, a.board, a.fence, a.started, a.finished, a.outcome, a.error_class, "
            "a.exit_code, a.message FROM farm_attempts a JOIN farm_jobs j ON j.id = a.job WHERE j.farm_run = ? "
            "ORDER BY a.id",
            (run,),
        )

    def _dicts(self, query: str, parameters: tuple[Any, ...]) -> list[dict[str, Any]]:
        """Rows as dicts keyed by the query's column names (the last part of ``a.id`` is ``id``)."""
        cursor = self._db.execute(query, parameters)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # --------------------------------------------------------------------------------------------- boards
    def boards(self, run: int) -> list[dict[str, Any]]:
        boards = self._dicts(
            "SELECT board, pool, state, failures, quarantined, reason, checked FROM farm_boards WHERE farm_run = ? "
            "ORDER BY pool, board",
            (run,),
        )
        for board in boards:
            board["quarantined"], board["checked"] = bool(board["quarantined"]), bool(board["checked"])
        return boards

    def add_boards(self, run: int, boards: Iterable[tuple[str, str]]) -> None:
        """Boards that joined since the run started (labgrid places tagged for a pool meanwhile)."""
        with self._write():
            self._db.executemany(
                "INSERT INTO farm_boards (farm_run, board, pool) SELECT ?, ?, ? WHERE NOT EXISTS "
                "(SELECT 1 FROM farm_boards WHERE farm_run = ? AND board = ?)",
                [(run, board, pool, run, board) for board, pool in boards],
            )

    def board_state(self, run: int, board: str, state: str) -> None:
        with self._write():
            self._db.execute(
                "UPDATE farm_boards SET state = ? WHERE farm_run = ? AND board = ? AND quarantined = 0",
                (state, run, board),
            )

    def board_ok(self, run: int, board: str) -> None:
        with self._write():
            self._db.execute(
                "UPDATE farm_boards SET failures = 0, checked = 1 WHERE farm_run = ? AND board = ?", (run, board)
            )

    def board_failed(self, run: int, board: str, reason: str, quarantine_after: int) -> bool:
        """Count a consecutive infrastructure failure of the board; True when it is now quarantined."""
        with self._write():
            self._db.execute(
                "UPDATE farm_boards SET failures = failures + 1, checked = 0, reason = ? WHERE farm_run = ? "
                "AND board = ?",
                (reason, run, board),
            )
            failures = int(
                self._db.execute(
                    "SELECT failures FROM farm_boards WHERE farm_run = ? AND board = ?", (run, board)
                ).fetchone()[0]
            )
            if failures < quarantine_after:
                return False
            self._db.execute(
                "UPDATE farm_boards SET quarantined = 1, state = 'quarantined', reason = ? WHERE farm_run = ? "
                "AND board = ?",
                (
                    f"{failures} infrastructure failure{'s' if failures > 1 else ''} in a row; last: {reason}",
                    run,
                    board,
                ),
            )
            return True

    def healthy_boards(self, run: int, pool: str) -> int:
        found = self._db.execute(
            "SELECT COUNT(*) FROM farm_boards WHERE farm_run = ? AND pool = ? AND quarantined = 0", (run, pool)
        ).fetchone()
        return int(found[0])

    def quarantined(self, run: int, board: str) -> bool:
        found = self._db.execute(
            "SELECT quarantined FROM farm_boards WHERE farm_run = ? AND board = ?", (run, board)
        ).fetchone()
        return bool(found and found[0])
