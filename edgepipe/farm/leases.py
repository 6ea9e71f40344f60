"""Board leases: one row per board in ``farm_leases``, shared by every controller that uses the history.

A lease has an owner, an expiry that heartbeats push forward, and a fencing number that grows by one at every
acquisition; ``FarmStore`` checks owner and number in the same transaction as every write of a job, so a holder
that lost its lease cannot write (see ``edgepipe.farm.store``). Owners are ``host:pid:random``: a lease of a
process of this machine that no longer runs is free at once, others only when they expire.
"""

from __future__ import annotations

import os
import socket
import uuid
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from edgepipe.database import Database

WAITER_GRACE_S = 3.0  # how long a refused controller's claim to the next turn on a board stands


def new_owner() -> str:
    """Who holds a lease: this machine, this process and a random part (one per controller)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_gone(owner: str | None) -> bool:
    """True when ``owner`` was a process on this machine that no longer runs (its leases need not be waited
    out). Owners on other machines are judged by their lease's expiry alone."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return int(pid) != os.getpid() and _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class LeaseTable:
    """The lease operations of ``FarmStore`` (mixed into it: they share its connection and transactions)."""

    _db: Database

    if TYPE_CHECKING:  # History provides it; declared here for the type checker only (it must not shadow it)

        def _write(self) -> AbstractContextManager[None]: ...

    def acquire(self, board: str, owner: str, ttl_s: float) -> int | None:
        """The board's new fencing number when the lease was free or expired (or its owner is gone); else None.

        Turns are fair between controllers: one that was refused leaves its name on the board, and the last
        holder does not take the board straight back while that waiter polls (within ``WAITER_GRACE_S``)."""
        with self._write():
            clock = self._db.clock()
            self._db.execute("INSERT OR IGNORE INTO farm_leases (board) VALUES (?)", (board,))
            holder, expires, last, wanted_by, wanted_at = self._db.execute(
                "SELECT owner, expires, last_owner, wanted_by, wanted_at FROM farm_leases WHERE board = ?"
                + self._db.lock,
                (board,),
            ).fetchone()
            held = holder is not None and holder != owner and expires > clock and not owner_is_gone(holder)
            waiter = wanted_by not in (None, owner) and wanted_at > clock - WAITER_GRACE_S
            if held or (holder is None and waiter and last == owner):
                self._db.execute(
                    "UPDATE farm_leases SET wanted_by = ?, wanted_at = ? WHERE board = ?", (owner, clock, board)
                )
                return None
            self._db.execute(
                "UPDATE farm_leases SET owner = ?, last_owner = ?, fence = fence + 1, expires = ?, job = NULL, "
                "wanted_by = CASE WHEN wanted_by = ? THEN NULL ELSE wanted_by END WHERE board = ?",
                (owner, owner, clock + ttl_s, owner, board),
            )
            return int(self._db.execute("SELECT fence FROM farm_leases WHERE board = ?", (board,)).fetchone()[0])

    def renew(self, board: str, owner: str, fence: int, ttl_s: float) -> bool:
        """Extend a lease that is still held and unexpired; False when it was lost."""
        with self._write():
            clock = self._db.clock()
            cursor = self._db.execute(
                "UPDATE farm_leases SET expires = ? WHERE board = ? AND owner = ? AND fence = ? AND expires > ?",
                (clock + ttl_s, board, owner, fence, clock),
            )
        return cursor.rowcount == 1

    def release(self, board: str, owner: str, fence: int) -> None:
        with self._write():
            self._db.execute(
                "UPDATE farm_leases SET owner = NULL, expires = 0, job = NULL "
                "WHERE board = ? AND owner = ? AND fence = ?",
                (board, owner, fence),
            )

    def lapsed(self, board: str, owner: str) -> bool:
        """True when ``owner`` is gone for good as far as this board is concerned: a process of this machine that
        no longer runs, or a controller whose lease on the board expired without being released."""
        if owner_is_gone(owner):
            return True
        found = self._db.execute("SELECT owner, expires FROM farm_leases WHERE board = ?", (board,)).fetchone()
        return found is not None and found[0] == owner and found[1] < self._db.clock()

    def _holds(self, board: str, owner: str, fence: int) -> bool:
        found = self._db.execute(
            "SELECT owner, fence, expires FROM farm_leases WHERE board = ?" + self._db.lock, (board,)
        ).fetchone()
        return found is not None and found[0] == owner and found[1] == fence and found[2] > self._db.clock()

    def leases(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT board, owner, fence, expires, job FROM farm_leases ORDER BY board").fetchall()
        clock = self._db.clock()
        return [
            {"board": b, "owner": o, "fence": f, "expires_in_s": round(e - clock, 1) if o else None, "job": j}
            for b, o, f, e, j in rows
        ]
