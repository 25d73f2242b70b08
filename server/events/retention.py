"""Retention: background pruning of the event log and of finished webhook deliveries.

Rule (``PODIUM_EVENT_RETENTION_HOURS``, 0 keeps everything):

- **events**: all the events of a run are deleted once the run **ended** (succeeded,
  failed or cancelled) more than the retention age ago. Events of runs that have not
  ended (created, running, paused) are never deleted, whatever their age, so a
  WatchRun replay of a live run never meets a gap; the log of an ended run is either
  complete or gone.
- **webhook deliveries**: delivered and dead deliveries created more than the age ago
  are deleted; pending ones never are (they end delivered or dead first).

Each replica runs a pass every ``PODIUM_RETENTION_INTERVAL_SECONDS`` (the first one
after a random part of the interval, so replicas started together do not prune
together). A pass works in batches (``batch_size`` rows, one short transaction each)
under a transaction advisory lock taken with ``pg_try_advisory_xact_lock``: while one
replica prunes, the others skip. The event batches walk
``orchestration_events_created_idx`` forward from the oldest event, so the events of a
run that is still live are scanned once per pass, not once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from podium.server.storage.errors import StorageError
from podium.server.storage.webhooks import WebhooksRepository

__all__ = ["EventRetention", "RetentionConfig", "RetentionResult"]

log = logging.getLogger("podium.retention")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RetentionConfig:
    """Tunables of retention (see the module docstring)."""

    retention_hours: float = 168.0
    interval_seconds: float = 600.0
    batch_size: int = 10_000

    @property
    def enabled(self) -> bool:
        """False when the age is 0 (keep everything)."""
        return self.retention_hours > 0


@dataclass(frozen=True)
class RetentionResult:
    """What one pass deleted; ``skipped`` when another replica held the lock."""

    events: int = 0
    deliveries: int = 0
    skipped: bool = False


class EventRetention:
    """The retention task of one replica (module docstring)."""

    def __init__(self, repository: WebhooksRepository, config: RetentionConfig) -> None:
        self._repository = repository
        self.config = config
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the background loop (nothing when retention is disabled)."""
        if self.config.enabled and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="podium-retention")

    async def stop(self) -> None:
        """Stop the loop (an interrupted batch rolls back)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        delay = self.config.interval_seconds * random.uniform(0.1, 1.0)
        while True:
            await asyncio.sleep(delay)
            delay = self.config.interval_seconds
            try:
                result = await self.run_once()
            except StorageError as exc:
                log.warning("retention pass failed (retried next interval): %s", exc)
                continue
            if result.events or result.deliveries:
                log.info(
                    "retention pruned %d events and %d webhook deliveries",
                    result.events,
                    result.deliveries,
                )

    async def run_once(self, now: datetime | None = None) -> RetentionResult:
        """One full pass: every batch until nothing older than the age is left to
        delete. ``now`` defaults to the current time."""
        if not self.config.enabled:
            return RetentionResult()
        cutoff = (now or datetime.now(UTC)) - timedelta(hours=self.config.retention_hours)
        size = self.config.batch_size
        events = 0
        scan_from = _EPOCH
        while True:
            batch = await self._repository.prune_events(cutoff, scan_from, size)
            if not batch.locked:
                return RetentionResult(events=events, skipped=True)
            events += batch.deleted
            if batch.scanned < size or batch.last_created_at is None:
                break
            if batch.last_created_at > scan_from:
                scan_from = batch.last_created_at  # events at that instant are scanned again
            else:
                # A whole batch of kept events shares one timestamp: step past it.
                scan_from += timedelta(microseconds=1)
        deliveries = 0
        while True:
            deleted = await self._repository.prune_deliveries(cutoff, size)
            if deleted is None:
                return RetentionResult(events=events, deliveries=deliveries, skipped=True)
            deliveries += deleted
            if deleted < size:
                break
        return RetentionResult(events=events, deliveries=deliveries)
