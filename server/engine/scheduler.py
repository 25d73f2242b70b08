"""The scheduler of one replica: its loops.

What each loop does and the guarantees (a step executed at least once, its completion
recorded exactly once) are in docs/ARCHITECTURE.md, section "One replica's loops". The
loops here: **claim** (``podium_claim_steps``), **execute** (one task per claimed step,
run by :class:`~.executor.StepExecutor`, which queues the outcome decided by
:mod:`.outcomes`; ``LISTEN podium_cancel`` cancels the tasks of a cancelled or failed
run), **complete** (``podium_complete_step``, batched), **leases**, **stream events**
(:mod:`.streams`) and **sweep** (finished child runs, expired approvals). They are
coordinated with other replicas only through PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from podium.server.agents.dispatch import AgentDispatcher
from podium.server.engine.cache import StepCache
from podium.server.engine.conditions import skipped_by_condition
from podium.server.engine.executor import StartChild, StepExecutor
from podium.server.engine.outcomes import OutcomePolicy, attempt_metrics
from podium.server.engine.streams import StepKey, StreamBuffers
from podium.server.engine.timers import TimerSteps, is_timer_step
from podium.server.storage.approvals import ApprovalsRepository
from podium.server.storage.database import DirectConnection, connect_direct
from podium.server.storage.errors import Conflict, StorageError, StorageUnavailable
from podium.server.storage.external_events import ExternalEventsRepository
from podium.server.storage.runs import (
    ClaimedStep,
    CompletedBatch,
    EagerClaim,
    RunsRepository,
    StepOutcome,
)
from podium.server.storage.steps import Outcome, StepError
from podium.server.telemetry.metrics import ORCHESTRATION_AGENT, Metrics
from podium.server.telemetry.tracing import Tracing
from podium.server.waits import wait_set

__all__ = ["Scheduler", "SchedulerConfig", "StartChild"]

log = logging.getLogger("podium.scheduler")


@dataclass(frozen=True)
class SchedulerConfig:
    """Tunables of one replica's scheduler."""

    slots: int = 100
    batch_size: int = 32
    lease_seconds: float = 30.0
    poll_interval_seconds: float = 1.0
    default_timeout_seconds: float = 300.0
    completion_batch_size: int = 256
    stream_flush_seconds: float = 0.25


