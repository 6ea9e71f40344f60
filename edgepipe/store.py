"""The results history: every deploy, kept in SQLite (a file) or PostgreSQL (a URL), findable by target, tag
and model.

One row per deploy holds the searchable facts (target, model sha256, runtime and agent versions, headline
metrics) and the whole result record as JSON: the recipe as resolved, the board state, provenance and every raw
latency sample. Several processes may write at once (a device farm runs boards in parallel): on SQLite the
database is in WAL mode, writers take the lock up front (``BEGIN IMMEDIATE``) and wait for each other up to
``timeout``; ``edgepipe.database`` says how PostgreSQL differs.

A deploy is recorded twice: ``start`` when it begins (``complete = 0``) and ``finish`` when it ends, in one
transaction that fills every column. A deploy that is killed in between stays visible as incomplete, and only
complete runs are listed, compared or reported unless asked otherwise.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from edgepipe.database import Database, Location, default_location, shown_location
from edgepipe.errors import ConfigError
from edgepipe.provenance import now

SCHEMA_VERSION = 1

TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started TEXT NOT NULL,
    finished TEXT,
    complete INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    target TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    recipe TEXT,
    source TEXT,
    runtime TEXT,
    runtime_version TEXT,
    agent_version TEXT,
    machine TEXT,
    emulated INTEGER,
    latency_p50_ms REAL,
    latency_p99_ms REAL,
    accuracy REAL,
    peak_rss_kb INTEGER,
    model_bytes INTEGER,
    error_class TEXT,
    record TEXT
);
CREATE TABLE IF NOT EXISTS tags (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    UNIQUE (run_id, tag)
);
CREATE INDEX IF NOT EXISTS runs_by_target ON runs (target, complete, id);
CREATE INDEX IF NOT EXISTS runs_by_model ON runs (model_sha256);
CREATE INDEX IF NOT EXISTS tags_by_tag ON tags (tag);
"""


@dataclass(frozen=True)
class RunRow:
    id: int
    started: str
    finished: str | None
    complete: bool
    status: str
    target: str
    model_sha256: str
    recipe: str | None
    source: str | None
    runtime: str | None
    runtime_version: str | None
    agent_version: str | None
    machine: str | None
    emulated: bool | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    accuracy: float | None
    peak_rss_kb: int | None
    model_bytes: int | None
    error_class: str | None
    tags: tuple[str, ...]


def default_path() -> Location:
    """``$EDGEPIPE_HISTORY`` (a file or a ``postgresql://`` URL), else ``~/.local/share/edgepipe/history.sqlite``."""
    return default_location()


