"""The schedule loop of one replica: fires due schedule ticks and delayed run starts.

Every replica runs one. Each round claims the due schedules (``ScheduleService.fire_due``:
one transaction per schedule, the row locked ``FOR UPDATE SKIP LOCKED``, so a tick is
claimed by exactly one replica) and starts the due delayed runs
(``podium_start_delayed_runs``), then sleeps until the earliest next fire time by the
database's clock, at most ``MAX_SLEEP_SECONDS`` (the poll interval while a buffered
tick waits for its previous run). ``LISTEN podium_schedules`` wakes it when a schedule
is created or resumed or a delayed run is registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from podium.server.engine.schedules import ScheduleService
from podium.server.storage.database import DirectConnection, connect_direct
from podium.server.storage.errors import StorageError
from podium.server.telemetry.metrics import Metrics
from podium.server.waits import wait_set

__all__ = ["MAX_SLEEP_SECONDS", "RECHECK_SECONDS", "ScheduleLoop"]

log = logging.getLogger("podium.schedules")

MAX_SLEEP_SECONDS = 30.0
"""The longest sleep between rounds: a lost notification or a database clock that
jumped is noticed within this."""


RECHECK_SECONDS = 0.05
"""The sleep while a due schedule is held by another replica."""


class ScheduleLoop:
    """Fires schedule ticks and delayed starts for one replica. See the module docstring."""

    def __init__(self, dsn: str, service: ScheduleService, poll_interval_seconds: float) -> None:
        self._dsn = dsn
        self._service = service
        self._poll = poll_interval_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: DirectConnection | None = None
        self.rounds = 0
        self.metrics = Metrics()

    def instrument(self, metrics: Metrics) -> None:
        """Count into the server's ``metrics`` instead of a private default."""
        self.metrics = metrics

    async def start(self) -> None:
        await self._listen()
        self._task = asyncio.create_task(self._run(), name="podium-schedules")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    def wake(self) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        conn: DirectConnection | None = None
        try:
            conn = await connect_direct(self._dsn)
            await conn.add_listener("podium_schedules", self._on_notify)
            conn.add_termination_listener(self._on_lost)
        except Exception as exc:
            log.warning("cannot LISTEN for schedules (polling instead): %s", exc)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            return
        self._listener = conn

    def _on_notify(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        self._wake.set()

    def _on_lost(self, _conn: object) -> None:
        self._listener = None

    async def _run(self) -> None:
        while True:
            wait = await self._round()
            self._wake.clear()
            await wait_set(self._wake, wait)

    async def _round(self) -> float:
        """One round; returns how long to sleep."""
        self.rounds += 1
        repository = self._service.repository
        try:
            if self._listener is None:
                await self._listen()
            started = await self._service.fire_due()
            delayed = await repository.start_delayed_runs(100)
            self.metrics.scheduled_runs_total.labels(kind="tick").inc(len(started))
            self.metrics.scheduled_runs_total.labels(kind="delayed").inc(len(delayed))
            if started or delayed:
                log.info(
                    "scheduled runs started",
                    extra={"schedule_runs": len(started), "delayed_runs": len(delayed)},
                )
            seconds, buffered = await repository.next_wake()
        except StorageError as exc:
            log.warning("schedule round failed (retrying): %s", exc)
            return self._poll
        except Exception:
            log.exception("schedule round failed (retrying)")
            return self._poll
        if seconds is None:
            wait = MAX_SLEEP_SECONDS
        elif seconds <= 0:
            # Still due after the round: another replica holds it (claiming it now).
            wait = RECHECK_SECONDS
        else:
            # A few milliseconds past the fire time, so the next round finds it due.
            wait = min(seconds + 0.005, MAX_SLEEP_SECONDS)
        if buffered:
            wait = min(wait, self._poll)
        return wait
