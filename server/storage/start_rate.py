"""The per-organization StartRun rate limit's counter (``start_run_windows``)."""

from __future__ import annotations

from .database import Database
from .queries import QUERIES

__all__ = ["StartRateRepository"]


class StartRateRepository:
    """Counts StartRun calls per organization in fixed windows, across replicas."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def take(self, organization_id: str, window_seconds: float) -> tuple[int, float]:
        """Count one call into the current window: (calls in this window including this
        one, seconds until the window ends)."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["start_run_take"], organization_id, window_seconds)
        assert row is not None
        return int(row["started"]), max(float(row["retry_after"]), 0.0)
