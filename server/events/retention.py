"""Retention: background pruning of whole finished runs, of the event log and of
finished webhook deliveries.

Runs (``PODIUM_RUN_RETENTION_DAYS``, 0, the default, keeps them):

- a top-level run that **ended** (succeeded, failed or cancelled) more than the
  retention age ago is deleted with everything of it: its child runs (at any depth),
  steps, attempts, events, conversations, deliverables, approvals and webhook
  deliveries (``ON DELETE CASCADE``). A tree is deleted whole or not at all: a
  top-level run with a descendant that has not ended is kept, and a child run is never
  deleted on its own (a finished child of a running parent stays). Runs forked from a
  deleted run keep running; their ``forked_from`` is cleared. Export a run's history
  first with ``podium runs export`` to archive it.
- batches walk ``orchestration_runs_ended_idx`` in (ended_at, id) order, at most
  ``run_batch_size`` top-level runs per batch.

Events and deliveries (``PODIUM_EVENT_RETENTION_HOURS``, 0 keeps everything):

- **events**: all the events of a run are deleted once the run **ended** (succeeded,
  failed or cancelled) more than the retention age ago. Events of runs that have not
  ended (created, running, paused) are never deleted, whatever their age, so a
  WatchRun replay of a live run never meets a gap; the log of an ended run is either
  complete or gone.
- **webhook deliveries**: delivered and dead deliveries created more than the age ago
  are deleted; pending ones never are (they end delivered or dead first).

Each replica runs a pass every ``PODIUM_RETENTION_INTERVAL_SECONDS`` (the first one
after a random part of the interval, so replicas started together do not prune
together). A pass (runs first, then events, then deliveries) works in batches, one
short transaction each, under a transaction advisory lock taken with
``pg_try_advisory_xact_lock``: while one replica prunes, the others skip. The event
batches walk ``orchestration_events_created_idx`` forward from the oldest event, so
the events of a run that is still live are scanned once per pass, not once per batch.
Each batch's deletions are reported to ``on_deleted(kind, count)`` (the metric
``orchestration_retention_deleted_total{kind}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from podium.server.storage.errors import StorageError
from podium.server.storage.retention import RunRetentionRepository
from podium.server.storage.webhooks import WebhooksRepository

__all__ = ["RETENTION_KINDS", "EventRetention", "RetentionConfig", "RetentionResult"]

log = logging.getLogger("podium.retention")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NIL = uuid.UUID(int=0)

RETENTION_KINDS = ("runs", "events", "webhook_deliveries")
"""Values of ``orchestration_retention_deleted_total{kind}``."""


@dataclass(frozen=True)
class RetentionConfig:
    """Tunables of retention (see the module docstring)."""

    retention_hours: float = 168.0
    interval_seconds: float = 600.0
    batch_size: int = 10_000
    run_retention_days: float = 0.0
    run_batch_size: int = 100

    @property
    def enabled(self) -> bool:
        """False when both ages are 0 (keep everything)."""
        return self.retention_hours > 0 or self.runs_enabled

    @property
    def runs_enabled(self) -> bool:
        """Whether whole runs are deleted (``run_retention_days`` > 0)."""
        return self.run_retention_days > 0


@dataclass(frozen=True)
class RetentionResult:
    """What one pass deleted; ``skipped`` when another replica held the lock."""

    events: int = 0
    deliveries: int = 0
    skipped: bool = False
    runs: int = 0
    """Runs deleted, child runs included."""
    run_batches: int = 0
    """Batches (transactions) of the run pass."""


class EventRetention:
    """The retention task of one replica (module docstring)."""

    def __init__(
        self,
        repository: WebhooksRepository,
        config: RetentionConfig,
        runs: RunRetentionRepository | None = None,
    ) -> None:
        self._repository = repository
        self._runs = runs
        self.config = config
        self.on_deleted: Callable[[str, int], None] = lambda kind, count: None
        """Called after each batch that deleted rows, with a kind of :data:`RETENTION_KINDS`."""
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
            if result.runs or result.events or result.deliveries:
                log.info(
                    "retention pruned %d runs, %d events and %d webhook deliveries",
                    result.runs,
                    result.events,
                    result.deliveries,
                )

    async def run_once(self, now: datetime | None = None) -> RetentionResult:
        """One full pass: every batch until nothing older than the age is left to
        delete. ``now`` defaults to the current time."""
        if not self.config.enabled:
            return RetentionResult()
        now = now or datetime.now(UTC)
        runs, run_batches, locked = await self._prune_runs(now)
        if not locked:
            return RetentionResult(skipped=True, runs=runs, run_batches=run_batches)
        if self.config.retention_hours <= 0:
            return RetentionResult(runs=runs, run_batches=run_batches)
        cutoff = now - timedelta(hours=self.config.retention_hours)
        size = self.config.batch_size
        events = 0
        scan_from = _EPOCH
        while True:
            batch = await self._repository.prune_events(cutoff, scan_from, size)
            if not batch.locked:
                return RetentionResult(
                    events=events, skipped=True, runs=runs, run_batches=run_batches
                )
            events += batch.deleted
            if batch.deleted:
                self.on_deleted("events", batch.deleted)
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
                return RetentionResult(
                    events=events,
                    deliveries=deliveries,
                    skipped=True,
                    runs=runs,
                    run_batches=run_batches,
                )
            deliveries += deleted
            if deleted:
                self.on_deleted("webhook_deliveries", deleted)
            if deleted < size:
                break
        return RetentionResult(
            events=events, deliveries=deliveries, runs=runs, run_batches=run_batches
        )

    async def _prune_runs(self, now: datetime) -> tuple[int, int, bool]:
        """The run pass: (runs deleted, batches, False when another replica held the
        lock). Each batch is one short transaction; the walk goes forward in (ended_at,
        id) order, so kept trees (a live descendant, a locked row) are scanned once."""
        if not self.config.runs_enabled or self._runs is None:
            return 0, 0, True
        cutoff = now - timedelta(days=self.config.run_retention_days)
        size = self.config.run_batch_size
        after = (_EPOCH, _NIL)
        deleted = batches = 0
        while True:
            batch = await self._runs.prune_runs(cutoff, after, size)
            if not batch.locked:
                return deleted, batches, False
            batches += 1
            deleted += batch.deleted_runs
            if batch.deleted_runs:
                self.on_deleted("runs", batch.deleted_runs)
            if batch.scanned < size or batch.last_ended_at is None or batch.last_id is None:
                return deleted, batches, True
            after = (batch.last_ended_at, batch.last_id)
