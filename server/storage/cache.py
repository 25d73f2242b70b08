"""Step-output cache repository: lookups with single flight, stores, invalidation.

The transitions are SQL functions (``functions/70_cache.sql``): a lookup is one
round trip whatever its answer (hit, lead, wait, stale), and so is a store.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .database import Database
from .queries import QUERIES

__all__ = ["CacheLookup", "CacheRepository"]


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """The answer of :meth:`CacheRepository.lookup`.

    ``status``: ``hit`` (the step is marked cached and ``step.cached`` emitted),
    ``lead`` (this attempt must compute the output), ``wait`` (another running attempt
    computes it), ``stale`` (this attempt no longer runs). On a hit ``output`` is None
    when the caller's copy (``known_created``) is current.
    """

    status: str
    output: Any = None
    source_run_id: uuid.UUID | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None


class CacheRepository:
    """SQL access for ``step_cache`` and ``step_cache_flights``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def lookup(
        self,
        organization_id: str,
        key: str,
        run_id: uuid.UUID,
        step_id: str,
        attempt: int,
        known_created: datetime | None,
    ) -> CacheLookup:
        """Look ``key`` up for a running attempt (see :class:`CacheLookup`)."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                QUERIES["cache_lookup"],
                organization_id,
                key,
                run_id,
                step_id,
                attempt,
                known_created,
            )
        assert row is not None
        return CacheLookup(**dict(row))

    async def release(
        self,
        organization_id: str,
        key: str,
        run_id: uuid.UUID,
        step_id: str,
        attempt: int,
        *,
        output: Any,
        definition_name: str | None,
        definition_version: int | None,
        ttl_seconds: float | None,
    ) -> datetime | None:
        """Store ``output`` (unless None) and leave the key's flight; returns the stored
        entry's ``created_at``."""
        async with self._db.connection() as conn:
            created: datetime | None = await conn.fetchval(
                QUERIES["cache_release"],
                organization_id,
                key,
                run_id,
                step_id,
                attempt,
                output,
                definition_name,
                definition_version,
                ttl_seconds,
            )
        return created

    async def invalidate(
        self, organization_id: str, definition_name: str, definition_version: int
    ) -> int:
        """Delete the entries of a definition (every version when 0); returns how many."""
        async with self._db.connection() as conn:
            deleted: int = await conn.fetchval(
                QUERIES["cache_invalidate"], organization_id, definition_name, definition_version
            )
        return deleted
