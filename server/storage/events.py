"""Events repository: the reads behind WatchRun and WatchRuns.

Events are written by the state machine (``podium_emit_event`` in
``functions/10_events.sql``, in the transaction of the change they report); this
module only reads them: a run's log after a sequence, the last sequence of many runs at
once (the hub's fallback poll), and pages of an organization's events for WatchRuns.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from .database import Database
from .queries import QUERIES
from .runs import EventRow

__all__ = ["EventsRepository", "OrgEventsPage", "RunHead"]


@dataclass(frozen=True, slots=True)
class RunHead:
    """What a watcher needs to know about a run before reading its log."""

    id: uuid.UUID
    definition_name: str | None
    state: str
    last_event_sequence: int


@dataclass(frozen=True, slots=True)
class OrgEventsPage:
    """A page of an organization's events.

    ``now`` is the database time at the start of the statement that read the page (its
    snapshot includes every transaction committed before ``now``); ``events`` pairs each
    event with the definition name of its run.
    """

    now: datetime
    events: list[tuple[EventRow, str | None]]


class EventsRepository:
    """SQL reads of the event log for watchers."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def run_head(self, organization_id: str, run_id: uuid.UUID) -> RunHead | None:
        """The run's definition name, state and last sequence, or None."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["watch_run_head"], run_id, organization_id)
        return None if row is None else RunHead(**dict(row))

    async def run_events(
        self, organization_id: str, run_id: uuid.UUID, after_sequence: int, limit: int
    ) -> list[EventRow]:
        """At most ``limit`` events of a run after ``after_sequence``, in order."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["list_events"], run_id, organization_id, after_sequence, limit
            )
        return [EventRow(**dict(r)) for r in rows]

    async def listen(
        self, replica: str, organization_ids: Sequence[str], seconds: float, *, every: bool
    ) -> None:
        """Record that ``replica`` watches the events of ``organization_ids`` for
        ``seconds`` (``every``: those are all it watches; its other rows go), so that
        transitions of their runs send NOTIFY podium_events."""
        async with self._db.connection() as conn:
            await conn.execute(
                QUERIES["listen_events"], replica, list(organization_ids), seconds, every
            )

    async def last_sequences(self, run_ids: Sequence[str]) -> dict[str, int]:
        """The last event sequence of each existing run of ``run_ids`` (ids as text)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["watch_last_sequences"], list(run_ids))
        return {r["run_id"]: r["last_event_sequence"] for r in rows}

    async def org_events(
        self,
        organization_id: str,
        *,
        since: datetime | None,
        delivered: Mapping[uuid.UUID, int],
        definition_name: str | None,
        states: Sequence[str],
        labels: Mapping[str, str],
        limit: int,
    ) -> OrgEventsPage:
        """Up to ``limit`` events of the organization with ``created_at >= since``
        (None: the statement's start), in (created_at, run_id, sequence) order, leaving
        out, per run of ``delivered``, the events up to its sequence; filtered by the
        run's definition name and labels (contains all) and the run state after the
        event (any of ``states``; empty means any)."""
        runs = list(delivered)
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["watch_org_events"],
                organization_id,
                since,
                runs,
                [delivered[r] for r in runs],
                definition_name,
                list(states),
                dict(labels),
                limit,
            )
        now: datetime = rows[0]["now"]
        events = [
            (
                EventRow(
                    run_id=r["run_id"],
                    sequence=r["sequence"],
                    organization_id=r["organization_id"],
                    type=r["type"],
                    step_id=r["step_id"],
                    attempt=r["attempt"],
                    run_state=r["run_state"],
                    step_state=r["step_state"],
                    payload=r["payload"],
                    created_at=r["created_at"],
                ),
                r["definition_name"],
            )
            for r in rows
            if r["run_id"] is not None
        ]
        return OrgEventsPage(now=now, events=events)
