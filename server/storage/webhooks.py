"""Webhooks repository: configured targets, the outbox (``webhook_deliveries``) and
retention of the event log.

Deliveries are created by the trigger ``podium_enqueue_webhooks``
(``functions/20_webhooks.sql``) in the transaction of each event, one per (event,
target); this module claims them for sending, records outcomes, lists them, and
prunes old events and finished deliveries.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .database import Database
from .queries import QUERIES

__all__ = [
    "ClaimedDelivery",
    "DeliveryOutcome",
    "DeliveryRow",
    "PruneBatch",
    "TargetsSync",
    "WebhooksRepository",
]


@dataclass(frozen=True, slots=True)
class TargetsSync:
    """What :meth:`WebhooksRepository.replace_configured_targets` changed."""

    added: list[str]
    removed: list[str]


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery leased for one try; ``attempts`` counts this try (the fencing token)."""

    id: uuid.UUID
    organization_id: str
    url: str
    run_id: uuid.UUID | None
    sequence: int | None
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """The result of one try.

    Attributes:
        attempts: the try number it was claimed with.
        delivered: the receiver answered 2xx.
        error: what went wrong (HTTP status or error text), None when delivered.
        retry_in: seconds until the next try; None when there is none (dead).
    """

    id: uuid.UUID
    attempts: int
    delivered: bool
    error: str | None = None
    retry_in: float | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A stored delivery."""

    id: uuid.UUID
    organization_id: str
    url: str
    run_id: uuid.UUID | None
    sequence: int | None
    payload: dict[str, Any]
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class PruneBatch:
    """One retention batch over the event log (see ``prune_events`` in webhooks.sql).
    ``locked`` is False when another replica holds the retention lock (nothing done)."""

    locked: bool
    scanned: int = 0
    last_created_at: datetime | None = None
    deleted: int = 0


class WebhooksRepository:
    """SQL of webhook targets, deliveries and retention. Errors are :mod:`.errors`
    exceptions."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def replace_configured_targets(
        self, organization_id: str, urls: Sequence[str]
    ) -> TargetsSync:
        """Make ``urls`` the organization's configured targets (adding the missing ones,
        deleting the others) in one transaction, serialized across replicas."""
        wanted = sorted(set(urls))
        async with self._db.transaction() as conn:
            await conn.execute(QUERIES["lock_webhook_targets"], organization_id)
            added = await conn.fetch(QUERIES["insert_webhook_targets"], organization_id, wanted)
            removed = await conn.fetch(
                QUERIES["delete_unlisted_webhook_targets"], organization_id, wanted
            )
        return TargetsSync(
            added=sorted(r["url"] for r in added), removed=sorted(r["url"] for r in removed)
        )

    async def list_targets(self, organization_id: str) -> list[str]:
        """The organization's target URLs, sorted."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["list_webhook_targets"], organization_id)
        return [r["url"] for r in rows]

    async def claim(self, limit: int, lease_seconds: float) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due deliveries for one try each (attempts + 1)."""
        if limit <= 0:
            return []
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["claim_webhook_deliveries"], limit, lease_seconds)
        return [ClaimedDelivery(**dict(r)) for r in rows]

    async def finish(self, outcomes: Sequence[DeliveryOutcome]) -> int:
        """Record outcomes in one statement; returns how many were still current
        (a try whose lease was lost and taken again is not)."""
        if not outcomes:
            return 0
        async with self._db.connection() as conn:
            status = await conn.execute(
                QUERIES["finish_webhook_deliveries"],
                [o.id for o in outcomes],
                [o.attempts for o in outcomes],
                [o.delivered for o in outcomes],
                [o.error for o in outcomes],
                [o.retry_in for o in outcomes],
            )
        return _row_count(status)

    async def release(self, claims: Sequence[tuple[uuid.UUID, int]]) -> int:
        """Give back interrupted tries (id, try number): uncounted and due at once."""
        if not claims:
            return 0
        async with self._db.connection() as conn:
            status = await conn.execute(
                QUERIES["release_webhook_deliveries"],
                [c[0] for c in claims],
                [c[1] for c in claims],
            )
        return _row_count(status)

    async def list_deliveries(
        self,
        organization_id: str,
        *,
        run_id: uuid.UUID | None,
        states: Sequence[str],
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[DeliveryRow]:
        """A page of deliveries, newest first, after the keyset position ``after``."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["list_webhook_deliveries"],
                organization_id,
                run_id,
                list(states),
                after[0] if after else None,
                after[1] if after else None,
                limit,
            )
        return [DeliveryRow(**dict(r)) for r in rows]

    async def prune_events(self, cutoff: datetime, scan_from: datetime, limit: int) -> PruneBatch:
        """One retention batch over the event log, under the retention lock."""
        async with self._db.transaction() as conn:
            if not await conn.fetchval(QUERIES["try_lock_retention"]):
                return PruneBatch(locked=False)
            row = await conn.fetchrow(QUERIES["prune_events"], cutoff, scan_from, limit)
        assert row is not None
        return PruneBatch(
            locked=True,
            scanned=row["scanned"],
            last_created_at=row["last_created_at"],
            deleted=row["deleted"],
        )

    async def prune_deliveries(self, cutoff: datetime, limit: int) -> int | None:
        """Delete up to ``limit`` finished deliveries created before ``cutoff``, under
        the retention lock; None when another replica holds it."""
        async with self._db.transaction() as conn:
            if not await conn.fetchval(QUERIES["try_lock_retention"]):
                return None
            status = await conn.execute(QUERIES["prune_webhook_deliveries"], cutoff, limit)
        return _row_count(status)


def _row_count(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0
