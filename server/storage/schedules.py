"""Schedules repository: schedule rows, the claim of a tick (with the runs it starts, in
one transaction), and delayed run starts.

The tick arithmetic is the caller's (``engine/schedule_times.py``): :meth:`claim` locks
the schedule row (``FOR UPDATE SKIP LOCKED``, so exactly one replica holds a tick),
hands it with the database's ``now()`` to a decision callback, inserts the runs it asks
for with ``podium_create_run`` and moves the schedule forward, all before committing.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .database import Database
from .queries import QUERIES
from .runs import NewRun, RunsRepository

__all__ = ["ClaimResult", "NewSchedule", "ScheduleRow", "SchedulesRepository", "TickRuns"]


@dataclass(frozen=True)
class NewSchedule:
    """A schedule to insert (validated by the engine)."""

    id: uuid.UUID
    organization_id: str
    definition_name: str
    definition_version: int
    cron: str | None
    time_zone: str
    interval_seconds: float | None
    jitter_seconds: float
    overlap_policy: str
    catch_up_policy: str
    max_catch_up_runs: int
    input: Mapping[str, Any]
    labels: Mapping[str, str]
    next_tick_at: datetime
    next_fire_at: datetime


@dataclass(frozen=True)
class ScheduleRow:
    """A stored schedule."""

    id: uuid.UUID
    organization_id: str
    definition_name: str
    definition_version: int
    cron: str | None
    time_zone: str
    interval_seconds: float | None
    jitter_seconds: float
    overlap_policy: str
    catch_up_policy: str
    max_catch_up_runs: int
    input: dict[str, Any]
    labels: dict[str, str]
    paused: bool
    next_tick_at: datetime
    next_fire_at: datetime
    buffered_tick_at: datetime | None
    last_fire_at: datetime | None
    last_run_id: uuid.UUID | None
    runs_started: int
    created_at: datetime
    updated_at: datetime


def schedule_row(row: asyncpg.Record) -> ScheduleRow:
    return ScheduleRow(**{f: row[f] for f in ScheduleRow.__dataclass_fields__})


@dataclass
class TickRuns:
    """The decision on a claimed schedule: the runs to create (each with its tick) and
    the schedule's new position."""

    runs: Sequence[tuple[datetime, NewRun]]
    next_tick_at: datetime
    next_fire_at: datetime
    buffered_tick_at: datetime | None


@dataclass(frozen=True)
class ClaimResult:
    """What a claim did: the ids of the runs created (a replayed tick's existing run is
    not among them), or ``claimed`` False when the schedule was not due or held by
    another replica."""

    claimed: bool
    run_ids: tuple[uuid.UUID, ...] = ()


Decide = Callable[[ScheduleRow, datetime, bool], Awaitable[TickRuns | None]]
"""(schedule, database now, previous run active) -> the tick's runs, or None to leave
the schedule untouched (not due)."""

_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class SchedulesRepository:
    """SQL access for schedules and delayed starts."""

    def __init__(self, db: Database, runs: RunsRepository) -> None:
        self._db = db
        self._runs = runs

    async def now(self) -> datetime:
        """The database's clock (every schedule decision uses it)."""
        async with self._db.connection() as conn:
            value: datetime = await conn.fetchval("SELECT now()")
        return value

    async def insert(self, schedule: NewSchedule) -> ScheduleRow:
        """Store a schedule and wake the schedule loops."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                QUERIES["insert_schedule"],
                schedule.organization_id,
                schedule.definition_name,
                schedule.definition_version,
                schedule.cron,
                schedule.time_zone,
                schedule.interval_seconds,
                schedule.jitter_seconds,
                schedule.overlap_policy,
                schedule.catch_up_policy,
                schedule.max_catch_up_runs,
                dict(schedule.input),
                dict(schedule.labels),
                schedule.next_tick_at,
                schedule.next_fire_at,
                schedule.id,
            )
            await conn.execute(QUERIES["notify_schedules"])
        assert row is not None
        return schedule_row(row)

    async def get(self, organization_id: str, schedule_id: uuid.UUID) -> ScheduleRow | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["get_schedule"], schedule_id, organization_id)
        return None if row is None else schedule_row(row)

    async def list_page(
        self,
        organization_id: str,
        *,
        definition_name: str | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[ScheduleRow]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["list_schedules"],
                organization_id,
                definition_name,
                after[0] if after else None,
                after[1] if after else None,
                limit,
            )
        return [schedule_row(r) for r in rows]

    async def set_paused(
        self,
        organization_id: str,
        schedule_id: uuid.UUID,
        paused: bool,
        position: Callable[[ScheduleRow, datetime], tuple[datetime, datetime]],
    ) -> ScheduleRow | None:
        """Pause or resume; ``position(schedule, database now)`` gives the (next tick,
        next fire time) to store. None when the schedule does not exist."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(QUERIES["lock_schedule"], schedule_id, organization_id)
            if row is None:
                return None
            tick, fire = position(schedule_row(row), row["db_now"])
            updated = await conn.fetchrow(
                QUERIES["set_schedule_paused"], schedule_id, paused, tick, fire
            )
            if not paused:
                await conn.execute(QUERIES["notify_schedules"])
        assert updated is not None
        return schedule_row(updated)

    async def delete(self, organization_id: str, schedule_id: uuid.UUID) -> bool:
        async with self._db.connection() as conn:
            found = await conn.fetchval(QUERIES["delete_schedule"], schedule_id, organization_id)
        return found is not None

    async def due(self, limit: int) -> list[uuid.UUID]:
        """Ids of schedules due now or holding a buffered tick (not locked)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["due_schedules"], limit)
        return [r["id"] for r in rows]

    async def claim(self, schedule_id: uuid.UUID, decide: Decide) -> ClaimResult:
        """Claim the schedule's due tick(s): lock the row (skipping it when another
        replica holds it), let ``decide`` say which runs to start, create them and move
        the schedule forward, in one transaction."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(QUERIES["claim_schedule"], schedule_id)
            if row is None:
                return ClaimResult(claimed=False)
            active = row["last_run_state"] is not None and row["last_run_state"] not in _TERMINAL
            schedule = schedule_row(row)
            tick_runs = await decide(schedule, row["db_now"], active)
            if tick_runs is None:
                return ClaimResult(claimed=False)
            created: list[uuid.UUID] = []
            last_run: uuid.UUID | None = None
            last_fire: datetime | None = None
            for _tick, run in tick_runs.runs:
                run_id, was_created = await self._runs.insert_in(conn, run, start=True)
                last_run, last_fire = run_id, row["db_now"]
                if was_created:
                    created.append(run_id)
            await conn.execute(
                QUERIES["advance_schedule"],
                schedule_id,
                tick_runs.next_tick_at,
                tick_runs.next_fire_at,
                tick_runs.buffered_tick_at,
                last_fire,
                last_run,
                len(created),
            )
        return ClaimResult(claimed=True, run_ids=tuple(created))

    async def next_wake(self) -> tuple[float | None, bool]:
        """Seconds until the earliest schedule tick or delayed start (None: nothing
        scheduled; negative: already due), and whether a buffered tick waits."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["next_schedule_wake"])
        assert row is not None
        return row["seconds"], bool(row["buffered"])

    async def start_delayed_runs(self, limit: int) -> list[uuid.UUID]:
        """Start the created runs whose delayed start is due; their ids."""
        async with self._db.transaction() as conn:
            rows = await conn.fetch(QUERIES["start_delayed_runs"], limit)
        return [r["run_id"] for r in rows]
