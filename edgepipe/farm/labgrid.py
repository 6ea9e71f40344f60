"""labgrid places as farm boards: found by tags on labgrid's coordinator, acquired through a reservation, reached
at their ``NetworkService`` over edgepipe's own SSH transport, released after each job.

One ``LabgridSession`` per farm run talks to the coordinator (labgrid's own ``ClientSession``, on an asyncio loop
in a thread of its own); the board workers call it from their threads. A worker takes its place the way
``labgrid-client reserve --wait`` and ``acquire`` do: a reservation whose filter is the pool's tags plus the
place's name, polled until the coordinator allocates the place, then ``AcquirePlace``. A place acquired or reserved
by anyone else is therefore waited for, never used; the coordinator orders the waiters (priority, then age).
After the job the place is released and the reservation cancelled, so people and other farms get their turn.

One worker per place (rather than reservations by tags alone, where the coordinator picks the place) keeps what the
farm does for every board: a health check before its first job, quarantine after failures, a row per board in the
results, and a live state per board.

edgepipe acquires places as ``HOST/edgepipe-PID-RANDOM``: ``labgrid-client who`` says which controller holds a
place, and a place left acquired by a controller that was killed is recognised and released by the next one
(at once for a dead process of this machine, else once that controller's lease on the board has expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from edgepipe.config.target import Target
from edgepipe.errors import ConfigError, InfrastructureError

OPEN_TIMEOUT_S = 15.0  # connecting to the coordinator and receiving its places and resources
CALL_TIMEOUT_S = 30.0  # one request to the coordinator
POLL_S = 1.0  # how often a waiting reservation is polled (labgrid-client reserve --wait polls every second)
IDENTITY_PREFIX = "edgepipe-"

T = TypeVar("T")


def _labgrid() -> Any:
    # The workers start processes (the local transport's agent, with a preexec_fn: a real fork) while gRPC's
    # threads run; gRPC's fork handlers then run in the child between fork and exec, where one crashed it with
    # SIGSEGV (seen once in CI). The children exec at once and never use gRPC: its fork support is not needed.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # its core's INFO lines on stderr are not edgepipe's output
    try:
        from labgrid.remote import client
    except ImportError:
        raise ConfigError(
            "this farm file has labgrid pools, but labgrid is not installed",
            hint="pip install 'edgepipe[labgrid]' (labgrid 25 or newer, with its gRPC coordinator)",
        ) from None
    if not any(isinstance(f, _QuietLabgrid) for f in logging.getLogger().filters):
        logging.getLogger().addFilter(_QuietLabgrid())
    return client


class _QuietLabgrid(logging.Filter):
    """labgrid's client logs a lost coordinator on the root logger (``ERROR:root:coordinator is unavailable``);
    edgepipe says the same in its own error, once, with what to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.pathname.endswith("remote/client.py") and "labgrid" in record.pathname)


def identity(owner: str) -> tuple[str, str]:
    """The labgrid ``host/user`` under which the controller ``owner`` (``host:pid:random``) acquires places."""
    host, pid, random = owner.split(":")
    return host, f"{IDENTITY_PREFIX}{pid}-{random}"


def owner_of(acquired: str) -> str | None:
    """The controller behind a labgrid ``host/user`` acquisition, or None when it was not an edgepipe farm."""
    host, _, user = acquired.partition("/")
    found = re.fullmatch(rf"{IDENTITY_PREFIX}(\d+)-([0-9a-f]+)", user)
    return f"{host}:{found.group(1)}:{found.group(2)}" if found else None


@dataclass(frozen=True)
class PlaceStatus:
    state: str  # the reservation's: waiting, allocated, acquired, expired, invalid
    holder: str | None  # who has the place acquired, if anyone
    reserved_by: str | None  # whose reservation the place is allocated to, when not this one's