class History:
    """The results history on SQLite (a file) or PostgreSQL (a ``postgresql://`` URL): see ``edgepipe.database``."""

    def __init__(self, path: Location | None = None, timeout: float = 60.0) -> None:
        self.path = path or default_path()
        self._db = Database(self.path, timeout)
        try:
            self._prepare(timeout)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{self.path}: not a usable results history: {exc}") from None

    def _prepare(self, timeout: float) -> None:
        with self._write():
            self._db.serialize_schema()
            for statement in self._db.ddl(TABLES):
                self._db.execute(statement)
            found = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if found is None:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(found[0]) != SCHEMA_VERSION:
                raise ConfigError(
                    f"{shown_location(self.path)}: results history schema {found[0]}, this edgepipe reads "
                    f"{SCHEMA_VERSION}",
                    hint="use another --history file, or an edgepipe of the matching version",
                )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> AbstractContextManager[None]:
        """One write transaction (see ``Database.write``)."""
        return self._db.write()

    # ------------------------------------------------------------------------------------------ writing
    def start(self, target: str, model_sha256: str, source: str | None = None, tags: Iterable[str] = ()) -> int:
        with self._write():
            run_id = self._db.insert(
                "INSERT INTO runs (started, status, target, model_sha256, source) VALUES (?, 'running', ?, ?, ?)",
                (now(), target, model_sha256, source),
            )
            self._tag(run_id, tags)
        return run_id

    def finish(self, run_id: int, record: dict[str, Any], tags: Iterable[str] = ()) -> None:
        """Fill every column from the deploy record and mark the run complete, all in one transaction."""
        facts = summarize(record)
        with self._write():
            self._db.execute(
                f"UPDATE runs SET finished = ?, complete = 1, record = ?, "
                f"{', '.join(f'{name} = ?' for name in facts)} WHERE id = ?",
                (now(), json.dumps(record), *facts.values(), run_id),
            )
            self._tag(run_id, tags)

    def add(self, record: dict[str, Any], tags: Iterable[str] = ()) -> int:
        with self._write():
            return self._insert(record, tags)

    def _insert(self, record: dict[str, Any], tags: Iterable[str]) -> int:
        """A complete run from its record, inside the caller's transaction (the farm commits a job's runs and
        the job itself together, or neither)."""
        facts = summarize(record)
        stamp = now()
        run_id = self._db.insert(
            f"INSERT INTO runs (started, finished, complete, target, model_sha256, source, record, "
            f"{', '.join(facts)}) VALUES (?, ?, 1, ?, ?, ?, ?, {', '.join('?' for _ in facts)})",
            (stamp, stamp, record["target"]["name"], record["model"]["sha256"], record["model"].get("model"),
             json.dumps(record), *facts.values()),
        )  # fmt: skip
        self._tag(run_id, tags)
        return run_id

    def tag(self, run_id: int, tags: Iterable[str]) -> None:
        with self._write():
            if self._db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise ConfigError(f"no run {run_id} in {self.path}")
            self._tag(run_id, tags)

    def _tag(self, run_id: int, tags: Iterable[str]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO tags VALUES (?, ?)", [(run_id, t) for t in tags])

    # ------------------------------------------------------------------------------------------ reading
    def runs(
        self,
        target: str | None = None,
        tag: str | None = None,
        model: str | None = None,
        include_incomplete: bool = False,
        limit: int = 50,
    ) -> list[RunRow]:
        """Newest first. ``model`` matches a sha256 prefix."""
        where, params = [], []
        if not include_incomplete:
            where.append("complete = 1")
        if target:
            where.append("target = ?")
            params.append(target)
        if model:
            where.append("model_sha256 LIKE ?")
            params.append(model + "%")
        if tag:
            where.append("id IN (SELECT run_id FROM tags WHERE tag = ?)")
            params.append(tag)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        columns = ", ".join(f for f in RunRow.__dataclass_fields__ if f != "tags")
        rows = self._db.execute(
            f"SELECT {columns} FROM runs {clause} ORDER BY id DESC LIMIT ?", (*params, limit)
        ).fetchall()
        return [self._row(row) for row in rows]

    def record(self, run_id: int) -> dict[str, Any]:
        found = self._db.execute("SELECT record, complete FROM runs WHERE id = ?", (run_id,)).fetchone()
        if found is None:
            raise ConfigError(f"no run {run_id} in {self.path}")
        if not found[1] or found[0] is None:
            raise ConfigError(f"run {run_id} in {self.path} did not complete; it has no result")
        return dict(json.loads(found[0]))

    def _row(self, row: tuple[Any, ...]) -> RunRow:
        tags = tuple(t for (t,) in self._db.execute("SELECT tag FROM tags WHERE run_id = ? ORDER BY tag", (row[0],)))
        values = list(row)
        values[3] = bool(values[3])
        values[13] = None if values[13] is None else bool(values[13])
        return RunRow(*values, tags=tags)


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """The searchable columns of a deploy record (everything else stays in the JSON)."""
    device = record.get("device") or {}
    latency = (device.get("timing") or {}).get("latency_ms") or {}
    runtime = device.get("runtime") or {}
    board = device.get("board") or {}
    error = record.get("error") or {}
    return {
        "status": record.get("status", "unknown"),
        "recipe": (record.get("model") or {}).get("recipe"),
        "runtime": runtime.get("name"),
        "runtime_version": runtime.get("version"),
        "agent_version": device.get("agent_version"),
        "machine": board.get("machine"),
        "emulated": None if board.get("emulated") is None else int(bool(board["emulated"])),  # a column of 0/1
        "latency_p50_ms": latency.get("p50"),
        "latency_p99_ms": latency.get("p99"),
        "accuracy": (device.get("accuracy") or {}).get("accuracy"),
        "peak_rss_kb": ((device.get("memory") or {}).get("vmhwm_kb") or {}).get("after_runs"),
        "model_bytes": (record.get("model") or {}).get("bytes"),
        "error_class": error.get("class"),
    }
