"""Run retention: batched deletes of whole finished run trees (``retention.sql``).

The pass itself (when, how often, which replica) is :mod:`podium.server.events.retention`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from .database import Database
from .queries import QUERIES

__all__ = ["RunPruneBatch", "RunRetentionRepository"]


@dataclass(frozen=True, slots=True)
class RunPruneBatch:
    """One batch of run retention (``prune_runs`` in retention.sql). ``locked`` is False
    when another replica holds the retention lock (nothing done). ``deleted_runs``
    counts the child runs deleted with their top-level runs (``deleted_roots``)."""

    locked: bool
    scanned: int = 0
    last_ended_at: datetime | None = None
    last_id: uuid.UUID | None = None
    deleted_roots: int = 0
    deleted_runs: int = 0


class RunRetentionRepository:
    """SQL of run retention. Errors are :mod:`.errors` exceptions."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def prune_runs(
        self, cutoff: datetime, after: tuple[datetime, uuid.UUID], limit: int
    ) -> RunPruneBatch:
        """One batch, in one transaction under the retention lock: scans up to ``limit``
        top-level runs that ended before ``cutoff``, after ``after`` in (ended_at, id)
        order, and deletes the finished trees among them."""
        async with self._db.transaction() as conn:
            if not await conn.fetchval(QUERIES["try_lock_retention"]):
                return RunPruneBatch(locked=False)
            row = await conn.fetchrow(QUERIES["prune_runs"], cutoff, after[0], after[1], limit)
        assert row is not None
        return RunPruneBatch(
            locked=True,
            scanned=row["scanned"],
            last_ended_at=row["last_ended_at"],
            last_id=row["last_id"],
            deleted_roots=row["deleted_roots"],
            deleted_runs=row["deleted_runs"],
        )
