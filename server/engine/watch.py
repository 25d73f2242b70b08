"""WatchRun and WatchRuns: resumable streams of run events.

Both read the durable event log (``orchestration_events``); the hub
(``server/events/hub.py``) only tells them *when* to read. The reads, the cursors and
the guarantees are described in docs/ARCHITECTURE.md, section "Watching runs". Names
used here:

- **WatchRun** reads pages of at most ``page_size`` events after the last sequence it
  sent and yields them one by one, so a slow client holds at most one page. Watchers of
  a run at the same position share one read (single flight); a watcher joins only a
  read that started after the wake-up it handles (the hub's per-run ``epoch``).
- **WatchRuns**: the cursor is a lower bound on ``created_at`` plus, per run seen, the
  last sequence delivered. The bound trails the previous read's database time by
  ``org_tail_window_seconds`` (0.5 s) and a periodic re-scan starts
  ``org_window_seconds`` (5 s) behind; during a replay from ``start_time`` it is the
  replay cursor. An event whose transaction stays open longer than the window after
  writing it may be missed (WatchRun has no such limit).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from podium.orchestration.v1 import event_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.engine.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from podium.server.engine.mapping import event_to_proto
from podium.server.engine.requests import parse_run_id, timestamp_value
from podium.server.engine.sizes import DEFAULT_MAX_RESPONSE_BYTES
from podium.server.engine.storage_errors import storage_errors
from podium.server.events.hub import EventHub, Watcher
from podium.server.storage.events import EventsRepository

__all__ = ["TERMINAL_EVENT_TYPES", "WatchConfig", "WatchService"]

RunEvent = event_pb2.RunEvent

TERMINAL_EVENT_TYPES = frozenset(
    {RunEvent.TYPE_RUN_COMPLETED, RunEvent.TYPE_RUN_FAILED, RunEvent.TYPE_RUN_CANCELLED}
)
"""Event types after which WatchRun ends."""

_TERMINAL_RUN_STATES = frozenset({"succeeded", "failed", "cancelled"})

_RUN_STATE_NAMES = {
    value: name.removeprefix("STATE_").lower()
    for name, value in run_pb2.Run.State.items()
    if value != run_pb2.Run.STATE_UNSPECIFIED
}


@dataclass(frozen=True)
class WatchConfig:
    """Tunables of the watch streams."""

    page_size: int = 100
    """Most events a WatchRun watcher reads (and holds) at once."""
    idle_reread_seconds: float = 30.0
    """A watcher re-reads on its own after this long without a wake-up (belt and
    braces; the hub's poll is the real fallback)."""
    org_page_size: int = 200
    """Most events a WatchRuns watcher reads at once."""
    org_window_seconds: float = 5.0
    """How far behind the database time of its previous re-scan a WatchRuns re-scan
    starts: an event whose transaction commits later than this after writing it may be
    missed."""
    org_tail_window_seconds: float = 0.5
    """How far behind the database time of its previous read an ordinary WatchRuns
    read starts (events committing later than this are found by the next re-scan)."""
    org_rescan_interval_seconds: float = 1.0
    """How often a WatchRuns stream re-scans the whole window."""
    org_min_interval_seconds: float = 0.05
    """Least time between two WatchRuns reads (coalesces bursts of notifications)."""
    max_event_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    """An event taking more leaves out its ``data`` (``RunEvent.data_omitted``), so
    every stream message stays under the server's message limit."""


class WatchService:
    """The WatchRun / WatchRuns use cases (module docstring)."""

    def __init__(
        self, hub: EventHub, repository: EventsRepository, config: WatchConfig | None = None
    ) -> None:
        self.hub = hub
        self._repository = repository
        self.config = config or WatchConfig()
        # (run id, after sequence) -> (hub epoch when the read started, the read)
        self._inflight: dict[tuple[uuid.UUID, int], tuple[int, asyncio.Future[list[RunEvent]]]]
        self._inflight = {}
        self.reads = 0
        """Page reads issued by WatchRun watchers."""
        self.shared_reads = 0
        """Page reads a WatchRun watcher joined instead of issuing its own."""
        self.org_reads = 0
        """Page reads issued by WatchRuns watchers (counted when they returned)."""

    # -- WatchRun ----------------------------------------------------------------------

    async def watch_run(
        self, organization_id: str, run_id: str, after_sequence: int
    ) -> AsyncIterator[RunEvent]:
        """The run's events after ``after_sequence``, then live ones, ending after the
        terminal event (module docstring).

        Raises InvalidArgument (malformed id, negative ``after_sequence`` or one past
        the run's last event), NotFound (no such run in the organization, or it was
        deleted while watched), Unavailable (the database, or this replica stopping).
        """
        rid = parse_run_id(run_id)
        if after_sequence < 0:
            raise InvalidArgument(
                "after_sequence must not be negative",
                violations=[FieldViolation(field="after_sequence", description="must be >= 0")],
            )
        with self.hub.watch_run(rid) as watcher:
            # Registered before the first read: a notification from now on wakes us.
            async with storage_errors():
                head = await self._repository.run_head(organization_id, rid)
            if head is None:
                raise _run_not_found(run_id)
            if after_sequence > head.last_event_sequence:
                raise InvalidArgument(
                    f"after_sequence {after_sequence} is past the last event of run "
                    f"{run_id} ({head.last_event_sequence})",
                    reason="AFTER_SEQUENCE_AHEAD",
                    violations=[
                        FieldViolation(
                            field="after_sequence",
                            description=f"must be <= {head.last_event_sequence}",
                        )
                    ],
                )
            if head.state in _TERMINAL_RUN_STATES and after_sequence == head.last_event_sequence:
                return  # the client has seen everything, the terminal event included
            name = head.definition_name or ""
            watcher.position = after_sequence
            while True:
                epoch = watcher.epoch
                watcher.clear()
                page = await self._page(organization_id, rid, watcher.position, name, epoch)
                for event in page:
                    yield event
                    watcher.position = event.sequence
                    if event.type in TERMINAL_EVENT_TYPES:
                        return
                if len(page) == self.config.page_size:
                    continue  # more to replay right now
                if head.state in _TERMINAL_RUN_STATES:
                    if watcher.position >= head.last_event_sequence:
                        return  # ended before the call, without a terminal event
                    if not page:
                        # The run ended before the call and its log was pruned by
                        # retention: nothing more will ever come.
                        raise FailedPrecondition(
                            f"the events of run {run_id} after sequence {watcher.position} "
                            "were deleted by retention (PODIUM_EVENT_RETENTION_HOURS)",
                            reason="EVENTS_PRUNED",
                            metadata={"run_id": run_id},
                        )
                await watcher.wait(self.config.idle_reread_seconds)
                _check(watcher, run_id)

    async def _page(
        self, organization_id: str, run_id: uuid.UUID, after: int, name: str, epoch: int
    ) -> list[RunEvent]:
        """The page after ``after``: a read in flight that started at ``epoch`` or later
        is shared, else a new one is issued. Shielded: a watcher that goes away does not
        cancel the read of the others."""
        key = (run_id, after)
        current = self._inflight.get(key)
        if current is not None and current[0] >= epoch:
            self.shared_reads += 1
            future = current[1]
        else:
            future = asyncio.ensure_future(self._read(organization_id, run_id, after, name))
            self._inflight[key] = (epoch, future)
            future.add_done_callback(lambda done: self._forget(key, done))
            self.reads += 1
        return await asyncio.shield(future)

    def _forget(self, key: tuple[uuid.UUID, int], done: asyncio.Future[list[RunEvent]]) -> None:
        current = self._inflight.get(key)
        if current is not None and current[1] is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # retrieved: no "never retrieved" warning when nobody waits

    async def _read(
        self, organization_id: str, run_id: uuid.UUID, after: int, name: str
    ) -> list[RunEvent]:
        async with storage_errors():
            rows = await self._repository.run_events(
                organization_id, run_id, after, self.config.page_size
            )
        limit = self.config.max_event_bytes
        return [event_to_proto(row, name, max_bytes=limit) for row in rows]

    # -- WatchRuns ---------------------------------------------------------------------

    async def watch_runs(
        self, organization_id: str, request: pb.WatchRunsRequest
    ) -> AsyncIterator[RunEvent]:
        """The organization's events matching the request's filters, from
        ``start_time`` (replayed first) or from now on; never ends by itself (module
        docstring for the guarantee).

        Raises InvalidArgument (an unknown state, a start time out of range) and
        Unavailable (the database, or this replica stopping).
        """
        states = _states(request)
        violations: list[FieldViolation] = []
        since = timestamp_value(request, "start_time", violations)
        if violations:
            raise InvalidArgument("start_time is out of range", violations=violations)
        definition_name = request.definition_name or None
        labels: Mapping[str, str] = dict(request.labels)
        config = self.config
        window = timedelta(seconds=config.org_window_seconds)
        tail_window = timedelta(seconds=config.org_tail_window_seconds)
        # run id -> (last delivered sequence, its created_at)
        delivered: dict[uuid.UUID, tuple[int, datetime]] = {}
        start = since  # lower bound of the whole stream (None until the first read)
        cursor = since  # every event visible before it was read (or delivered up to it)
        previous: datetime | None = None  # database time of the previous read
        previous_rescan: datetime | None = None  # ... of the previous re-scan
        next_rescan = 0.0  # monotonic time the next re-scan is due
        with self.hub.watch_org() as watcher:
            while True:
                watcher.clear()
                last_read = time.monotonic()
                rescan = last_read >= next_rescan
                low = start
                if start is not None and cursor is not None and previous is not None:
                    if rescan:
                        assert previous_rescan is not None
                        low = max(start, min(cursor, previous_rescan - window))
                        # Lower bounds never go below this one again: forget the runs
                        # whose delivered events all lie before it.
                        delivered = {r: v for r, v in delivered.items() if v[1] >= low}
                    else:
                        low = max(start, min(cursor, previous - tail_window))
                async with storage_errors():
                    page = await self._repository.org_events(
                        organization_id,
                        since=low,
                        delivered={r: v[0] for r, v in delivered.items()},
                        definition_name=definition_name,
                        states=states,
                        labels=labels,
                        limit=config.org_page_size,
                    )
                self.org_reads += 1
                if start is None:
                    start = cursor = page.now
                assert cursor is not None
                previous = page.now
                if rescan:
                    previous_rescan = page.now
                    next_rescan = last_read + config.org_rescan_interval_seconds
                for row, name in page.events:
                    delivered[row.run_id] = (row.sequence, row.created_at)
                    cursor = max(cursor, row.created_at)
                    yield event_to_proto(row, name or "", max_bytes=config.max_event_bytes)
                if len(page.events) == config.org_page_size:
                    continue
                # A complete read: every event committed before `now` was seen.
                cursor = max(cursor, page.now)
                wait = min(config.idle_reread_seconds, next_rescan - time.monotonic())
                if wait > 0:
                    await watcher.wait(wait)
                _check(watcher, None)
                pause = last_read + config.org_min_interval_seconds - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)


def _run_not_found(run_id: str) -> NotFound:
    return NotFound(f"run {run_id} not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id})


def _check(watcher: Watcher, run_id: str | None) -> None:
    """End the stream when the replica stops or the watched run was deleted."""
    if watcher.closed:
        raise Unavailable(
            "this Podium replica is shutting down; reconnect (WatchRun: with the last "
            "sequence received as after_sequence)",
            reason="SHUTTING_DOWN",
        )
    if watcher.gone and run_id is not None:
        raise _run_not_found(run_id)


def _states(request: pb.WatchRunsRequest) -> list[str]:
    names: list[str] = []
    violations: list[FieldViolation] = []
    for i, state in enumerate(request.states):
        name = _RUN_STATE_NAMES.get(state)
        if name is None:
            violations.append(
                FieldViolation(field=f"states[{i}]", description=f"unknown run state {state}")
            )
        else:
            names.append(name)
    if violations:
        raise InvalidArgument("states must be known run states", violations=violations)
    return names
