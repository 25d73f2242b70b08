"""Timers and external events repository: the transitions of sleep and wait_for_event
steps and SendEvent, all SQL functions (``functions/80_events_in.sql``), each one
transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .database import Database
from .queries import QUERIES

__all__ = ["ExternalEventsRepository", "SentEvent", "TimerKey", "TriggeredDefinition"]


@dataclass(frozen=True, slots=True)
class TimerKey:
    """The claim a timer call is fenced on: the step, its attempt and the claim's task."""

    run_id: uuid.UUID
    step_id: str
    attempt: int
    task_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class SentEvent:
    """What SendEvent did."""

    duplicate: bool
    delivered_steps: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class TriggeredDefinition:
    """The latest version of a definition with an event trigger on an event name."""

    name: str
    version: int
    triggers: list[dict[str, Any]]


class ExternalEventsRepository:
    """Sleep and wait_for_event transitions, and SendEvent."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def sleep(
        self, key: TimerKey, seconds: float | None, until: datetime | None
    ) -> tuple[str, datetime | None]:
        """``('due' | 'waiting' | 'stale', deadline)`` for a claimed sleep step."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                QUERIES["sleep_step"],
                key.run_id,
                key.step_id,
                key.attempt,
                key.task_id,
                seconds,
                until,
            )
        assert row is not None
        return str(row["status"]), row["wake_at"]

    async def wait(
        self,
        key: TimerKey,
        organization_id: str,
        name: str,
        event_key: str,
        timeout_seconds: float,
    ) -> tuple[str, dict[str, Any] | None]:
        """``('received', event) | ('timeout' | 'waiting' | 'stale', None)`` for a
        claimed wait_for_event step."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                QUERIES["wait_event"],
                key.run_id,
                key.step_id,
                key.attempt,
                key.task_id,
                organization_id,
                name,
                event_key,
                timeout_seconds,
            )
        assert row is not None
        return str(row["status"]), row["event"]

    async def send(
        self,
        organization_id: str,
        event_id: str,
        name: str,
        key: str,
        payload: dict[str, Any],
        retention_seconds: float,
    ) -> SentEvent:
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                QUERIES["send_event"],
                organization_id,
                event_id,
                name,
                key,
                payload,
                retention_seconds,
            )
        assert row is not None
        return SentEvent(bool(row["duplicate"]), int(row["delivered"]), row["expires_at"])

    async def trigger_definitions(
        self, organization_id: str, event_name: str
    ) -> list[TriggeredDefinition]:
        """Definitions (latest, unarchived versions) with a trigger on ``event_name``."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["trigger_definitions"], organization_id, event_name)
        return [TriggeredDefinition(r["name"], r["version"], list(r["triggers"])) for r in rows]