class CoordinatorLost(InfrastructureError):
    """The connection to the coordinator is gone (it restarted, or the network between failed). Not a board's
    fault: the workers wait while the session reconnects, until ``given_up`` (``reconnect_s`` without it)."""

    def __init__(self, message: str, *, given_up: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.given_up = given_up


class LabgridSession:
    """A connection to labgrid's coordinator for one farm run. Every method blocks for at most ``CALL_TIMEOUT_S``
    and raises InfrastructureError when the coordinator fails or cannot be reached (CoordinatorLost when the
    connection was lost: ``reconnect`` opens a new one)."""

    def __init__(self, address: str, owner: str, reconnect_s: float = 120.0) -> None:
        self.address, self.reconnect_s = address, reconnect_s
        self.host, self.user = identity(owner)
        self._client = _labgrid()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="labgrid", daemon=True)
        self._thread.start()
        self._session: Any = None
        self._closed = False
        self._lock = threading.Lock()
        self._held: set[str] = set()  # places and reservations of this controller, given back by close()
        self._tokens: set[str] = set()
        self._reconnecting = threading.Lock()
        self._lost_since: float | None = None
        self.reconnections = 0
        self.on_reconnect: Callable[[str], None] = lambda _said: None  # told once per new connection
        try:
            self._session = self._call(self._open(), OPEN_TIMEOUT_S, "connecting")
        except BaseException:
            self._stop_loop()
            raise

    # ------------------------------------------------------------------------------------------ the loop thread
    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float, doing: str) -> T:
        try:
            if self._closed:
                raise RuntimeError("closed")
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # a worker still busy when the run was interrupted and the session closed
            coroutine.close()
            raise self._unreachable(f"{doing}: the session was closed") from None
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise self._unreachable(f"no answer within {timeout:.0f} s while {doing}") from None
        except InfrastructureError:
            raise
        except Exception as exc:  # grpc's AioRpcError, labgrid's ServerError and UserError
            if _connection_failed(exc):
                raise self._lost(f"{doing}: {_detail(exc)}") from None
            raise self._unreachable(f"{doing}: {_detail(exc)}") from None

    def _lost(self, why: str) -> CoordinatorLost:
        return CoordinatorLost(
            f"labgrid coordinator {self.address}: {why}",
            hint="is labgrid-coordinator running there? the farm reconnects for "
            f"{self.reconnect_s:.0f} s (labgrid.reconnect_s) before it gives the boards up",
        )

    def reconnect(self) -> None:
        """Open a new connection when the coordinator was lost (restarted, upgraded, a network failure); a
        restarted coordinator has forgotten every acquisition and reservation. One worker reconnects while the
        others wait for it; when it cannot yet, CoordinatorLost (``given_up`` after ``reconnect_s`` of that)."""
        with self._reconnecting:
            if self._session is not None and not self._session.stopping.is_set():
                self._lost_since = None
                return
            self._lost_since = self._lost_since or time.monotonic()
            lost_for = time.monotonic() - self._lost_since
            old = self._session
            try:
                self._session = self._call(self._open(), OPEN_TIMEOUT_S, "reconnecting")
            except InfrastructureError as exc:
                raise CoordinatorLost(
                    f"{exc.message} (lost for {lost_for:.0f} s)", given_up=lost_for > self.reconnect_s, hint=exc.hint
                ) from None
            with contextlib.suppress(InfrastructureError):
                self._call(_close(old), 10, "closing the lost connection")
            self._lost_since = None
            self.reconnections += 1
        self.on_reconnect(f"reconnected to the labgrid coordinator {self.address} after {lost_for:.0f} s")

    def _unreachable(self, why: str) -> InfrastructureError:
        return InfrastructureError(
            f"labgrid coordinator {self.address}: {why}",
            hint="is labgrid-coordinator running there? 'labgrid-client -x HOST:PORT places' checks it",
        )

    async def _open(self) -> Any:
        client = self._client
        address = client.proxymanager.get_grpc_address(self.address, default_port=20408)
        host, user = self.host, self.user

        class Session(client.ClientSession):  # type: ignore[misc, name-defined]
            """labgrid's client session under the controller's own identity (labgrid reads LG_USERNAME and
            LG_HOSTNAME from the environment, which all threads of a process share)."""

            def gethostname(self) -> str:
                return host

            def getuser(self) -> str:
                return user

        session = Session(address=address, loop=asyncio.get_running_loop())
        try:
            await session.start()
        except BaseException:
            await _quietly(session.stop())
            await _quietly(session.close())
            raise
        return session

    def close(self) -> None:
        """Give back every place and reservation this controller still has (a run interrupted mid-job), then
        disconnect. Workers still running get InfrastructureError from then on."""
        if self._session is not None:
            with self._lock:
                held, tokens = sorted(self._held), sorted(self._tokens)
            for place in held:
                with contextlib.suppress(InfrastructureError):
                    self.release(place, from_user=f"{self.host}/{self.user}")
            for token in tokens:
                with contextlib.suppress(InfrastructureError):
                    self.cancel(token)
            session = self._session
            with contextlib.suppress(InfrastructureError):
                self._call(_close(session), 10, "disconnecting")
            self._closed = True
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> LabgridSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------- places
    def places(self, tags: dict[str, str]) -> list[str]:
        """The names of the places whose tags include ``tags``."""

        async def matching() -> list[str]:
            await self._synced()
            wanted = set(tags.items())
            return sorted(name for name, place in self._session.places.items() if wanted <= set(place.tags.items()))

        return self._call(matching(), CALL_TIMEOUT_S, "listing places")

    def reserve(self, place: str, tags: dict[str, str]) -> str:
        """A reservation for exactly this place (and only while it still has the pool's tags); its token."""
        pb2 = self._client.labgrid_coordinator_pb2

        async def create() -> str:
            wanted = pb2.Reservation.Filter(filter={**tags, "name": place})
            request = pb2.CreateReservationRequest(filters={"main": wanted}, prio=0.0)
            response = await self._session.stub.CreateReservation(request)
            return str(response.reservation.token)

        token = self._call(create(), CALL_TIMEOUT_S, f"reserving place {place}")
        with self._lock:
            self._tokens.add(token)
        return token

    def poll(self, token: str, place: str) -> PlaceStatus:
        """The reservation's state (polling also keeps a waiting reservation from expiring) and who holds the
        place meanwhile."""
        client = self._client
        pb2 = client.labgrid_coordinator_pb2

        async def state() -> PlaceStatus:
            response = await self._session.stub.PollReservation(pb2.PollReservationRequest(token=token))
            reservation = client.Reservation.from_pb2(response.reservation)
            await self._synced()
            found = self._session.places.get(place)
            holder = found.acquired if found is not None else None
            reserved_by = None
            if found is not None and found.reservation not in (None, token):
                listed = await self._session.stub.GetReservations(pb2.GetReservationsRequest())
                owners = {r.token: r.owner for r in listed.reservations}
                reserved_by = owners.get(found.reservation, "someone else")
            return PlaceStatus(reservation.state.name, holder, reserved_by)

        return self._call(state(), CALL_TIMEOUT_S, f"polling the reservation of place {place}")

    def acquire(self, place: str) -> None:
        pb2 = self._client.labgrid_coordinator_pb2

        async def take() -> None:
            await self._session.stub.AcquirePlace(pb2.AcquirePlaceRequest(placename=place))
            await self._synced()

        with self._lock:  # before the request: an interrupted run must give back a place acquired meanwhile
            self._held.add(place)
        self._call(take(), CALL_TIMEOUT_S, f"acquiring place {place}")

    def release(self, place: str, from_user: str | None = None) -> None:
        """Release a place this controller acquired; with ``from_user`` (``host/user``) only if that one still
        holds it (how a dead controller's place is freed without taking it from whoever holds it now)."""
        pb2 = self._client.labgrid_coordinator_pb2

        async def give_back() -> None:
            if from_user is None:
                request = pb2.ReleasePlaceRequest(placename=place)
            else:
                request = pb2.ReleasePlaceRequest(placename=place, fromuser=from_user)
            await self._session.stub.ReleasePlace(request)
            await self._synced()

        self._call(give_back(), CALL_TIMEOUT_S, f"releasing place {place}")
        with self._lock:
            self._held.discard(place)

    def cancel(self, token: str) -> None:
        pb2 = self._client.labgrid_coordinator_pb2

        async def drop() -> None:
            await self._session.stub.CancelReservation(pb2.CancelReservationRequest(token=token))

        self._call(drop(), CALL_TIMEOUT_S, "cancelling a reservation")
        with self._lock:
            self._tokens.discard(token)

    def cancel_all_of(self, user: str) -> None:
        """Cancel every reservation of ``user`` (``host/user``): a dead controller's, whose allocated places
        would otherwise stay reserved until labgrid expires them (a minute)."""
        pb2 = self._client.labgrid_coordinator_pb2

        async def drop() -> None:
            listed = await self._session.stub.GetReservations(pb2.GetReservationsRequest())
            for reservation in listed.reservations:
                if reservation.owner == user:
                    await self._session.stub.CancelReservation(pb2.CancelReservationRequest(token=reservation.token))

        self._call(drop(), CALL_TIMEOUT_S, f"cancelling the reservations of {user}")

    def network_service(self, place: str, name: str | None) -> dict[str, Any]:
        """The NetworkService of an acquired place: address, port, username."""

        async def find() -> dict[str, Any]:
            await self._synced()
            resources = self._session.get_target_resources(self._session.places[place])
            return {
                f"{resource_name}": dict(entry.args)
                for (resource_name, cls), entry in resources.items()
                if cls == "NetworkService"
            }

        services = self._call(find(), CALL_TIMEOUT_S, f"reading the resources of place {place}")
        if name is not None:
            if name not in services:
                raise InfrastructureError(
                    f"labgrid place {place} has no NetworkService named {name!r} "
                    f"(it has: {', '.join(sorted(services)) or 'none'})",
                    hint=f"labgrid-client -p {place} show lists its resources; fix the pool's labgrid.resource",
                )
            return services[name]
        if len(services) != 1:
            found = ", ".join(sorted(services)) or "none"
            raise InfrastructureError(
                f"labgrid place {place} needs exactly one NetworkService resource to be reached (it has: {found})",
                hint=f"labgrid-client -p {place} add-match EXPORTER/GROUP/NetworkService, or name one in the "
                "pool's labgrid.resource",
            )
        return next(iter(services.values()))

    async def _synced(self) -> None:
        if self._session.stopping.is_set() or not await self._session.sync_with_coordinator():
            raise self._lost("the connection was lost")


