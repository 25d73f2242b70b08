"""The event hub of one replica: one ``LISTEN podium_events`` connection, fanned out in
process to the watchers of WatchRun and WatchRuns.

See docs/ARCHITECTURE.md, section "Watching runs" (the hub, the fallback poll, the
reconnect). The hub never carries events: ``podium_emit_event``
(``server/storage/functions/10_events.sql``) sends ``NOTIFY podium_events, '<run id>'``
and the hub only **wakes** watchers, each of which reads the log after its own last
sequence. A watcher is a wake flag (an :class:`asyncio.Event`), never a queue.

- **Run watchers** (WatchRun) register under a run id and carry ``position`` (the last
  sequence their client was sent); the poll marks ``gone`` those whose run was deleted.
- **Organization watchers** (WatchRuns) are woken by every notification (the payload
  does not say which organization a run belongs to); they rate-limit their own reads.
- **Listening organizations**: transitions notify only for organizations some replica
  watches (``event_listeners``, ``podium_notify_events``). :meth:`EventHub.register`
  records a watcher's organization before its first read (one round trip for the first
  watcher of an organization on this replica) and the poll refreshes the rows of the
  organizations still watched and drops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from types import TracebackType

from podium.server.storage.database import DirectConnection, connect_direct
from podium.server.storage.errors import StorageError
from podium.server.storage.events import EventsRepository

__all__ = ["CHANNEL", "EventHub", "Watcher"]

log = logging.getLogger("podium.events")

CHANNEL = "podium_events"
"""The channel ``podium_emit_event`` notifies; the payload is the run id."""

_POLL_CHUNK = 5000
"""Run ids per fallback-poll query."""


class _RunEntry:
    """The watchers of one run, and how often they were woken (see :attr:`Watcher.epoch`)."""

    __slots__ = ("epoch", "watchers")

    def __init__(self) -> None:
        self.watchers: set[Watcher] = set()
        self.epoch = 0


class Watcher:
    """One watcher's registration in the hub: a wake flag plus what the hub needs to
    know about it. Use as a context manager (or call :meth:`close`) so it is always
    deregistered.

    Attributes:
        run_id: the watched run (text form), or None for an organization watcher.
        position: the last sequence sent to the client (run watchers; the fallback poll
            wakes the watcher when the run's log is past it).
        gone: the fallback poll found the run deleted.
        closed: the hub stopped; the watcher should end its stream.
    """

    __slots__ = (
        "_entry",
        "_flag",
        "_hub",
        "closed",
        "gone",
        "organization_id",
        "position",
        "run_id",
    )

    def __init__(
        self,
        hub: EventHub,
        run_id: str | None,
        entry: _RunEntry | None,
        organization_id: str | None = None,
    ) -> None:
        self._hub = hub
        self._entry = entry
        self._flag = asyncio.Event()
        self.run_id = run_id
        self.organization_id = organization_id
        self.position = 0
        self.gone = False
        self.closed = False

    @property
    def epoch(self) -> int:
        """How many times the run's watchers were woken so far (run watchers).

        A read of the log that *started* when the epoch was already ``e`` sees every
        event that caused wake-ups up to ``e``: watchers use it to decide whether they
        may share a read already in flight (see ``server/engine/watch.py``).
        """
        return self._entry.epoch if self._entry is not None else 0

    @property
    def woken(self) -> bool:
        """Whether a wake-up is pending."""
        return self._flag.is_set()

    def wake(self) -> None:
        """Ask the watcher to read the log again."""
        self._flag.set()

    def clear(self) -> None:
        """Forget pending wake-ups; call right before reading the log."""
        self._flag.clear()

    async def wait(self, seconds: float | None = None) -> bool:
        """Wait for a wake-up (True) or ``seconds`` (False; None waits forever)."""
        if self._flag.is_set():
            return True
        try:
            async with asyncio.timeout(seconds):
                await self._flag.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Deregister (idempotent)."""
        self._hub._remove(self)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventHub:
    """One replica's LISTEN connection and its fan-out to watchers (module docstring)."""

    def __init__(
        self,
        dsn: str,
        repository: EventsRepository,
        *,
        poll_interval: float = 1.0,
        reconnect_max_seconds: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._repository = repository
        self.poll_interval = poll_interval
        self._reconnect_max = reconnect_max_seconds
        self._runs: dict[str, _RunEntry] = {}
        self._orgs: set[Watcher] = set()
        self.replica = uuid.uuid4().hex
        """This hub's name in ``event_listeners``."""
        self._watched: dict[str, int] = {}  # organization -> its watchers here
        self._registered: set[str] = set()  # organizations with a row of this hub
        self._conn: DirectConnection | None = None
        self._lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.notifications = 0
        """Notifications received since start."""
        self.polls = 0
        """Fallback-poll queries run since start."""
        self.reconnects = 0
        """Times the LISTEN connection was re-established."""

    # -- life cycle --------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up."""
        return self._conn is not None

    @property
    def run_watchers(self) -> int:
        """Registered WatchRun watchers."""
        return sum(len(entry.watchers) for entry in self._runs.values())

    @property
    def org_watchers(self) -> int:
        """Registered WatchRuns watchers."""
        return len(self._orgs)

    async def start(self) -> None:
        """Open the LISTEN connection (a failure is logged and retried in the
        background: watchers poll meanwhile) and start the poll."""
        self._stopping = False
        if not await self._listen():
            self._lost.set()
        self._tasks = [
            asyncio.create_task(self._keep_listening(), name="podium-events-listen"),
            asyncio.create_task(self._poll_loop(), name="podium-events-poll"),
        ]

    async def stop(self) -> None:
        """Close the LISTEN connection, stop polling, and wake every watcher with
        ``closed`` set so that their streams end."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)
        for watcher in self._all_watchers():
            watcher.closed = True
            watcher.wake()
        if self._registered:
            with contextlib.suppress(StorageError):
                await self._repository.listen(self.replica, [], 0.0, every=True)
            self._registered.clear()

    # -- registration ------------------------------------------------------------------

    def watch_run(self, run_id: uuid.UUID | str, organization_id: str | None = None) -> Watcher:
        """Register a watcher of one run (of ``organization_id``: see :meth:`register`);
        woken on each notification for it."""
        key = str(run_id)
        entry = self._runs.get(key)
        if entry is None:
            entry = self._runs[key] = _RunEntry()
        watcher = Watcher(self, key, entry, organization_id)
        watcher.closed = self._stopping
        entry.watchers.add(watcher)
        self._count(watcher, 1)
        return watcher

    def watch_org(self, organization_id: str | None = None) -> Watcher:
        """Register an organization watcher; woken on every notification."""
        watcher = Watcher(self, None, None, organization_id)
        watcher.closed = self._stopping
        self._orgs.add(watcher)
        self._count(watcher, 1)
        return watcher

    async def register(self, organization_id: str) -> None:
        """Make sure transitions of the organization's runs notify (``event_listeners``)
        before a watcher of it reads: the first watcher of an organization on this
        replica writes its row (one round trip), later ones find it. A transition that
        committed while the row was being written may not notify: the poll covers it.
        A database error is logged (the poll covers the watcher meanwhile)."""
        if organization_id in self._registered:
            return
        try:
            await self._repository.listen(
                self.replica, [organization_id], self._listen_seconds, every=False
            )
        except StorageError as exc:
            log.warning("cannot register as a listener of %s: %s", organization_id, exc)
            return
        self._registered.add(organization_id)

    @property
    def _listen_seconds(self) -> float:
        # The poll refreshes the rows every interval; a few missed polls keep them.
        return max(30.0, 5 * self.poll_interval)

    def _count(self, watcher: Watcher, delta: int) -> None:
        org = watcher.organization_id
        if org is None:
            return
        left = self._watched.get(org, 0) + delta
        if left > 0:
            self._watched[org] = left
        else:
            self._watched.pop(org, None)

    def _remove(self, watcher: Watcher) -> None:
        if watcher.run_id is None:
            if watcher in self._orgs:
                self._orgs.discard(watcher)
                self._count(watcher, -1)
            return
        entry = self._runs.get(watcher.run_id)
        if entry is not None and watcher in entry.watchers:
            entry.watchers.discard(watcher)
            self._count(watcher, -1)
            if not entry.watchers:
                del self._runs[watcher.run_id]

    def _all_watchers(self) -> list[Watcher]:
        out = list(self._orgs)
        for entry in self._runs.values():
            out.extend(entry.watchers)
        return out

    def wake_all(self) -> None:
        """Wake every watcher (after a reconnect: notifications may have been missed)."""
        for entry in self._runs.values():
            entry.epoch += 1
        for watcher in self._all_watchers():
            watcher.wake()

    # -- LISTEN ------------------------------------------------------------------------

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.notifications += 1
        entry = self._runs.get(str(payload))
        if entry is not None:
            entry.epoch += 1
            for watcher in entry.watchers:
                watcher.wake()
        for watcher in self._orgs:
            watcher.wake()

    def _on_lost(self, conn: object) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        if not self._stopping:
            log.warning(
                "LISTEN %s connection lost; watchers fall back to the poll until it is back",
                CHANNEL,
            )
            self._lost.set()

    async def _listen(self) -> bool:
        try:
            conn = await connect_direct(self._dsn)
        except (StorageError, OSError) as exc:
            log.warning("cannot LISTEN %s (watchers poll meanwhile): %s", CHANNEL, exc)
            return False
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
        except Exception as exc:
            log.warning("cannot LISTEN %s (watchers poll meanwhile): %s", CHANNEL, exc)
            conn.terminate()
            return False
        self._conn = conn
        conn.add_termination_listener(self._on_lost)
        self._lost.clear()
        return True

    async def _keep_listening(self) -> None:
        delay = 0.5
        while True:
            await self._lost.wait()
            await asyncio.sleep(delay)
            if await self._listen():
                self.reconnects += 1
                log.info("LISTEN %s re-established", CHANNEL)
                self.wake_all()
                delay = 0.5
            else:
                delay = min(delay * 2, self._reconnect_max)

    # -- fallback poll -----------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll()
            except StorageError as exc:
                log.warning("event poll failed: %s", exc)
            except Exception:
                log.exception("event poll crashed")

    async def poll(self) -> None:
        """One fallback pass: refresh this replica's ``event_listeners`` rows (drop
        those of organizations nobody watches here any more), wake organization
        watchers, and the run watchers whose run has events past their position (or
        was deleted: ``gone``). No query when nobody watches and no row is left."""
        if self._watched or self._registered:
            watched = list(self._watched)
            await self._repository.listen(self.replica, watched, self._listen_seconds, every=True)
            self._registered = set(watched)
        for watcher in list(self._orgs):
            watcher.wake()
        if not self._runs:
            return
        ids = list(self._runs)
        last: dict[str, int] = {}
        for start in range(0, len(ids), _POLL_CHUNK):
            self.polls += 1
            last.update(await self._repository.last_sequences(ids[start : start + _POLL_CHUNK]))
        for run_id in ids:
            entry = self._runs.get(run_id)
            if entry is None:
                continue
            sequence = last.get(run_id)
            behind = [w for w in entry.watchers if sequence is None or w.position < sequence]
            if not behind:
                continue
            entry.epoch += 1
            for watcher in behind:
                watcher.gone = sequence is None
                watcher.wake()
