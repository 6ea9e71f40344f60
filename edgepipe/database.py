"""One connection to the results history, on SQLite (a file: the default) or PostgreSQL (a ``postgresql://`` URL,
for controllers on several machines that share a lab).

The history's SQL is written once, in the common subset, with ``?`` placeholders; this module hides the rest:

- placeholders (``%s`` for psycopg), ``INSERT OR IGNORE`` / ``ON CONFLICT DO NOTHING``, new ids
  (``lastrowid`` / ``RETURNING id``), and the types of the table definitions;
- write transactions: SQLite takes the database's write lock up front (``BEGIN IMMEDIATE``), so writers queue;
  PostgreSQL runs READ COMMITTED transactions and the callers lock what they decide on (``lock`` appends
  ``FOR UPDATE``, ``skip_locked`` ``FOR UPDATE ... SKIP LOCKED``: a job another controller is claiming is
  skipped, not waited for);
- the clock leases are judged by (``clock``): on PostgreSQL the server's, so controllers on machines whose
  clocks differ still agree on when a lease expires.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgepipe.errors import ConfigError, InfrastructureError

URL_PREFIXES = ("postgresql://", "postgres://")
Location = str | Path


def as_location(value: str | Path | None) -> Location | None:
    """What the user gave as a history: a ``postgresql://`` URL stays a string (``Path`` would fold its ``//``)."""
    if value is None:
        return None
    return str(value) if is_url(str(value)) else Path(value)


def is_url(location: Location) -> bool:
    return isinstance(location, str) and location.startswith(URL_PREFIXES)


def shown_location(location: Location) -> str:
    """A location for messages, without a password."""
    if not is_url(location):
        return str(location)
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(str(location))
    if parts.password is None:
        return str(location)
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Database:
    """A connection; ``execute`` returns a DB-API cursor. Open one per thread."""

    def __init__(self, location: Location, timeout: float = 60.0) -> None:
        self.location = location
        self.postgres = is_url(location)
        self.timeout = timeout
        if self.postgres:
            self._db: Any = _connect_postgres(str(location), timeout)
        else:
            path = Path(location)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=True)
                self._wal(timeout)
                self._db.execute("PRAGMA foreign_keys=ON")
            except sqlite3.DatabaseError as exc:
                raise ConfigError(f"{path}: not a usable results history: {exc}") from None

    def _wal(self, timeout: float) -> None:
        """Switching a new file to WAL can fail at once with "locked" while another process creates it too
        (SQLite skips the busy handler there), so that step is retried until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.01, 0.1))

    # ------------------------------------------------------------------------------------------------ SQL
    def sql(self, statement: str) -> str:
        if not self.postgres:
            return statement
        statement = statement.replace("?", "%s")
        if statement.lstrip().upper().startswith("INSERT OR IGNORE"):
            statement = statement.replace("INSERT OR IGNORE", "INSERT", 1) + " ON CONFLICT DO NOTHING"
        return statement

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> Any:
        return self._db.execute(self.sql(statement), tuple(parameters))

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.postgres:
            with self._db.cursor() as cursor:
                cursor.executemany(self.sql(statement), [tuple(r) for r in rows])
        else:
            self._db.executemany(statement, rows)

    def insert(self, statement: str, parameters: Sequence[Any] = ()) -> int:
        """Run an INSERT into a table with an ``id`` column; the new row's id."""
        if self.postgres:
            return int(self.execute(statement + " RETURNING id", parameters).fetchone()[0])
        return int(self.execute(statement, parameters).lastrowid or 0)

    def ddl(self, statements: str) -> list[str]:
        """Table definitions written for SQLite, in this database's types."""
        if self.postgres:
            statements = statements.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
            statements = statements.replace(" REAL", " DOUBLE PRECISION")
        return [s.strip() for s in statements.strip().split(";") if s.strip()]

    @property
    def lock(self) -> str:
        """Appended to a SELECT whose rows the transaction then decides on."""
        return " FOR UPDATE" if self.postgres else ""

    def skip_locked(self, table: str) -> str:
        return f" FOR UPDATE OF {table} SKIP LOCKED" if self.postgres else ""

    def serialize_schema(self) -> None:
        """Inside a transaction: one connection at a time creates tables (PostgreSQL's CREATE TABLE IF NOT EXISTS
        is not safe against a concurrent one)."""
        if self.postgres:
            self._db.execute("SELECT pg_advisory_xact_lock(20261123)")

    def clock(self) -> float:
        """Seconds since 1970 on the clock every controller of this history agrees on."""
        if self.postgres:
            return float(self._db.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])
        return time.time()

    # -------------------------------------------------------------------------------------- transactions
    @contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction (SQLite: holding the write lock from its start, so no lock upgrade and no
        deadlock; PostgreSQL: READ COMMITTED with the row locks the statements take)."""
        if self.postgres:
            with self._db.transaction():
                yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


def _connect_postgres(url: str, timeout: float) -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            f"{shown_location(url)}: a PostgreSQL history needs psycopg 3", hint="pip install 'psycopg[binary]'"
        ) from None
    try:
        connection = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)))
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InfrastructureError(
            f"cannot open the results history {shown_location(url)}: {first}",
            hint="is the PostgreSQL server running and reachable, and the user allowed to connect?",
        ) from None
    # a statement that waits on a lock longer than this fails instead of hanging a controller
    connection.execute(f"SET lock_timeout = '{int(timeout * 1000)}ms'")
    return connection


def default_location() -> Location:
    """``$EDGEPIPE_HISTORY`` (a file or a ``postgresql://`` URL), else ``$XDG_DATA_HOME/edgepipe/history.sqlite``
    (``~/.local/share/...``)."""
    value = os.environ.get("EDGEPIPE_HISTORY")
    if value:
        return value if is_url(value) else Path(value).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "edgepipe" / "history.sqlite"