class PlaceTurn:
    """One turn of a worker on its labgrid place: ``take`` reserves the place, waits until the coordinator
    allocates it, acquires it and returns the board's target; ``give_back`` releases it and drops the
    reservation. Use it as ``turn.take(...)`` then ``try: ... finally: turn.give_back()``."""

    def __init__(self, session: LabgridSession, place: str, tags: dict[str, str], resource: str | None,
                 template: Target) -> None:  # fmt: skip
        self.session, self.place, self.tags, self.resource, self.template = session, place, tags, resource, template
        self._token: str | None = None
        self._acquired = False

    def take(self, keep_waiting: Callable[[str], bool], lapsed: Callable[[str], bool]) -> Target | None:
        """The board's target once the place is this controller's; None when ``keep_waiting`` (called about every
        ``POLL_S`` with what the wait is for) said to stop waiting. ``lapsed(owner)`` tells whether an edgepipe
        controller that still holds the place is gone (its acquisition is then released)."""
        session, place = self.session, self.place
        session.reconnect()  # when the coordinator was lost; otherwise nothing
        try:
            self._token = session.reserve(place, self.tags)
            while True:
                status = session.poll(self._token, place)
                if status.state in ("allocated", "acquired"):
                    break
                if status.state != "waiting":
                    raise InfrastructureError(
                        f"labgrid's reservation of place {place} is {status.state}",
                        hint=f"was the place deleted or its tags changed? labgrid-client -p {place} show",
                    )
                if self._free_from_the_dead(status, lapsed):
                    continue
                if status.holder:
                    why = f"labgrid place acquired by {status.holder}"
                elif status.reserved_by:
                    why = f"labgrid place reserved by {status.reserved_by}"
                else:
                    why = "waiting for labgrid to allocate the place"
                if not keep_waiting(why):
                    self.give_back()
                    return None
            session.acquire(place)
            self._acquired = True
            return board_target(self.template, place, session.network_service(place, self.resource))
        except BaseException:
            self.give_back()
            raise

    def _free_from_the_dead(self, status: PlaceStatus, lapsed: Callable[[str], bool]) -> bool:
        """Release the place and cancel the reservations of an edgepipe controller that died holding them
        (labgrid has no leases: its acquisitions would stay forever). True when something was freed."""
        if status.holder == f"{self.session.host}/{self.session.user}":
            # this controller's own, left acquired when the connection was lost while the place was given back
            self.session.release(self.place)
            return True
        for user in (status.holder, status.reserved_by):
            owner = owner_of(user) if user else None
            if user and owner is not None and lapsed(owner):
                if user == status.holder:
                    self.session.release(self.place, from_user=user)
                self.session.cancel_all_of(user)
                return True
        return False

    def give_back(self) -> None:
        """Release the place and cancel the reservation; a coordinator that is gone has nothing to give back."""
        if self._acquired:
            self._acquired = False
            with contextlib.suppress(InfrastructureError):
                self.session.release(self.place)
        if self._token is not None:
            token, self._token = self._token, None
            with contextlib.suppress(InfrastructureError):
                self.session.cancel(token)