class Scheduler:
    """Claims, executes and completes steps for one replica. See the module docstring."""

    def __init__(
        self,
        dsn: str,
        repository: RunsRepository,
        agents: AgentDispatcher,
        config: SchedulerConfig,
        *,
        start_child: StartChild | None = None,
        approvals: ApprovalsRepository | None = None,
        cache: StepCache | None = None,
        timers: ExternalEventsRepository | None = None,
    ) -> None:
        self._dsn = dsn
        self._repository = repository
        self._approvals = approvals
        self.cache = cache
        self.config = config
        self._sweep_wake = asyncio.Event()
        # Child-run outcomes queued but not committed yet (a second sweep skips them).
        self._sweeping: set[StepKey] = set()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._completions: asyncio.Queue[StepOutcome] = asyncio.Queue()
        # Keyed by (run, step, attempt): a re-claim of the same step (after a lost
        # lease) is another attempt and must not be confused with the stale one.
        self._inflight: dict[StepKey, asyncio.Task[None]] = {}
        self._by_run: dict[uuid.UUID, set[StepKey]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._listener: DirectConnection | None = None
        self._stopping = False
        # Whether the claim loop stopped short of the runnable work (slots or batch size
        # full): a completion that frees slots must then wake it, and the eager claims
        # take turns with other shares (EagerClaim.turns). Until the first claim, no.
        self._claim_saturated = False
        # Slots promised to claims in flight (the claim loop's, a completion's or a
        # StartRun's eager claim), so that concurrent claims never exceed the slots.
        self._reserved = 0
        self._outcomes = OutcomePolicy()
        self._streams = StreamBuffers(repository, config.stream_flush_seconds)
        self.executor = StepExecutor(
            agents,
            self._outcomes,
            self._streams,
            default_timeout_seconds=config.default_timeout_seconds,
            start_child=start_child,
            cache=cache,
            timers=None if timers is None else TimerSteps(timers, self._outcomes),
        )
        self.claimed_total = 0
        self.completed_total = 0
        # Per attempt whose outcome waits for the completer: (agent label, execution
        # seconds, run start) for the metrics recorded once the commit says what happened.
        self._attempt_info: dict[StepKey, tuple[str, float, datetime | None]] = {}
        self.metrics = Metrics()
        self.tracing = Tracing()

    def instrument(self, metrics: Metrics, tracing: Tracing) -> None:
        """Record into ``metrics`` and ``tracing`` (the server's) instead of the private
        defaults; call before :meth:`start`."""
        self.metrics = self.executor.metrics = metrics
        if self.executor.timers is not None:
            self.executor.timers.metrics = metrics
        self.tracing = self.executor.tracing = tracing
        metrics.track_active_steps(lambda: len(self._inflight))

    @property
    def active_steps(self) -> int:
        """Steps this replica is executing or completing now."""
        return len(self._inflight)

    async def start(self) -> None:
        """Listen for work and cancellations, then start the loops."""
        await self._listen()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="podium-claim"),
            asyncio.create_task(self._complete_loop(), name="podium-complete"),
            asyncio.create_task(self._lease_loop(), name="podium-leases"),
            asyncio.create_task(self._streams.run(), name="podium-stream-events"),
            asyncio.create_task(self._sweep_loop(), name="podium-sweep"),
        ]
        self._wake.set()

    async def _listen(self) -> None:
        conn: DirectConnection | None = None
        try:
            conn = await connect_direct(self._dsn)
            await conn.add_listener("podium_work", self._on_work)
            await conn.add_listener("podium_cancel", self._on_cancel)
            if self.cache is not None:
                await conn.add_listener("podium_cache", self.cache.on_notify)
            conn.add_termination_listener(self._on_listener_lost)
        except Exception as exc:
            # The fallback timer keeps the scheduler going; the lease loop retries.
            log.warning("cannot LISTEN for work (polling instead): %s", exc)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            return
        self._listener = conn

    def _on_work(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == "child":
            self._sweep_wake.set()
        else:
            self._wake.set()

    def _on_cancel(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            run_id = uuid.UUID(str(payload))
        except ValueError:
            return
        for key in list(self._by_run.get(run_id, ())):
            task = self._inflight.get(key)
            if task is not None and not task.done():
                task.cancel()

    def _on_listener_lost(self, _conn: object) -> None:
        if self._stopping:
            return
        log.warning("LISTEN connection lost; polling until it is re-established")
        self._listener = None

    async def stop(self, grace: float = 0.0) -> None:
        """Stop claiming; give running steps ``grace`` seconds, cancel the rest, flush
        completions. Cancelled steps keep their lease until it expires, then another
        replica (or this one after a restart) executes them again."""
        self._stopping = True
        self._wake.set()
        tasks = list(self._inflight.values())
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        for task in self._inflight.values():
            task.cancel()
        for task in list(self._inflight.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Hand the cancelled attempts over at once instead of after a lease.
        with contextlib.suppress(StorageError):
            released = await self._repository.release_leases(self.owner)
            if released:
                log.info("released %d leases for other replicas", released)
        # Let the completer commit what finished, then stop the loops.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._completions.join()
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    # -- claim -----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = 0.1
        while not self._stopping:
            self._wake.clear()
            want = min(self._free(), self.config.batch_size)
            claimed: list[ClaimedStep] = []
            if want > 0:
                self._reserved += want
                try:
                    claimed = await self._repository.claim(
                        self.owner, want, self.config.lease_seconds
                    )
                    backoff = 0.1
                except StorageError as exc:
                    log.warning("claim failed: %s", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                finally:
                    self._reserved -= want
                for step in claimed:
                    self._spawn(step)
                self.claimed_total += len(claimed)
            self._claim_saturated = want <= 0 or len(claimed) == want
            if claimed and len(claimed) == want and len(self._inflight) < self.config.slots:
                continue  # there may be more runnable work right now
            await wait_set(self._wake, self._sleep_seconds())

    def _free(self) -> int:
        """Slots neither executing nor promised to a claim in flight."""
        return self.config.slots - len(self._inflight) - self._reserved

    def _sleep_seconds(self) -> float:
        """Until the fallback timer, or the earliest retry this replica scheduled."""
        wait = self.config.poll_interval_seconds
        next_retry = self._outcomes.next_retry
        if next_retry is not None:
            due = (next_retry - datetime.now(UTC)).total_seconds()
            if due <= wait:
                self._outcomes.next_retry = None
                wait = max(0.0, due)
        return wait

    def _spawn(self, step: ClaimedStep) -> None:
        key = (step.run_id, step.step_id, step.attempt)
        task = asyncio.create_task(self._execute(step), name=f"step {step.run_id}/{step.step_id}")
        self._inflight[key] = task
        self._by_run.setdefault(step.run_id, set()).add(key)

    def _forget(self, run_id: uuid.UUID, step_id: str, attempt: int) -> None:
        key = (run_id, step_id, attempt)
        self._inflight.pop(key, None)
        keys = self._by_run.get(run_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_run[run_id]

    # -- execute ---------------------------------------------------------------------

    async def _execute(self, step: ClaimedStep) -> None:
        started = time.perf_counter()
        agent = self.metrics.agent_label(
            step.agent,
            registered=step.endpoint is not None,
            orchestration=step.spec.orchestration is not None,
            timer=is_timer_step(step),
        )
        try:
            outcome = await self.executor.execute(step)
        except asyncio.CancelledError:
            # Run cancelled or failed (already recorded), or this replica is stopping
            # (the lease expires and the step runs again elsewhere).
            self.metrics.attempt_finished(agent, "cancelled", None, None)
            self._forget(step.run_id, step.step_id, step.attempt)
            self._wake.set()
            raise
        if outcome is None:  # a child run was started: the step waits for it, unleased
            self._forget(step.run_id, step.step_id, step.attempt)
            self._wake.set()
            return
        self._attempt_info[(step.run_id, step.step_id, step.attempt)] = (
            agent,
            time.perf_counter() - started,
            step.run_started_at,
        )
        self._completions.put_nowait(outcome)

    # -- sub-orchestrations and approvals -----------------------------------------------

    async def _sweep_loop(self) -> None:
        """Complete steps whose child run finished, and expire approvals."""
        while True:
            await wait_set(self._sweep_wake, max(self.config.poll_interval_seconds, 0.2))
            self._sweep_wake.clear()
            if self._stopping:
                continue
            try:
                await self._sweep()
            except StorageError as exc:
                log.warning("sweep failed: %s", exc)

    async def _sweep(self) -> None:
        finished = await self._repository.finished_children()
        for child in finished:
            key = (child.run_id, child.step_id, child.attempt)
            if key in self._sweeping:
                continue
            outcome = self.executor.child_finished(child)
            self._sweeping.add(key)
            self._completions.put_nowait(outcome)
        if self._approvals is not None:
            expired = await self._approvals.expire()
            if expired:
                log.info("applied the default action of %d expired approvals", expired)

    # -- complete --------------------------------------------------------------------

    async def _complete_loop(self) -> None:
        while True:
            batch = [await self._completions.get()]
            while len(batch) < self.config.completion_batch_size and not self._completions.empty():
                batch.append(self._completions.get_nowait())
            # Streamed events of these attempts first, so they precede step.completed;
            # under the lock, so a periodic flush in flight cannot land after the
            # completion (it would be fenced, and its events lost).
            claim = self._eager_claim(batch)
            try:
                async with self._streams.lock:
                    await self._streams.flush({(o.run_id, o.step_id, o.attempt) for o in batch})
                    done = await self._commit(batch, claim)
            finally:
                if claim is not None:
                    self._reserved -= claim.limit
            # Steps this batch made runnable, claimed in its transaction: dispatched
            # now, without a NOTIFY, a wake and a claim of their own.
            for step in done.claimed:
                self._spawn(step)
            self.claimed_total += len(done.claimed)
            for outcome in batch:
                self._record(outcome, done.states)
                self._forget(outcome.run_id, outcome.step_id, outcome.attempt)
                self._sweeping.discard((outcome.run_id, outcome.step_id, outcome.attempt))
                self._completions.task_done()
            self.completed_total += len(batch)
            if done.wake or self._claim_saturated:
                self._wake.set()

    def eager_claim(self, runnable: int) -> EagerClaim | None:
        """The eager claim of a StartRun served by this replica whose run has
        ``runnable`` first steps: that many slots at most (bounded by the free slots and
        the batch size), reserved until :meth:`dispatch` is called with it; none while
        stopping, full or when there is nothing to run. Reserving only what the run can
        use leaves the other slots to the StartRuns in flight beside it, so that each
        claims its own steps instead of sending NOTIFY podium_work."""
        limit = min(runnable, self._free(), self.config.batch_size)
        if self._stopping or limit <= 0:
            return None
        self._reserved += limit
        return EagerClaim(self.owner, limit, self.config.lease_seconds, self._claim_saturated)

    def dispatch(self, claim: EagerClaim, claimed: list[ClaimedStep]) -> None:
        """Execute the steps ``claim`` (from :meth:`eager_claim`) took, and give back
        its reservation; call it once per claim, with no steps when the claim failed."""
        self._reserved -= claim.limit
        for step in claimed:
            self._spawn(step)
        self.claimed_total += len(claimed)

    def _eager_claim(self, batch: list[StepOutcome]) -> EagerClaim | None:
        """The eager claim of a completion batch (reserved): as many steps as this
        replica has slots once the batch's attempts are done; none while stopping."""
        if self._stopping:
            return None
        finishing = sum(1 for o in batch if (o.run_id, o.step_id, o.attempt) in self._inflight)
        free = self._free() + finishing
        if free <= 0:
            return None
        self._reserved += free
        return EagerClaim(self.owner, free, self.config.lease_seconds, self._claim_saturated)

    def _record(self, outcome: StepOutcome, states: dict[StepKey, str | None]) -> None:
        """Metrics of a committed outcome: the attempt, the step when final, the run when
        this outcome ended it (the commit returned the run's state)."""
        key = (outcome.run_id, outcome.step_id, outcome.attempt)
        # Only a sub-orchestration step completes without an entry (its child run ended).
        agent, seconds, run_started_at = self._attempt_info.pop(
            key, (ORCHESTRATION_AGENT, 0.0, None)
        )
        state = states.get(key)
        if state is None:  # fenced, or not recorded at all
            self.metrics.attempt_finished(agent, "stale", seconds, None)
            return
        if outcome.outcome == Outcome.CHECKPOINT_BEFORE or skipped_by_condition(outcome):
            return  # parked or skipped before the agent was called: not an attempt
        attempt, final = attempt_metrics(outcome.outcome)
        self.metrics.attempt_finished(agent, attempt, seconds, final)
        self.metrics.usage(agent, outcome.input_tokens, outcome.output_tokens, outcome.cost_usd)
        if state == "succeeded" or state == "failed":
            self.metrics.run_ended(
                state, time.time() - run_started_at.timestamp() if run_started_at else None
            )

    async def _commit(
        self, batch: list[StepOutcome], claim: EagerClaim | None = None
    ) -> CompletedBatch:
        """Commit ``batch`` (with its eager ``claim``); transient failures are retried, a
        bad outcome is isolated.

        Outages and deadlock victims retry the same batch (outcomes are fenced, so a
        retry after an ambiguous commit changes nothing). Any other failure (an output
        PostgreSQL refuses, e.g. a NUL character) would fail every retry, so the batch
        is split: each outcome is committed alone (without an eager claim: the claim
        loop is woken instead), and one that still fails is recorded as a non-retryable
        INVALID_OUTPUT failure of its step instead.

        Returns the run state after each outcome and the steps claimed (see
        ``RunsRepository.complete``).
        """
        delay = 0.05
        while True:
            try:
                return await self._repository.complete(batch, claim)
            except (StorageUnavailable, Conflict) as exc:
                log.warning("completion batch failed (%d steps), retrying: %s", len(batch), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except StorageError as exc:
                if len(batch) == 1:
                    return CompletedBatch(await self._reject(batch[0], exc))
                log.warning("completion batch refused, committing one by one: %s", exc)
                states: dict[StepKey, str | None] = {}
                for outcome in batch:
                    states.update((await self._commit([outcome])).states)
                return CompletedBatch(states)

    async def _reject(self, outcome: StepOutcome, exc: StorageError) -> dict[StepKey, str | None]:
        log.error(
            "step outcome refused by the database: %s",
            exc,
            extra={
                "run_id": str(outcome.run_id),
                "step_id": outcome.step_id,
                "attempt": outcome.attempt,
            },
        )
        outcome.outcome = Outcome.FAILED
        outcome.output = None
        outcome.input = None
        outcome.deliverables = ()
        outcome.error = StepError(
            "INVALID_OUTPUT",
            "the agent's result cannot be stored (e.g. a NUL character or a "
            "non-finite number in the output)",
            False,
        )
        try:
            return (await self._repository.complete([outcome])).states
        except StorageError as again:
            # Give up on this outcome; the lease expires and the step runs again.
            log.error("cannot record the failure either: %s", again)
            return {}

    # -- leases ----------------------------------------------------------------------

    async def _renew(self) -> None:
        """Renew this replica's leases and stop the attempts whose lease is gone.

        An attempt not renewed is no longer ``running`` under this owner: its run was
        cancelled or failed (a missed ``podium_cancel`` notification), or its lease
        expired and the step was re-queued. Its agent call is cancelled so no work is
        wasted; its result would be refused anyway (fencing). Attempts whose outcome is
        already waiting for the completer are left alone (and renewed).

        Only the attempts this replica holds are renewed: a step leased to it by a
        claim whose answer it never got (the commit went through, the connection did
        not) expires and runs again instead of staying leased forever. A step whose row
        another transaction holds (a sub-orchestration's start, a run its agent starts)
        is renewed next time, and its attempt runs on.
        """
        watched = [key for key, task in self._inflight.items() if not task.done()]
        held = set(
            await self._repository.renew_leases(
                self.owner, self.config.lease_seconds, list(self._inflight)
            )
        )
        for key in watched:
            task = self._inflight.get(key)
            if key not in held and task is not None and not task.done():
                log.warning(
                    "lease lost; cancelling the attempt",
                    extra={"run_id": str(key[0]), "step_id": key[1], "attempt": key[2]},
                )
                task.cancel()

    async def _lease_loop(self) -> None:
        interval = max(0.1, self.config.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                if self._inflight:
                    await self._renew()
                requeued = await self._repository.requeue_expired()
                if requeued:
                    log.warning("re-queued %d steps whose lease expired", requeued)
            except StorageError as exc:
                log.warning("lease maintenance failed: %s", exc)
            if self._listener is None and not self._stopping:
                await self._listen()