def board_target(template: Target, place: str, service: dict[str, Any]) -> Target:
    """The pool's target completed with a place's NetworkService (the board's name is the place's)."""
    address = str(service.get("address", ""))
    if not address or "%" in address:
        raise InfrastructureError(
            f"labgrid place {place}: NetworkService address {address!r} cannot be reached directly",
            hint="edgepipe connects to the board itself (not through the exporter's SSH proxy): export an address "
            "this machine can reach",
        )
    return template.model_copy(
        update={
            "name": _target_name(place),
            "host": address,
            "port": int(service.get("port") or 22),
            "user": str(service.get("username") or template.user),
            "workdir": template.workdir.replace("{place}", place),
        }
    )


def _target_name(place: str) -> str:
    name = re.sub(r"[^a-z0-9._-]", "-", place.lower())
    return name if re.match(r"^[a-z0-9]", name) else f"place-{name}"


def _connection_failed(exc: Exception) -> bool:
    """gRPC's word for a coordinator that is not there (UNAVAILABLE), or a call cut off with the connection."""
    code = getattr(exc, "code", None)
    name = getattr(code(), "name", "") if callable(code) else ""
    return name in ("UNAVAILABLE", "CANCELLED")


def _detail(exc: Exception) -> str:
    details = getattr(exc, "details", None)
    text = str(details()) if callable(details) else str(exc)
    return text.removeprefix("Error: ").strip() or type(exc).__name__


async def _close(session: Any) -> None:
    await _quietly(session.stop())
    await _quietly(session.close())


async def _quietly(awaitable: Any) -> None:
    # a session that never started or a lost coordinator: there is nothing left to tell it
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(awaitable, 5)
